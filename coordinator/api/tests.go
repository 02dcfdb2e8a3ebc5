package api

import (
	"cmp"
	"context"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Defaults and bounds of FlakyTests.
const (
	defaultFlakyBuilds = 50
	maxFlakyBuilds     = 1000
	defaultFlakyLimit  = 20
	maxFlakyLimit      = 1000
)

// ListTests returns the test reports of a build's current attempts and the
// build's summary, one page of reports at a time; failed_only keeps the
// failed and errored cases. Served
// by any node from its local state.
func (s *ControlServer) ListTests(ctx context.Context, req *kilnv1.ListTestsRequest) (*kilnv1.ListTestsResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	if err := s.knownBuild(req.GetBuildId()); err != nil {
		return nil, err
	}
	resp := &kilnv1.ListTestsResponse{Summary: s.d.Store.TestSummary(req.GetBuildId())}
	if resp.Summary == nil {
		resp.Summary = &kilnv1.TestSummary{}
	}
	for _, r := range s.d.Store.TestReports(req.GetBuildId(), true) {
		if req.GetFailedOnly() {
			out := &kilnv1.TestReport{JobId: r.GetJobId(), Step: r.GetStep(), Attempt: r.GetAttempt(), File: r.GetFile(), Summary: r.GetSummary(), Error: r.GetError()}
			for _, c := range r.GetCases() {
				if c.GetResult() == "failed" || c.GetResult() == "errored" {
					out.Cases = append(out.Cases, c)
				}
			}
			r = out
		}
		resp.Reports = append(resp.Reports, r)
	}
	var err error
	if resp.Reports, resp.NextPageToken, err = page(resp.Reports, req.GetPageToken(), "ListTests"); err != nil {
		return nil, err
	}
	if req.GetPageToken() == "" {
		resp.Flaky = buildFlaky(s.d.Store, req.GetBuildId())
	}
	return resp, nil
}

// FlakyTests lists the cases that were flaky in the newest builds of a
// repository (every build when repo is empty): per case, the builds where
// it was flaky and the builds where it ran, most flaky first.
func (s *ControlServer) FlakyTests(ctx context.Context, req *kilnv1.FlakyTestsRequest) (*kilnv1.FlakyTestsResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	n, limit := int(req.GetBuilds()), int(req.GetLimit())
	switch {
	case len(req.GetRepo()) > MaxNameBytes:
		return nil, invalid("repo: longer than %d bytes", MaxNameBytes)
	case n < 0 || n > maxFlakyBuilds:
		return nil, invalid("builds must be between 0 and %d", maxFlakyBuilds)
	case limit < 0 || limit > maxFlakyLimit:
		return nil, invalid("limit must be between 0 and %d", maxFlakyLimit)
	}
	if n == 0 {
		n = defaultFlakyBuilds
	}
	if limit == 0 {
		limit = defaultFlakyLimit
	}
	if req.GetRepo() != "" {
		if _, ok := s.d.Store.Repo(req.GetRepo()); !ok {
			return nil, status.Errorf(codes.NotFound, "repository %q not found", req.GetRepo())
		}
	}
	stats := map[state.TestKey]*kilnv1.FlakyTest{}
	for _, id := range s.d.Store.RecentBuildIDs(req.GetRepo(), n) { // newest first
		ran, flaky := s.d.Store.TestCases(id)
		for k := range ran {
			ft := stats[k]
			if ft == nil {
				ft = &kilnv1.FlakyTest{Classname: k.Classname, Name: k.Name}
				stats[k] = ft
			}
			ft.Builds++
			if flaky[k] {
				ft.FlakyBuilds++
				if ft.LastBuildId == "" {
					ft.LastBuildId = id
				}
			}
		}
	}
	resp := &kilnv1.FlakyTestsResponse{}
	for _, ft := range stats {
		if ft.FlakyBuilds > 0 {
			resp.Tests = append(resp.Tests, ft)
		}
	}
	slices.SortFunc(resp.Tests, func(a, b *kilnv1.FlakyTest) int {
		return cmp.Or(cmp.Compare(b.FlakyBuilds, a.FlakyBuilds), cmp.Compare(a.Classname, b.Classname), cmp.Compare(a.Name, b.Name))
	})
	if len(resp.Tests) > limit {
		resp.Tests = resp.Tests[:limit]
	}
	// A top-N list, not paged: cut where it would pass the message bound
	// (names are up to 4 KiB each).
	size := 0
	for i, ft := range resp.Tests {
		if size += proto.Size(ft) + 8; size > MaxListResponseBytes {
			resp.Tests = resp.Tests[:i]
			break
		}
	}
	return resp, nil
}

// maxBuildFlaky bounds the flaky cases one ListTests answer names.
const maxBuildFlaky = 1000

// buildFlaky lists the cases that were flaky across a build's attempts,
// sorted, at most maxBuildFlaky.
func buildFlaky(store *state.Store, id string) []*kilnv1.FlakyTest {
	_, flaky := store.TestCases(id)
	keys := make([]state.TestKey, 0, len(flaky))
	for k, ok := range flaky {
		if ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b state.TestKey) int {
		return cmp.Or(cmp.Compare(a.Classname, b.Classname), cmp.Compare(a.Name, b.Name))
	})
	out := make([]*kilnv1.FlakyTest, 0, min(len(keys), maxBuildFlaky))
	for _, k := range keys[:min(len(keys), maxBuildFlaky)] {
		out = append(out, &kilnv1.FlakyTest{Classname: k.Classname, Name: k.Name, FlakyBuilds: 1, Builds: 1, LastBuildId: id})
	}
	return out
}
