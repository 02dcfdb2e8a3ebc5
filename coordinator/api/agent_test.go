package api

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/agentsession"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
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

func TestValidateRegisterLimits(t *testing.T) {
	long := strings.Repeat("x", MaxLabelBytes+1)
	tests := []struct {
		name string
		reg  *kilnv1.Register
		msg  string // "" means valid
	}{
		{"valid", &kilnv1.Register{Name: "a", Slots: 1, Labels: map[string]string{"os": "linux"}}, ""},
		{"name too long", &kilnv1.Register{Name: strings.Repeat("n", MaxNameBytes+1), Slots: 1}, "agent name must be 1..256 bytes"},
		{"label key too long", &kilnv1.Register{Name: "a", Slots: 1, Labels: map[string]string{long: "v"}}, "the limit is 256"},
		{"label value too long", &kilnv1.Register{Name: "a", Slots: 1, Labels: map[string]string{"os": long}}, `value of "os" is 257 bytes; the limit is 256`},
		{"version too long", &kilnv1.Register{Name: "a", Slots: 1, Version: long}, "agent version: 257 bytes; the limit is 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateRegister(tt.reg)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("valid registration refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("got %v, want InvalidArgument naming %q", err, tt.msg)
			}
		})
	}
}
