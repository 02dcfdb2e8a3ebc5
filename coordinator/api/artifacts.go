package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ListArtifacts returns the artifacts of a build's jobs, each job's current
// attempt only, sorted by step then path, one page at a time. Served by any node from its local
// state; the content is downloaded with BlobService.Download.
func (s *ControlServer) ListArtifacts(ctx context.Context, req *kilnv1.ListArtifactsRequest) (*kilnv1.ListArtifactsResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	if err := s.knownBuild(req.GetBuildId()); err != nil {
		return nil, err
	}
	arts, next, err := page(s.d.Store.Artifacts(req.GetBuildId()), req.GetPageToken(), "ListArtifacts")
	if err != nil {
		return nil, err
	}
	return &kilnv1.ListArtifactsResponse{Artifacts: arts, NextPageToken: next}, nil
}

// knownBuild checks the build_id of a read request: present, not too long,
// and naming a build in the local state.
func (s *ControlServer) knownBuild(id string) error {
	switch {
	case id == "":
		return invalid("build_id is required")
	case len(id) > MaxNameBytes:
		return invalid("build_id: longer than %d bytes", MaxNameBytes)
	}
	if _, ok := s.d.Store.Build(id); !ok {
		return status.Errorf(codes.NotFound, "build %q not found", id)
	}
	return nil
}
