package state

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	memdb "github.com/hashicorp/go-memdb"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Artifact limits. They are part of the agent protocol.
const (
	// MaxArtifactPathBytes bounds the path of one artifact file.
	MaxArtifactPathBytes = 1024
	// MaxArtifactsPerAttempt bounds the files registered for one attempt.
	MaxArtifactsPerAttempt = 10000
)

const tableArtifacts = "artifacts"

// artifactKeyIndexer keys artifacts by (job id, attempt, path),
// order-preserving. FromArgs accepts a prefix of those three values.
type artifactKeyIndexer struct{}

func artifactKey(jobID string, attempt *uint32, p *string) []byte {
	b := append([]byte(jobID), 0)
	if attempt != nil {
		b = binary.BigEndian.AppendUint32(b, *attempt)
		if p != nil {
			b = append(b, *p...)
			b = append(b, 0)
		}
	}
	return b
}

func (artifactKeyIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	a, ok := raw.(*kilnv1.Artifact)
	if !ok {
		return false, nil, fmt.Errorf("artifact index: unexpected %T", raw)
	}
	at, p := a.GetAttempt(), a.GetFile().GetPath()
	return true, artifactKey(a.GetJobId(), &at, &p), nil
}

func (artifactKeyIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if len(args) > 3 {
		return nil, errors.New("artifact index: at most 3 arguments")
	}
	jobID, ok := args[0].(string)
	if !ok {
		return nil, errors.New("artifact index: job id must be a string")
	}
	var ap *uint32
	var pp *string
	if len(args) > 1 {
		a, ok := args[1].(uint32)
		if !ok {
			return nil, errors.New("artifact index: attempt must be a uint32")
		}
		ap = &a
	}
	if len(args) > 2 {
		p, ok := args[2].(string)
		if !ok {
			return nil, errors.New("artifact index: path must be a string")
		}
		pp = &p
	}
	return artifactKey(jobID, ap, pp), nil
}

func artifactTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableArtifacts, Indexes: map[string]*memdb.IndexSchema{
		"id":    {Name: "id", Unique: true, Indexer: artifactKeyIndexer{}},
		"build": {Name: "build", Indexer: &memdb.StringFieldIndex{Field: "BuildId"}},
		// By digest: whether any record still refers to a blob (ExpireBuilds).
		"sha": {Name: "sha", Indexer: artifactShaIndexer{}},
	}}
}

// ValidArtifactPath reports why p is not an acceptable artifact path: it
// must be a clean, relative, slash-separated path without "..", NUL or
// backslash, valid UTF-8, at most MaxArtifactPathBytes bytes.
func ValidArtifactPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path")
	case len(p) > MaxArtifactPathBytes:
		return fmt.Errorf("path of %d bytes; the limit is %d", len(p), MaxArtifactPathBytes)
	case !utf8.ValidString(p) || strings.ContainsAny(p, "\x00\\"):
		return fmt.Errorf("path %q: not valid UTF-8, or contains NUL or a backslash", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is absolute", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean (want %q)", p, path.Clean(p))
	case p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q leaves the workspace", p)
	}
	return nil
}

