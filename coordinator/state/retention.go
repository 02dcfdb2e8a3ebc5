package state

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxExpiredBuildsPerCommand bounds the builds one ExpireArtifacts command
// expires; the leader commits another command for the rest.
const MaxExpiredBuildsPerCommand = 1000

// Groups of the builds' "expiry" index: finished builds whose artifacts are
// not expired yet, by the retention that applies to them.
const (
	// expiryDefault: retention 0 (the cluster default, known only to the
	// command), keyed by finished time.
	expiryDefault byte = 0
	// expiryOwn: the build's own retention, keyed by its deadline.
	expiryOwn byte = 1
)

// expiryIndexer indexes the finished builds with artifacts_expired false:
// group byte, then the order-preserving time (finished time for
// expiryDefault, finished time + retention for expiryOwn), then the build
// number. FromArgs and PrefixFromArgs take the group (a byte).
type expiryIndexer struct{}

// ownDeadline is finished + retention, saturating.
func ownDeadline(b *kilnv1.Build) int64 {
	f, r := b.GetFinishedUnixMs(), b.GetArtifactRetentionMs()
	if r > 0 && f > math.MaxInt64-r {
		return math.MaxInt64
	}
	return f + r
}

func sortableInt(v int64) uint64 { return uint64(v) ^ 1<<63 }

func (expiryIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("expiry index: unexpected %T", raw)
	}
	b := row.Build
	if !lifecycle.BuildFinished(b.GetState()) || b.GetArtifactsExpired() {
		return false, nil, nil
	}
	num, err := strconv.ParseUint(row.ID, 10, 64)
	if err != nil {
		return false, nil, fmt.Errorf("expiry index: build id %q: %v", row.ID, err)
	}
	key := []byte{expiryDefault}
	at := b.GetFinishedUnixMs()
	if b.GetArtifactRetentionMs() > 0 {
		key[0], at = expiryOwn, ownDeadline(b)
	}
	key = binary.BigEndian.AppendUint64(key, sortableInt(at))
	return true, binary.BigEndian.AppendUint64(key, num), nil
}

func (expiryIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("expiry index: want one argument, the group")
	}
	g, ok := args[0].(byte)
	if !ok {
		return nil, errors.New("expiry index: the group must be a byte")
	}
	return []byte{g}, nil
}

func (x expiryIndexer) PrefixFromArgs(args ...interface{}) ([]byte, error) {
	return x.FromArgs(args...)
}

// dueBuild is a build whose retention ended.
type dueBuild struct {
	row      *buildRow
	deadline int64
}

// dueBuilds returns up to limit finished, unexpired builds whose retention
// ended at or before now (see the package doc), earliest deadline first,
// then by build number. A build with retention 0 uses defaultMs; 0 there
// means keep forever.
func dueBuilds(tx *memdb.Txn, now, defaultMs int64, limit int) []dueBuild {
	var out []dueBuild
	scan := func(group byte, deadline func(*kilnv1.Build) int64) {
		it := mustGet(tx, tableBuilds, "expiry_prefix", group)
		for n := 0; n < limit; n++ {
			raw := it.Next()
			if raw == nil {
				return
			}
			row := raw.(*buildRow)
			d := deadline(row.Build)
			if d > now {
				return
			}
			out = append(out, dueBuild{row: row, deadline: d})
		}
	}
	scan(expiryOwn, ownDeadline)
	if defaultMs > 0 {
		scan(expiryDefault, func(b *kilnv1.Build) int64 {
			if f := b.GetFinishedUnixMs(); f <= math.MaxInt64-defaultMs {
				return f + defaultMs
			}
			return math.MaxInt64
		})
	}
	slices.SortFunc(out, func(a, b dueBuild) int {
		an, _ := strconv.ParseUint(a.row.ID, 10, 64)
		bn, _ := strconv.ParseUint(b.row.ID, 10, 64)
		return cmp.Or(cmp.Compare(a.deadline, b.deadline), cmp.Compare(an, bn))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// ArtifactsDue reports whether an ExpireArtifacts{now, defaultMs} would
// expire at least one build.
func (s *Store) ArtifactsDue(now, defaultMs int64) bool {
	return len(dueBuilds(s.read(), now, defaultMs, 1)) > 0
}

// ExpireArtifacts ends the artifact retention of the finished builds whose
// retention ended (see the package doc) and returns their ids, in the
// order expired.
func (s *Store) ExpireArtifacts(index uint64, cmd *fsmv1.ExpireArtifacts) ([]string, error) {
	var ids []string
	err := s.write(index, func(w *wtx) error {
		ids = nil // fresh on a replay (see write)
		if cmd.GetDefaultRetentionMs() < 0 {
			return fmt.Errorf("expire artifacts: default retention %dms is negative: %w", cmd.GetDefaultRetentionMs(), ErrInvalidCommand)
		}
		for _, d := range dueBuilds(w.tx, cmd.GetTimeUnixMs(), cmd.GetDefaultRetentionMs(), MaxExpiredBuildsPerCommand) {
			if _, err := w.tx.DeleteAll(tableArtifacts, "build", d.row.ID); err != nil {
				panic(fmt.Sprintf("state: delete artifacts of build %s: %v", d.row.ID, err))
			}
			b := proto.Clone(d.row.Build).(*kilnv1.Build)
			b.ArtifactsExpired = true
			w.putBuild(d.row, b)
			ids = append(ids, d.row.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}
