package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ListArtifacts returns the artifacts of a build's jobs, each job's current
// attempt only, sorted by step then path. Served by any node from its local
// state; the content is downloaded with BlobService.Download.
func (s *ControlServer) ListArtifacts(_ context.Context, req *kilnv1.ListArtifactsRequest) (*kilnv1.ListArtifactsResponse, error) {
	switch {
	case req.GetBuildId() == "":
		return nil, invalid("build_id is required")
	case len(req.GetBuildId()) > MaxNameBytes:
		return nil, invalid("build_id: longer than %d bytes", MaxNameBytes)
	}
	if _, ok := s.d.Store.Build(req.GetBuildId()); !ok {
		return nil, status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
	}
	return &kilnv1.ListArtifactsResponse{Artifacts: s.d.Store.Artifacts(req.GetBuildId())}, nil
}
