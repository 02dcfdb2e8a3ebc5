package leader

import (
	"context"
	"errors"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFollow(t *testing.T) {
	errDown := status.Error(codes.Unavailable, "connection refused")
	errOther := status.Error(codes.InvalidArgument, "bad request")
	// answers maps an address to its answer; "ok" succeeds, and an
	// address missing from the map is down.
	type answers map[string]error
	notLeader := func(leaderAddr string) error { return NotLeaderError("n", leaderAddr) }
	for _, tc := range []struct {
		name      string
		addrs     []string
		maxHops   int
		answers   answers
		wantCalls []string
		wantErr   error // nil: success; else compared by status
	}{
		{"leader first", []string{"a", "b"}, 3, answers{"a": nil}, []string{"a"}, nil},
		{"one hop", []string{"a"}, 3, answers{"a": notLeader("b"), "b": nil}, []string{"a", "b"}, nil},
		{"hop chain", []string{"a"}, 3, answers{"a": notLeader("b"), "b": notLeader("c"), "c": nil}, []string{"a", "b", "c"}, nil},
		{"hops bounded", []string{"a"}, 3, answers{"a": notLeader("b"), "b": notLeader("a")}, []string{"a", "b", "a", "b"}, notLeader("a")},
		{"no hops", []string{"a"}, 0, answers{"a": notLeader("b"), "b": nil}, []string{"a"}, notLeader("b")},
		{"budget per address", []string{"a", "c"}, 1, answers{"a": notLeader("b"), "b": notLeader("a"), "c": notLeader("d"), "d": nil},
			[]string{"a", "b", "c", "d"}, nil},
		{"no leader known: next address", []string{"a", "b"}, 3, answers{"a": notLeader(""), "b": nil}, []string{"a", "b"}, nil},
		{"hint names itself: next address", []string{"a", "b"}, 3, answers{"a": notLeader("a"), "b": nil}, []string{"a", "b"}, nil},
		{"down: next address", []string{"a", "b"}, 3, answers{"b": nil}, []string{"a", "b"}, nil},
		{"other error: next address", []string{"a", "b"}, 3, answers{"a": errOther, "b": nil}, []string{"a", "b"}, nil},
		{"all fail: last error", []string{"a", "b"}, 3, answers{"a": errOther}, []string{"a", "b"}, errDown},
		{"hint to a down node", []string{"a"}, 3, answers{"a": notLeader("b")}, []string{"a", "b"}, errDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls []string
			err := Follow(context.Background(), tc.addrs, tc.maxHops, func(_ context.Context, addr string) error {
				calls = append(calls, addr)
				if e, ok := tc.answers[addr]; ok {
					return e
				}
				return errDown
			})
			if !slices.Equal(calls, tc.wantCalls) {
				t.Errorf("calls %v, want %v", calls, tc.wantCalls)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("err %v, want success", err)
			case tc.wantErr != nil && status.Convert(err).Message() != status.Convert(tc.wantErr).Message():
				t.Errorf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				wantHint, wantOK := Hint(tc.wantErr)
				if hint, ok := Hint(err); hint != wantHint || ok != wantOK {
					t.Errorf("Hint(err) = %q %v, want %q %v", hint, ok, wantHint, wantOK)
				}
			}
		})
	}
}

func TestFollowStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls []string
	err := Follow(ctx, []string{"a", "c"}, 3, func(_ context.Context, addr string) error {
		calls = append(calls, addr)
		cancel()
		return NotLeaderError("b", "b")
	})
	if !slices.Equal(calls, []string{"a"}) {
		t.Fatalf("calls %v after the context ended, want [a]", calls)
	}
	if hint, _ := Hint(err); hint != "b" {
		t.Fatalf("err %v, want the NotLeader answer of a", err)
	}
}

func TestFollowNoAddresses(t *testing.T) {
	err := Follow(context.Background(), nil, 3, func(context.Context, string) error {
		t.Fatal("called without addresses")
		return nil
	})
	if !errors.Is(err, errNoAddrs) {
		t.Fatalf("err %v, want errNoAddrs", err)
	}
}