func validDigest(sha string) bool {
	if len(sha) != 64 {
		return false
	}
	for i := 0; i < len(sha); i++ {
		c := sha[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// RegisterArtifacts records the uploaded files of an attempt (see the
// package doc). The outcome is OutcomeAccepted, OutcomeStale with
// ErrStaleAttempt, or none (zero) with another error.
func (s *Store) RegisterArtifacts(index uint64, cmd *fsmv1.RegisterArtifacts) (AttemptOutcome, error) {
	up := cmd.GetUploaded()
	var out AttemptOutcome
	err := s.write(index, func(w *wtx) error {
		j, fence := w.fenced(up.GetJobId(), up.GetAttempt(), cmd.GetAgent())
		if j == nil {
			out = stale(up.GetJobId(), up.GetAttempt(), fence)
			return staleErr("register artifacts of", up.GetJobId(), up.GetAttempt(), cmd.GetAgent(), fence)
		}
		for _, f := range up.GetFiles() {
			if err := ValidArtifactPath(f.GetPath()); err != nil {
				return fmt.Errorf("register artifacts of %q: %v: %w", j.GetId(), err, ErrInvalidCommand)
			}
			if !validDigest(f.GetSha256()) {
				return fmt.Errorf("register artifacts of %q: %s: sha256 %q is not 64 lower-case hex digits: %w", j.GetId(), f.GetPath(), f.GetSha256(), ErrInvalidCommand)
			}
			if f.GetSize() < 0 {
				return fmt.Errorf("register artifacts of %q: %s: negative size: %w", j.GetId(), f.GetPath(), ErrInvalidCommand)
			}
		}
		n := countArtifacts(w.tx, j.GetId(), j.GetAttempt())
		for _, f := range up.GetFiles() {
			if mustFirst(w.tx, tableArtifacts, j.GetId(), j.GetAttempt(), f.GetPath()) != nil {
				continue // registered before (a resend): left unchanged
			}
			if n >= MaxArtifactsPerAttempt {
				return fmt.Errorf("register artifacts of %q attempt %d: more than %d files: %w", j.GetId(), j.GetAttempt(), MaxArtifactsPerAttempt, ErrInvalidCommand)
			}
			n++
			mustInsert(w.tx, tableArtifacts, &kilnv1.Artifact{
				BuildId: j.GetBuildId(),
				JobId:   j.GetId(),
				Step:    j.GetKey(),
				Attempt: j.GetAttempt(),
				File: &kilnv1.ArtifactFile{
					Path: f.GetPath(), Size: f.GetSize(), Sha256: f.GetSha256(), Mode: f.GetMode() & 0o777,
				},
				TimeUnixMs: cmd.GetTimeUnixMs(),
			})
		}
		out = accepted(j.GetId(), j.GetAttempt())
		return nil
	})
	return out, err
}

func scanArtifacts(tx *memdb.Txn, jobID string, attempt uint32, fn func(*kilnv1.Artifact)) {
	it, err := tx.LowerBound(tableArtifacts, "id", jobID, attempt)
	if err != nil {
		panic(fmt.Sprintf("state: scan artifacts: %v", err))
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		a := raw.(*kilnv1.Artifact)
		if a.GetJobId() != jobID || a.GetAttempt() != attempt {
			return
		}
		fn(a)
	}
}

func countArtifacts(tx *memdb.Txn, jobID string, attempt uint32) int {
	n := 0
	scanArtifacts(tx, jobID, attempt, func(*kilnv1.Artifact) { n++ })
	return n
}

func sortArtifacts(out []*kilnv1.Artifact) {
	slices.SortFunc(out, func(a, b *kilnv1.Artifact) int {
		return cmp.Or(cmp.Compare(a.GetStep(), b.GetStep()), cmp.Compare(a.GetFile().GetPath(), b.GetFile().GetPath()))
	})
}

// Artifacts returns the artifacts of a build's jobs, each job's current
// attempt only, sorted by step then path.
func (s *Store) Artifacts(buildID string) []*kilnv1.Artifact {
	tx := s.read()
	var out []*kilnv1.Artifact
	it := mustGet(tx, tableArtifacts, "build", buildID)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		a := raw.(*kilnv1.Artifact)
		if j := getJob(tx, a.GetJobId()); j != nil && j.GetAttempt() == a.GetAttempt() {
			out = append(out, a)
		}
	}
	sortArtifacts(out)
	return out
}

// JobArtifacts returns the artifacts of one job attempt sorted by path.
func (s *Store) JobArtifacts(jobID string, attempt uint32) []*kilnv1.Artifact {
	var out []*kilnv1.Artifact
	scanArtifacts(s.read(), jobID, attempt, func(a *kilnv1.Artifact) { out = append(out, a) })
	sortArtifacts(out)
	return out
}

// ArtifactDigests returns the digest of every registered artifact, of any
// attempt (the blobs the cluster must keep).
func (s *Store) ArtifactDigests() map[string]bool {
	out := map[string]bool{}
	it := mustGet(s.read(), tableArtifacts, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out[raw.(*kilnv1.Artifact).GetFile().GetSha256()] = true
	}
	return out
}

// SourceArchiveDigests returns the digest of the uploaded source archive
// (source.archive_sha256) of every build whose retention has not ended
// (artifacts_expired false): unfinished builds and finished ones within
// their artifact retention. These are the source blobs the cluster keeps.
func (s *Store) SourceArchiveDigests() map[string]bool {
	out := map[string]bool{}
	it := mustGet(s.read(), tableBuilds, "kept_archive")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out[raw.(*buildRow).Build.GetSource().GetArchiveSha256()] = true
	}
	return out
}
