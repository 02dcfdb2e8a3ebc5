package blobrepl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// streamBuffer is how many pieces of an upload (each at most one read of
// the local store, ≤ 1 MiB) may wait for one peer; memory stays flat in
// the blob's size.
const streamBuffer = 8

// errDropped: the upload stopped streaming to a peer that fell behind.
var errDropped = errors.New("fell behind the upload; copying from disk instead")

// Receive stores a blob read from src (h gives its size, digest and kind)
// in this node's store and, while it is being received, streams the same
// bytes to every other voter, so the copies end about when the upload
// does, instead of starting after it. It returns once this node and enough
// peers for a majority of the voters hold the blob (each peer verifies
// size and digest itself, so an upload that fails verification is stored
// nowhere). A peer that falls more than streamBuffer pieces behind while
// the others still make a quorum is dropped from the stream and copied
// from disk after the upload, in the background, so a slow peer does not
// slow the upload. Errors are those of Store.Put and Replicate.
//
// A blob this node already holds, and a shared store, take the plain
// path: Put (which verifies the input), then Replicate.
func (r *Replicator) Receive(ctx context.Context, h *kilnv1.BlobHeader, src io.Reader) (created bool, replicas, voters int, err error) {
	if r.cfg.Store.Shared() || r.cfg.Store.Has(h.GetSha256()) {
		created, err = r.cfg.Store.Put(ctx, src, h.GetSize(), h.GetSha256())
		if err != nil {
			return created, 0, 0, err
		}
		replicas, voters, err = r.Replicate(ctx, h)
		return created, replicas, voters, err
	}
	voters, self, others, err := r.voters()
	if err != nil {
		return false, 0, 0, err
	}
	quorum := voters/2 + 1
	local := &localResult{done: make(chan struct{})}
	results := make(chan error, len(others))
	peers := make([]*streamPeer, len(others))
	for i, p := range others {
		sp := &streamPeer{peer: p, ch: make(chan []byte, streamBuffer), drop: make(chan struct{}), dead: make(chan struct{})}
		peers[i] = sp
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			err := r.streamTo(sp, h, local)
			if err != nil {
				r.cfg.Log.Warn("blob replication failed", zap.String("sha256", h.GetSha256()), zap.String("peer", sp.id), zap.Error(err))
				err = fmt.Errorf("%s: %w", sp.id, err)
			}
			results <- err
		}()
	}
	fan := &fanout{ctx: ctx, peers: peers, live: len(peers), need: quorum}
	if self {
		fan.need--
	}
	created, err = r.cfg.Store.Put(ctx, &teeReader{src: src, fan: fan}, h.GetSize(), h.GetSha256())
	local.err = err
	close(local.done)
	for _, sp := range peers {
		if !sp.dropped {
			close(sp.ch)
		}
	}
	if err != nil {
		return false, 0, voters, err
	}
	if self {
		replicas = 1
	}
	var failures []string
	pending := len(others)
	for replicas < quorum {
		if replicas+pending < quorum {
			return created, replicas, voters, &kindError{kind: ErrNoQuorum, msg: fmt.Sprintf(
				"blob stored on %d of %d coordinators, a quorum of %d is needed (%s); retry the upload, it is idempotent",
				replicas, voters, quorum, strings.Join(failures, "; "))}
		}
		select {
		case err := <-results:
			pending--
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				replicas++
			}
		case <-ctx.Done():
			return created, replicas, voters, ctx.Err()
		}
	}
	return created, replicas, voters, nil
}

// localResult is the outcome of the local Put, for the peers' goroutines:
// err is written before done is closed.
type localResult struct {
	done chan struct{}
	err  error
}

// streamPeer is one peer an upload streams to.
type streamPeer struct {
	peer
	ch       chan []byte   // pieces to send; closed after the last one
	drop     chan struct{} // closed when the upload stops feeding ch
	dead     chan struct{} // closed by the peer's goroutine when it stops reading ch
	deadOnce sync.Once
	dropped  bool // the upload no longer feeds ch (Receive's goroutine only)
}

func (sp *streamPeer) die() { sp.deadOnce.Do(func() { close(sp.dead) }) }

// fanout hands each piece of the upload to the peers still fed.
type fanout struct {
	ctx   context.Context
	peers []*streamPeer
	live  int // peers still fed
	need  int // peers needed besides this node for a quorum
}

