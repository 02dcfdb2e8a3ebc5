package state

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestBuildsPage(t *testing.T) {
	s := New()
	big := strings.Repeat("x", 10<<10)
	for i := uint64(1); i <= 12; i++ {
		if _, err := s.SubmitBuild(i, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{big}}}}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(bs []*kilnv1.Build) string {
		var out []string
		for _, b := range bs {
			out = append(out, b.GetId())
		}
		return strings.Join(out, ",")
	}
	// By count.
	bs, next := s.BuildsPage(0, 5, 0)
	if ids(bs) != "12,11,10,9,8" || next != 8 {
		t.Fatalf("first page %s next %d", ids(bs), next)
	}
	bs, next = s.BuildsPage(next, 5, 0)
	if ids(bs) != "7,6,5,4,3" || next != 3 {
		t.Fatalf("second page %s next %d", ids(bs), next)
	}
	bs, next = s.BuildsPage(next, 5, 0)
	if ids(bs) != "2,1" || next != 0 {
		t.Fatalf("last page %s next %d", ids(bs), next)
	}
	// By bytes: three ~10 KB builds fit in 32 KB.
	bs, next = s.BuildsPage(0, 100, 32<<10)
	if ids(bs) != "12,11,10" || next != 10 {
		t.Fatalf("byte-bounded page %s next %d", ids(bs), next)
	}
	// One build larger than the page alone comes summarized, never not at all.
	bs, next = s.BuildsPage(0, 100, 1<<10)
	if ids(bs) != "12" || next != 12 || bs[0].GetJobs()[0].GetSpec() != nil || bs[0].GetJobs()[0].GetKey() != "a" {
		t.Fatalf("oversized build: %s next %d: %v", ids(bs), next, bs)
	}
	if full, _ := s.Build("12"); full.GetJobs()[0].GetSpec() == nil {
		t.Fatal("Summarize changed the stored job")
	}
	if bs, next := s.BuildsPage(1, 5, 0); len(bs) != 0 || next != 0 {
		t.Fatalf("below build 1: %v %d", bs, next)
	}
}

func TestAgentsPage(t *testing.T) {
	s := New()
	for i := range 5 {
		if err := s.RegisterAgent(uint64(i+1), &fsmv1.RegisterAgent{Name: fmt.Sprintf("a%d", i), Slots: 1, SessionId: "s"}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	after, pages := "", 0
	for {
		as, next := s.AgentsPage(after, 2, 0)
		pages++
		for _, a := range as {
			got = append(got, a.GetName())
		}
		if next == "" {
			break
		}
		after = next
	}
	if strings.Join(got, ",") != "a0,a1,a2,a3,a4" || pages != 3 {
		t.Fatalf("%d pages: %v", pages, got)
	}
	as, next := s.AgentsPage("", 100, proto.Size(&kilnv1.Agent{Name: "a0", Slots: 1, SessionId: "s"})+20)
	if len(as) != 1 || next != "a0" {
		t.Fatalf("byte-bounded page: %v next %q", as, next)
	}
}
