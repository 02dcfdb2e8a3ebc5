package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func (a *app) logsCommand() *cobra.Command {
	var (
		job     string
		follow  bool
		attempt uint32
	)
	cmd := &cobra.Command{
		Use:   "logs BUILD",
		Short: "Print a build's log",
		Long: "Print a build's log on stdout. A one-job build (or --job) prints the\n" +
			"bytes as produced. With -f and several jobs, each line is prefixed\n" +
			"with [job key]; without -f the jobs' logs follow each other in build\n" +
			"order.\n\n" +
			"A retried job keeps the log of every attempt: --attempt N (with --job)\n" +
			"prints attempt N (1 is the first run); the default is the current one.\n" +
			"With -f the build's final state is printed on stderr when it ends, and\n" +
			"the exit status is 1 unless it passed.",
		Args: exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if attempt > 0 && job == "" {
				return usageErrorf("--attempt needs --job: attempts are numbered per job (see 'kilnctl status %s')", id)
			}
			if attempt > 0 && follow {
				return usageErrorf("--attempt and -f do not go together: an earlier attempt has ended; the current one is followed without --attempt")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			b, err := a.getBuild(ctx, c, id)
			if err != nil {
				return err
			}
			jobs := len(b.GetJobs())
			if job != "" {
				var keys []string
				for _, j := range b.GetJobs() {
					keys = append(keys, j.GetKey())
				}
				if len(keys) > 0 && !slices.Contains(keys, job) {
					return &ExitError{Code: ExitFailed, Err: fmt.Errorf("logs of build %s: no job %q (hint: its jobs are %s)", id, job, strings.Join(keys, ", "))}
				}
				jobs = 1
			}
			p := newLogPrinter(a.stdout, a.stderr, follow && jobs > 1)
			if err := a.streamLogsAttempt(ctx, c, id, job, attempt, follow, p); err != nil {
				return rpcError("logs of build "+id, err, "list builds with 'kilnctl builds', a job's attempts with 'kilnctl status "+id+"'")
			}
			if !follow {
				return nil
			}
			// The stream ends when every job has finished; the build's
			// state may lag it by a commit, so wait for it.
			b, err = a.waitTerminal(ctx, c, id)
			if err != nil {
				return rpcError("wait for build "+id, err, "")
			}
			return a.reportOutcome(b)
		}),
	}
	cmd.Flags().StringVar(&job, "job", "", "only this job (by key)")
	cmd.Flags().Uint32Var(&attempt, "attempt", 0, "with --job: print this attempt's log (1 is the first run; default the current attempt)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming until the jobs are finished")
	return cmd
}

// errGaveUp ends a stream's reconnect loop. It deliberately does not
// unwrap to the last gRPC error, so that client.Do returns it at once.
type errGaveUp struct{ last error }

func (e errGaveUp) Error() string { return e.last.Error() }

// streamLogs streams a build's log into p. A stream that breaks with
// codes.Unavailable is reopened through the client (on another coordinator
// if need be) and resumed after the chunks already printed. It gives up
// when no stream could be reopened for --timeout.
func (a *app) streamLogs(ctx context.Context, c *client.Client, id, job string, follow bool, p *logPrinter) error {
	return a.streamLogsAttempt(ctx, c, id, job, 0, follow, p)
}

// streamLogsAttempt is streamLogs of one attempt of job (0: the current).
func (a *app) streamLogsAttempt(ctx context.Context, c *client.Client, id, job string, attempt uint32, follow bool, p *logPrinter) error {
	err := a.followStream(ctx, c, func(ctx context.Context, conn grpc.ClientConnInterface) (func() error, error) {
		req := &kilnv1.StreamLogsRequest{BuildId: id, JobKey: job, Follow: follow, After: p.after(), Consistency: a.consistency, Attempt: attempt}
		stream, err := kilnv1.NewControlServiceClient(conn).StreamLogs(ctx, req)
		if err != nil {
			return nil, err
		}
		return func() error {
			m, err := stream.Recv()
			if err != nil {
				return err
			}
			if err := p.chunk(m); err != nil {
				return fmt.Errorf("write log: %w", err)
			}
			return nil
		}, nil
	})
	p.flush()
	return err
}

