package state

import (
	"errors"
	"io"
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func tokenCmd(name, kind string, hash byte, bootstrap bool) *fsmv1.CreateToken {
	return &fsmv1.CreateToken{Record: &fsmv1.TokenRecord{Token: &kilnv1.Token{Name: name, Role: "admin", Kind: kind, ExpiresUnixMs: 1000}, Hash: []byte{hash, 1, 2}}, Bootstrap: bootstrap}
}

func TestTokensBootstrapRevokeRedeem(t *testing.T) {
	s := New()
	if _, err := s.CreateToken(1, tokenCmd("admin", TokenKindAPI, 1, true)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateToken(2, tokenCmd("other", TokenKindAPI, 2, true)); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("second bootstrap: %v", err)
	}
	if _, err := s.CreateToken(3, tokenCmd("admin", TokenKindAPI, 3, false)); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("repeated name: %v", err)
	}
	if got := s.TokenByHash([]byte{1, 1, 2}); got.GetName() != "admin" {
		t.Fatalf("by hash: %v", got)
	}
	if _, err := s.CreateToken(4, tokenCmd("pool", TokenKindJoin, 4, false)); err != nil {
		t.Fatal(err)
	}
	redeem := func(idx uint64, hash byte, now int64) error {
		_, err := s.RedeemToken(idx, &fsmv1.RedeemToken{Hash: []byte{hash, 1, 2}, TimeUnixMs: now})
		return err
	}
	if err := redeem(5, 1, 10); !errors.Is(err, ErrNotPermitted) {
		t.Fatalf("redeem an API token: %v", err)
	}
	if err := redeem(6, 9, 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("redeem unknown: %v", err)
	}
	if err := redeem(7, 4, 1000); !errors.Is(err, ErrNotPermitted) {
		t.Fatalf("redeem expired: %v", err)
	}
	if err := redeem(8, 4, 10); err != nil {
		t.Fatalf("redeem: %v", err)
	}
	if err := redeem(9, 4, 11); !errors.Is(err, ErrNotPermitted) {
		t.Fatalf("redeem twice: %v", err)
	}
	tok, err := s.RevokeToken(10, &fsmv1.RevokeToken{Name: "admin", TimeUnixMs: 5})
	if err != nil || !tok.GetRevoked() || tok.GetRevokedUnixMs() != 5 {
		t.Fatalf("revoke: %v %v", tok, err)
	}
	if _, err := s.RevokeToken(11, &fsmv1.RevokeToken{Name: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
}

func TestSecretsScopes(t *testing.T) {
	s := New()
	set := func(idx uint64, repo, name, v string) {
		if err := s.SetSecret(idx, &fsmv1.SetSecret{Record: &fsmv1.SecretRecord{Name: name, Repo: repo, Sealed: []byte(v)}}); err != nil {
			t.Fatal(err)
		}
	}
	set(1, "", "TOKEN", "global")
	set(2, "web", "TOKEN", "web")
	if got := string(s.SealedSecret("web", "TOKEN").GetSealed()); got != "web" {
		t.Fatalf("web: %q", got)
	}
	if got := string(s.SealedSecret("api", "TOKEN").GetSealed()); got != "global" {
		t.Fatalf("api: %q", got)
	}
	if s.SealedSecret("", "NOPE") != nil {
		t.Fatal("missing secret found")
	}
	if err := s.DeleteSecret(3, &fsmv1.DeleteSecret{Name: "TOKEN", Repo: "api"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if err := s.DeleteSecret(4, &fsmv1.DeleteSecret{Name: "TOKEN", Repo: "web"}); err != nil {
		t.Fatal(err)
	}
	if got := string(s.SealedSecret("web", "TOKEN").GetSealed()); got != "global" {
		t.Fatalf("after delete: %q", got)
	}
	if n := len(s.Secrets()); n != 1 {
		t.Fatalf("%d secrets", n)
	}
}

// The audit log keeps the newest MaxAuditRecords, also across a snapshot.
func TestAuditBoundedAndSnapshotted(t *testing.T) {
	s := New()
	_, _ = s.CreateToken(1, tokenCmd("admin", TokenKindAPI, 1, true))
	_ = s.SetSecret(2, &fsmv1.SetSecret{Record: &fsmv1.SecretRecord{Name: "A", Sealed: []byte("x")}})
	n := MaxAuditRecords + 5
	for i := 0; i < n; i++ {
		if err := s.AppendAudit(uint64(10+i), &fsmv1.AppendAudit{Record: &kilnv1.AuditRecord{Who: "w", TimeUnixMs: int64(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store) {
		t.Helper()
		all := s.Audit(0, 0)
		if len(all) != MaxAuditRecords || all[0].GetTimeUnixMs() != 5 || all[0].GetSeq() != 15 {
			t.Fatalf("%d records, first %v", len(all), all[0])
		}
		if got := s.Audit(int64(n-3), 0); len(got) != 3 {
			t.Fatalf("since: %d", len(got))
		}
		if got := s.Audit(0, 2); len(got) != 2 || got[1].GetTimeUnixMs() != int64(n-1) {
			t.Fatalf("limit: %v", got)
		}
	}
	check(s)
	var recs []*fsmv1.SnapshotRecord
	if err := s.Snapshot().Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	r := New()
	i := 0
	if err := r.Restore(func() (*fsmv1.SnapshotRecord, error) {
		if i == len(recs) {
			return nil, io.EOF
		}
		i++
		return recs[i-1], nil
	}); err != nil {
		t.Fatal(err)
	}
	check(r)
	if r.TokenByHash([]byte{1, 1, 2}).GetName() != "admin" || r.SealedSecret("", "A") == nil {
		t.Fatal("tokens or secrets lost in the snapshot")
	}
	// The restored count drops the oldest on the next append.
	_ = r.AppendAudit(uint64(10+n), &fsmv1.AppendAudit{Record: &kilnv1.AuditRecord{TimeUnixMs: int64(n)}})
	if all := r.Audit(0, 0); len(all) != MaxAuditRecords || all[0].GetTimeUnixMs() != 6 {
		t.Fatalf("after restore+append: %d, first %v", len(all), all[0])
	}
}