func (f *fanout) send(b []byte) error {
	for _, sp := range f.peers {
		if sp.dropped {
			continue
		}
		select {
		case sp.ch <- b:
			continue
		case <-sp.dead:
			sp.dropped = true
			f.live--
			continue
		default:
		}
		// Full: leave it behind as soon as enough of the others keep up
		// (have room) to make the quorum; until then wait for it. A peer
		// is never dropped just for being full while the others are full
		// too: under load the peer that keeps up can be momentarily full,
		// and dropping it would leave the upload waiting on the one that
		// does not. The others' room is looked at again every
		// fanoutRecheck while waiting, since they drain meanwhile.
		if err := f.waitOrDrop(sp, b); err != nil {
			return err
		}
	}
	return nil
}

// fanoutRecheck is how often a send waiting on a full peer looks again
// whether the other peers have room to make the quorum without it.
const fanoutRecheck = 10 * time.Millisecond

// waitOrDrop hands b to the full peer sp, or drops sp once the others
// keep up enough to make the quorum without it.
func (f *fanout) waitOrDrop(sp *streamPeer, b []byte) error {
	var tick *time.Ticker
	for {
		if f.keepingUp(sp) >= f.need {
			sp.dropped = true
			f.live--
			close(sp.drop)
			return nil
		}
		if tick == nil {
			tick = time.NewTicker(fanoutRecheck)
			defer tick.Stop()
		}
		select {
		case sp.ch <- b:
			return nil
		case <-sp.dead:
			sp.dropped = true
			f.live--
			return nil
		case <-f.ctx.Done():
			return f.ctx.Err()
		case <-tick.C:
		}
	}
}

// keepingUp counts the peers other than sp still fed whose queue has room.
func (f *fanout) keepingUp(sp *streamPeer) int {
	n := 0
	for _, o := range f.peers {
		if o != sp && !o.dropped && len(o.ch) < cap(o.ch) {
			n++
		}
	}
	return n
}

// teeReader hands what the local store reads to the peers too.
type teeReader struct {
	src io.Reader
	fan *fanout
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	if n > 0 {
		if ferr := t.fan.send(append([]byte(nil), p[:n]...)); ferr != nil {
			return n, ferr
		}
	}
	return n, err
}

// streamTo sends the upload's pieces to one peer as they arrive, then, once
// the local store holds the blob, ends the stream and returns the peer's
// answer. A peer left behind is copied from the local store afterwards.
func (r *Replicator) streamTo(sp *streamPeer, h *kilnv1.BlobHeader, local *localResult) error {
	// Copies outlive the upload (they finish in the background once the
	// quorum answered), bounded by their timeout and Close.
	ctx, cancel := context.WithTimeout(r.bg, r.cfg.CopyTimeout)
	defer cancel()
	err := r.stream(ctx, sp, h, local)
	sp.die()
	if !errors.Is(err, errDropped) {
		return err
	}
	select {
	case <-local.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if local.err != nil {
		return fmt.Errorf("upload failed: %w", local.err)
	}
	return r.copyTo(ctx, sp.peer, h)
}

func (r *Replicator) stream(ctx context.Context, sp *streamPeer, h *kilnv1.BlobHeader, local *localResult) error {
	if sp.addr == "" {
		return errors.New("its gRPC address is not known yet")
	}
	conn, err := r.cfg.Dial(sp.addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", sp.addr, err)
	}
	defer conn.Close()
	// Canceled on every early return, which aborts the peer's put.
	sctx, abort := context.WithCancel(ctx)
	defer abort()
	stream, err := kilnv1.NewBlobServiceClient(conn).Replicate(sctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Header{Header: &kilnv1.BlobHeader{
		Size: h.GetSize(), Sha256: h.GetSha256(), Kind: h.GetKind()}}}); err != nil && err != io.EOF {
		return err
	}
	for {
		select {
		case b, ok := <-sp.ch:
			if !ok {
				// All sent: the stream ends only if the local put
				// succeeded, so a peer never keeps what this node refused.
				<-local.done
				if local.err != nil {
					return fmt.Errorf("upload failed: %w", local.err)
				}
				_, err := stream.CloseAndRecv()
				return err
			}
			if err := stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Data{Data: b}}); err != nil {
				// io.EOF: the peer answered early (it holds the blob,
				// or failed); CloseAndRecv says which.
				sp.die()
				_, err = stream.CloseAndRecv()
				return err
			}
		case <-sp.drop:
			return errDropped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