// followStream runs a server stream of a build the caller knows exists
// through c.Do, and reopens it when it breaks with codes.Unavailable
// (c.Do then moves on to another coordinator if need be). open starts the
// stream, resuming after what was already handled; the function it
// returns receives and handles one message, and returns io.EOF when the
// stream has ended. With --consistency=stale a coordinator answering
// NotFound lags behind (it restarted and is catching up): it counts as
// unavailable. Linearizable reads (the default) never lag, so there
// NotFound is final. followStream
// gives up when no stream could be reopened for --timeout; a stream that
// lived a while counts the outage from when it broke.
func (a *app) followStream(ctx context.Context, c *client.Client,
	open func(ctx context.Context, conn grpc.ClientConnInterface) (func() error, error)) error {
	var (
		failingSince time.Time
		lastErr      error // last stream error, for the give-up message
	)
	failed := func(err error) error {
		if status.Code(err) == codes.NotFound && a.consistency == kilnv1.Consistency_CONSISTENCY_STALE {
			err = status.Error(codes.Unavailable, "coordinator is behind: "+status.Convert(err).Message())
		}
		lastErr = err
		return err
	}
	err := c.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		start := time.Now()
		if failingSince.IsZero() {
			failingSince = start
		} else if start.Sub(failingSince) > a.timeout && lastErr != nil {
			return errGaveUp{last: lastErr}
		}
		// The stream ends with this call (c.Do's retries open a new one).
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		next, err := open(ctx, conn)
		if err != nil {
			return failed(err)
		}
		for {
			err := next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if time.Since(start) > 2*time.Second {
					// The stream lived a while: count the outage from now.
					failingSince = time.Now()
				}
				return failed(err)
			}
			failingSince = time.Now()
		}
	})
	var gu errGaveUp
	if errors.As(err, &gu) {
		return &client.UnavailableError{Tried: c.Addrs(), Last: gu.last}
	}
	return err
}

// posKey names one attempt of one job.
type posKey struct {
	key     string
	attempt uint32
}

// logPrinter writes log chunks, dropping chunks it has already written
// (after a resume) and announcing new attempts of a job on stderr.
type logPrinter struct {
	out, notices io.Writer
	// prefix puts "[key] " before every line (several jobs, follow mode).
	prefix bool

	pos     map[posKey]uint64 // last sequence number written per attempt
	attempt map[string]uint32 // newest attempt written per job key
	partial map[string][]byte // prefix mode: the unfinished line of a job
	order   []string          // job keys in order of first output
}

func newLogPrinter(out, notices io.Writer, prefix bool) *logPrinter {
	return &logPrinter{out: out, notices: notices, prefix: prefix,
		pos: map[posKey]uint64{}, attempt: map[string]uint32{}, partial: map[string][]byte{}}
}

// after returns the resume positions for StreamLogsRequest.after.
func (p *logPrinter) after() []*kilnv1.LogPosition {
	out := make([]*kilnv1.LogPosition, 0, len(p.pos))
	for k, seq := range p.pos {
		out = append(out, &kilnv1.LogPosition{JobKey: k.key, Attempt: k.attempt, Seq: seq})
	}
	slices.SortFunc(out, func(x, y *kilnv1.LogPosition) int {
		if c := strings.Compare(x.JobKey, y.JobKey); c != 0 {
			return c
		}
		return int(x.Attempt) - int(y.Attempt)
	})
	return out
}

func (p *logPrinter) chunk(m *kilnv1.StreamLogsResponse) error {
	key := m.GetJobKey()
	if key == "" {
		key = m.GetJobId()
	}
	pk := posKey{key, m.GetAttempt()}
	cur, seen := p.attempt[key]
	switch {
	case seen && m.GetAttempt() < cur:
		return nil // an older attempt than the one being shown
	case m.GetSeq() != 0 && m.GetSeq() <= p.pos[pk]:
		return nil // already written before a reconnect
	}
	if !seen {
		p.order = append(p.order, key)
	} else if m.GetAttempt() > cur {
		if err := p.flushKey(key); err != nil {
			return err
		}
		fmt.Fprintf(p.notices, "--- job %s: attempt %d ---\n", key, m.GetAttempt())
	}
	p.attempt[key] = m.GetAttempt()
	if m.GetSeq() > p.pos[pk] {
		p.pos[pk] = m.GetSeq()
	}
	data := m.GetData()
	if !p.prefix {
		_, err := p.out.Write(data)
		return err
	}
	buf := append(p.partial[key], data...)
	var w bytes.Buffer
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		w.WriteString("[" + key + "] ")
		w.Write(buf[:i+1])
		buf = buf[i+1:]
	}
	p.partial[key] = bytes.Clone(buf)
	_, err := p.out.Write(w.Bytes())
	return err
}

// flushKey ends a job's unfinished line (prefix mode).
func (p *logPrinter) flushKey(key string) error {
	rest := p.partial[key]
	if len(rest) == 0 {
		return nil
	}
	delete(p.partial, key)
	_, err := fmt.Fprintf(p.out, "[%s] %s\n", key, rest)
	return err
}

// flush ends every unfinished line.
func (p *logPrinter) flush() {
	for _, k := range p.order {
		_ = p.flushKey(k)
	}
}
