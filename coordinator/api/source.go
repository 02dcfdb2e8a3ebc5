package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxEventBytes bounds SubmitBuildRequest.event.
const MaxEventBytes = 64

// resolveSource fills cmd.Source and cmd.Event from the request. A git
// source is pinned to a commit here, on the leader, before the Raft apply
// (the FSM never does I/O): a branch, tag or HEAD is resolved with git
// ls-remote; a full commit id in source.commit (the branch watcher passes
// the commit it saw) is taken as is, with the given branch and tag. A
// source naming a registered repository (source.repo) defaults its URL and
// ref to the repository's. Unknown refs are InvalidArgument, an
// unreachable repository FailedPrecondition.
//
// A retried request (same request id) may resolve again to a newer commit;
// the FSM then returns the first build and ignores the new command.
func (s *ControlServer) resolveSource(ctx context.Context, req *kilnv1.SubmitBuildRequest, cmd *fsmv1.SubmitBuild) error {
	if cmd.Event == "" {
		cmd.Event = req.GetEvent()
	}
	if len(cmd.Event) > MaxEventBytes || strings.ContainsFunc(cmd.Event, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return invalid("event: at most %d bytes without control characters", MaxEventBytes)
	}
	src := req.GetSource()
	if src.GetArchiveSha256() != "" || src.GetArchiveSize() != 0 {
		return s.archiveSource(src, cmd)
	}
	if src.GetGitUrl() == "" && src.GetRepo() == "" {
		if src.GetRef() != "" || src.GetCommit() != "" {
			return invalid("source: ref and commit need source.git_url (or source.repo)")
		}
		return nil
	}
	url, ref := src.GetGitUrl(), src.GetRef()
	if name := src.GetRepo(); name != "" {
		repo, ok := s.d.Store.Repo(name)
		if !ok {
			return status.Errorf(codes.InvalidArgument, "source.repo: no repository %q is registered (see 'kilnctl repo list')", name)
		}
		if url == "" {
			url = repo.GetUrl()
		} else if url != repo.GetUrl() {
			return invalid("source.git_url %q is not the URL of repository %q (%s)", gitsrc.Redact(url), name, gitsrc.Redact(repo.GetUrl()))
		}
		if ref == "" && src.GetCommit() == "" {
			ref = repo.GetBranch()
		}
	}
	if err := gitsrc.ValidateURL(url); err != nil {
		return invalid("source.git_url: %v", err)
	}
	if err := gitsrc.ValidateRef(ref); err != nil {
		return invalid("source.ref: %v", err)
	}
	out := &kilnv1.Source{GitUrl: url, Ref: ref, Repo: src.GetRepo()}
	if c := src.GetCommit(); c != "" {
		if !gitsrc.IsCommit(c) {
			return invalid("source.commit: %q is not a full commit id (40 hex digits)", c)
		}
		for field, v := range map[string]string{"branch": src.GetBranch(), "tag": src.GetTag()} {
			if err := gitsrc.ValidateRef(v); err != nil {
				return invalid("source.%s: %v", field, err)
			}
		}
		out.Commit, out.Branch, out.Tag = strings.ToLower(c), src.GetBranch(), src.GetTag()
		if out.Ref == "" {
			out.Ref = out.Commit
		}
		cmd.Source = out
		return nil
	}
	// Resolving costs a round trip to the repository: let a follower
	// redirect at once instead.
	if err := s.d.requireLeader(); err != nil {
		return err
	}
	res, err := gitsrc.Resolve(ctx, url, ref)
	if err != nil {
		return sourceStatus(err)
	}
	if out.Ref == "" {
		out.Ref = "HEAD"
	}
	out.Commit, out.Branch, out.Tag = res.Commit, res.Branch, res.Tag
	cmd.Source = out
	return nil
}

// archiveSource takes an uploaded source archive: the blob must already be
// stored on the leader (uploads answer only once a quorum holds it). The
// recorded size is the stored blob's.
func (s *ControlServer) archiveSource(src *kilnv1.Source, cmd *fsmv1.SubmitBuild) error {
	if src.GetGitUrl() != "" || src.GetRepo() != "" || src.GetRef() != "" || src.GetCommit() != "" {
		return invalid("source: give either an uploaded archive (archive_sha256) or a git repository, not both")
	}
	sha := src.GetArchiveSha256()
	if !blobstore.ValidDigest(sha) {
		return invalid("source.archive_sha256: %q is not 64 lower-case hex digits", sha)
	}
	if err := s.d.requireLeader(); err != nil {
		return err
	}
	if s.d.Blobs == nil || !s.d.Blobs.Has(sha) {
		return status.Errorf(codes.FailedPrecondition, "source archive %s is not stored: upload the archive first (BlobService.Upload)", sha)
	}
	size, err := s.d.Blobs.Size(sha)
	if err != nil {
		return status.Errorf(codes.Internal, "source archive %s: %v", sha, err)
	}
	if n := src.GetArchiveSize(); n != 0 && n != size {
		return invalid("source.archive_size: %d, but the stored archive %s has %d bytes", n, sha, size)
	}
	cmd.Source = &kilnv1.Source{ArchiveSha256: sha, ArchiveSize: size}
	return nil
}

// sourceStatus maps a gitsrc error to a status.
func sourceStatus(err error) error {
	switch {
	case errors.Is(err, gitsrc.ErrInvalidURL), errors.Is(err, gitsrc.ErrInvalidRef), errors.Is(err, gitsrc.ErrRefNotFound):
		return status.Error(codes.InvalidArgument, "source: "+err.Error())
	case errors.Is(err, gitsrc.ErrUnreachable), errors.Is(err, gitsrc.ErrNoGit):
		return status.Error(codes.FailedPrecondition, "source: "+err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, "source: "+err.Error())
}
