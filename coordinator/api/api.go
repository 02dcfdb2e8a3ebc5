// Package api holds the coordinator's gRPC services. Each service is a thin
// adapter: it validates the request, checks leadership for writes, commits a
// command through Raft or reads the local state store, and maps errors to
// status codes in one place (toStatus). No business rules live here; those
// are in the FSM (coordinator/fsm), the scheduler, the builds service
// (coordinator/builds), the blob replicator (coordinator/blobrepl), the log
// replicator (coordinator/logrepl) and, for
// agent streams, coordinator/agentsession.
package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/blobrepl"
	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/logrepl"
	"github.com/kiln-ci/kiln/coordinator/logstore"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/readindex"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/secrets"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Deps is what the services need from the coordinator.
type Deps struct {
	// NodeID is this coordinator's id.
	NodeID string
	// GRPCAddr is the address clients reach this coordinator at.
	GRPCAddr string
	// RaftAddr is this coordinator's Raft address.
	RaftAddr  string
	Store     *state.Store
	Raft      *raftnode.Node
	Scheduler *scheduler.Scheduler
	// Blobs is this node's blob store: its local disk, or a bucket every
	// coordinator shares (Blobs.Shared()).
	Blobs blobstore.Backend
	// FetchBlob copies a blob from a peer into Blobs (nil: no peers to ask).
	FetchBlob func(ctx context.Context, sha string) error
	// Logs stores job logs on a quorum (agent sessions) and reads them,
	// fetching from peers what this node lacks (StreamLogs).
	Logs *logrepl.Replicator
	// MemberHealth reports whether the leader's autopilot sees a member as
	// healthy (false on followers, which do not run it).
	MemberHealth func(id string) bool
	// Reads runs the read barrier of every read (linearizable by
	// default, stale on request).
	Reads *readindex.Reader
	Log   *zap.Logger
	// Now is the clock used for command timestamps.
	Now func() time.Time
	// Builds submits builds (SubmitBuild): coordinator/builds.
	Builds *builds.Service
	// MaxLogBytes is the log kept per job attempt (--max-log-bytes; 0:
	// no limit), announced to agents.
	MaxLogBytes int64
	// Git reaches repositories for AddRepo behind the --git-allow policy
	// (nil: any valid URL, git's messages not hidden).
	Git *gitsrc.Guard
	// ACL reports whether --acl is on (callers are then named by their
	// token, see coordinator/acl).
	ACL bool
	// Tokens creates, revokes and redeems tokens.
	Tokens *acl.Tokens
	// Keyring seals secrets (nil: no --secrets-key-file).
	Keyring *secrets.Keyring
}

// Limits on what clients may send. They are part of the API contract and
// documented in the README.
const (
	MaxSpecBytes    = 1 << 20
	MaxCommandBytes = 64 << 10
	MaxEnvEntries   = 256
	MaxEnvBytes     = 64 << 10
	MaxRequestID    = 128
	MaxNameBytes    = 256
	MaxLabelEntries = 64
	// MaxLabelBytes bounds each label key and each label value.
	MaxLabelBytes = 256
	MaxAgentSlots = 1024
	MaxListBuilds = 1000
	// MaxListAgents bounds the agents of one ListAgents page.
	MaxListAgents = 1000
	// MaxListResponseBytes bounds the encoding of one list page (and of a
	// build in GetBuild/WatchBuild): under the 4 MiB gRPC message limit
	// whatever is stored.
	MaxListResponseBytes = 3 << 20
)

func (d *Deps) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// notLeader returns the status a follower answers writes with.
func (d *Deps) notLeader() error {
	id, _ := d.Raft.Leader()
	addr := ""
	if id != "" {
		for _, n := range d.Store.Nodes() {
			if n.GetId() == id {
				addr = n.GetGrpcAddr()
			}
		}
	}
	if id == d.NodeID {
		// We are the leader by Raft but not yet serving (before the barrier).
		return status.Error(codes.Unavailable, "this coordinator just became leader and is not ready yet; retry shortly")
	}
	return leader.NotLeaderError(id, addr)
}

// RequireLeader is requireLeader for services outside this package: a
// gRPC status (NotLeader with the leader's address) unless this node leads.
func (d *Deps) RequireLeader() error { return d.requireLeader() }

// requireLeader fails unless this node leads and its leader work started.
func (d *Deps) requireLeader() error {
	if !d.Raft.IsLeader() || !d.Scheduler.Active() {
		return d.notLeader()
	}
	return nil
}

// readBarrier waits until this node may answer a read at consistency c.
// When no leader can confirm a read index, or this node cannot catch up in
// time, the client is sent to the leader (Unavailable with its address).
func (d *Deps) readBarrier(ctx context.Context, c kilnv1.Consistency) error {
	err := d.Reads.Barrier(ctx, c)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, readindex.ErrNoLeader), errors.Is(err, context.DeadlineExceeded):
		d.Log.Debug("consistent read refused", zap.Error(err))
		if st := d.notLeader(); status.Code(st) == codes.Unavailable {
			return st
		}
	}
	return d.toStatus(err)
}

// withoutSentinel is err's message without the ": not found"-style
// suffix of the sentinel it wraps: the status code already says it.
func withoutSentinel(err, sentinel error) string {
	return strings.TrimSuffix(err.Error(), ": "+sentinel.Error())
}

// toStatus maps internal errors to gRPC status codes.
func (d *Deps) toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var buildErr *builds.Error
	switch {
	case errors.Is(err, raftnode.ErrNotLeader):
		return d.notLeader()
	case errors.Is(err, raftnode.ErrOutcomeUnknown):
		if d.Raft.IsLeader() {
			// Still leading (e.g. the commit was slow): the command may yet
			// commit. A retry with the same request id is safe.
			return status.Error(codes.Unavailable, "the outcome is unknown (the commit did not finish in time); retry with the same request id")
		}
		return d.notLeader()
	case errors.Is(err, fsm.ErrNotFound):
		return status.Error(codes.NotFound, withoutSentinel(err, fsm.ErrNotFound))
	case errors.Is(err, fsm.ErrInvalidCommand):
		return status.Error(codes.InvalidArgument, withoutSentinel(err, fsm.ErrInvalidCommand))
	case errors.Is(err, fsm.ErrNotPermitted):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, fsm.ErrStaleAttempt), errors.Is(err, fsm.ErrInvalidState), errors.Is(err, fsm.ErrLogsIncomplete):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.As(err, &buildErr):
		switch buildErr.Kind {
		case builds.KindInvalid:
			return status.Error(codes.InvalidArgument, err.Error())
		case builds.KindFailedPrecondition:
			return status.Error(codes.FailedPrecondition, err.Error())
		}
	case errors.Is(err, logrepl.ErrNoQuorum), errors.Is(err, logrepl.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, logstore.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, blobrepl.ErrNoQuorum):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, blobrepl.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	d.Log.Error("internal error", zap.Error(err))
	return status.Error(codes.Internal, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}
