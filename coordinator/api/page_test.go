package api

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestPageStaysUnderTheMessageLimit(t *testing.T) {
	// 2500 small entries: pages of maxPageItems.
	var small []*kilnv1.Repo
	for i := range 2500 {
		small = append(small, &kilnv1.Repo{Name: fmt.Sprint("r", i)})
	}
	var got []string
	pages := 0
	for token := ""; ; pages++ {
		p, next, err := page(small, token, "ListRepos")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p {
			got = append(got, r.GetName())
		}
		if token = next; token == "" {
			break
		}
	}
	if len(got) != 2500 || got[0] != "r0" || got[2499] != "r2499" || pages != 2 {
		t.Fatalf("%d entries over %d+1 pages", len(got), pages)
	}
	// 1 MB entries: three fit under 3 MiB minus overhead → two per page.
	var big []*kilnv1.TestReport
	for i := range 5 {
		big = append(big, &kilnv1.TestReport{File: fmt.Sprint(i), Error: strings.Repeat("e", 1<<20)})
	}
	total := 0
	for token := ""; ; {
		p, next, err := page(big, token, "ListTests")
		if err != nil {
			t.Fatal(err)
		}
		resp := &kilnv1.ListTestsResponse{Reports: p, NextPageToken: next}
		if n := proto.Size(resp); n > MaxListResponseBytes {
			t.Fatalf("page of %d bytes", n)
		}
		total += len(p)
		if token = next; token == "" {
			break
		}
	}
	if total != 5 {
		t.Fatalf("%d reports listed", total)
	}
	if _, _, err := page(big, "x", "ListTests"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ListTests") {
		t.Fatalf("bad token: %v", err)
	}
	if p, next, err := page(big, "99", "ListTests"); err != nil || len(p) != 0 || next != "" {
		t.Fatalf("past the end: %v %q %v", p, next, err)
	}
}
