package api

import (
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/agentsession"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/internal/leader"
)

func TestSessionStatus(t *testing.T) {
	s := NewAgentServer(newDeps(t, false))
	tests := []struct {
		name      string
		err       error
		code      codes.Code
		notLeader bool
	}{
		{"clean end", nil, codes.OK, false},
		{"invalid report", fmt.Errorf("log chunk too big: %w", agentsession.ErrInvalidReport), codes.InvalidArgument, false},
		{"blob missing", fmt.Errorf("artifact f: %w", agentsession.ErrBlobMissing), codes.FailedPrecondition, false},
		{"ended by the scheduler", agentsession.ErrEnded, codes.Unavailable, false},
		{"scheduler not active", fmt.Errorf("attach: %w", scheduler.ErrNotActive), codes.Unavailable, true},
		{"incomplete finish", fmt.Errorf("job 1.a committed up to seq 2: %w", fsm.ErrLogsIncomplete), codes.FailedPrecondition, false},
		{"stream status passes through", status.Error(codes.Canceled, "gone"), codes.Canceled, false},
		{"other", io.ErrUnexpectedEOF, codes.Internal, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := s.sessionStatus(tt.err)
			if status.Code(got) != tt.code {
				t.Fatalf("sessionStatus(%v) = %v, want %s", tt.err, got, tt.code)
			}
			if _, ok := leader.Hint(got); ok != tt.notLeader {
				t.Fatalf("sessionStatus(%v) = %v: leader hint %v, want %v", tt.err, got, ok, tt.notLeader)
			}
		})
	}
}
