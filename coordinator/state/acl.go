package state

import (
	"encoding/hex"
	"fmt"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Access control tables: tokens (by name and by secret hash), sealed
// secrets (by repo and name) and the audit log (by sequence).
const (
	tableTokens  = "tokens"
	tableSecrets = "secrets"
	tableAudit   = "audit"
	tableACLMeta = "acl_meta"
)

// MaxAuditRecords bounds the audit log kept in the replicated state: when a
// record is appended beyond it, the oldest is dropped.
const MaxAuditRecords = 10000

// Token kinds (kilnv1.Token.kind).
const (
	// TokenKindAPI is a bearer token with a role.
	TokenKindAPI = "api"
	// TokenKindJoin is a one-time agent join token; its name is the pool.
	TokenKindJoin = "join"
)

type tokenRow struct {
	Name string
	Hash string // hex SHA-256 of the secret
	Rec  *fsmv1.TokenRecord
}

type secretRow struct {
	Key string // repo + "\x00" + name
	Rec *fsmv1.SecretRecord
}

type auditRow struct {
	Seq uint64
	Rec *kilnv1.AuditRecord
}

// aclMetaRow counts the audit records so the oldest can be dropped in O(1).
type aclMetaRow struct {
	ID    string
	Audit int
}

func secretKey(repo, name string) string { return repo + "\x00" + name }

func aclTables() map[string]*memdb.TableSchema {
	str := func(name, field string) *memdb.IndexSchema {
		return &memdb.IndexSchema{Name: name, Unique: true, Indexer: &memdb.StringFieldIndex{Field: field}}
	}
	return map[string]*memdb.TableSchema{
		tableTokens: {Name: tableTokens, Indexes: map[string]*memdb.IndexSchema{
			"id": str("id", "Name"), "hash": str("hash", "Hash"),
		}},
		tableSecrets: {Name: tableSecrets, Indexes: map[string]*memdb.IndexSchema{"id": str("id", "Key")}},
		tableAudit: {Name: tableAudit, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.UintFieldIndex{Field: "Seq"}},
		}},
		tableACLMeta: {Name: tableACLMeta, Indexes: map[string]*memdb.IndexSchema{"id": str("id", "ID")}},
	}
}

func readACLMeta(tx *memdb.Txn) aclMetaRow {
	if raw := mustFirst(tx, tableACLMeta, metaID); raw != nil {
		return *raw.(*aclMetaRow)
	}
	return aclMetaRow{ID: metaID}
}

func getToken(tx *memdb.Txn, name string) *tokenRow {
	if raw := mustFirst(tx, tableTokens, name); raw != nil {
		return raw.(*tokenRow)
	}
	return nil
}

// CreateToken stores a new token. A repeated name is ErrInvalidState; a
// bootstrap when any token exists is ErrInvalidState.
func (s *Store) CreateToken(index uint64, cmd *fsmv1.CreateToken) (*kilnv1.Token, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Token, error) {
		rec := cmd.GetRecord()
		name := rec.GetToken().GetName()
		if name == "" || len(rec.GetHash()) == 0 {
			return nil, fmt.Errorf("create token: no name or hash: %w", ErrInvalidCommand)
		}
		if cmd.GetBootstrap() {
			if raw, _ := w.tx.First(tableTokens, "id"); raw != nil {
				return nil, fmt.Errorf("bootstrap: the cluster already has tokens; ask an admin for one: %w", ErrInvalidState)
			}
		}
		if getToken(w.tx, name) != nil {
			return nil, fmt.Errorf("create token: a token named %q exists (names are never reused): %w", name, ErrInvalidState)
		}
		rec = proto.Clone(rec).(*fsmv1.TokenRecord)
		mustInsert(w.tx, tableTokens, &tokenRow{Name: name, Hash: hex.EncodeToString(rec.GetHash()), Rec: rec})
		return proto.Clone(rec.GetToken()).(*kilnv1.Token), nil
	})
}

// RevokeToken marks a token revoked; revoking twice keeps the first time.
func (s *Store) RevokeToken(index uint64, cmd *fsmv1.RevokeToken) (*kilnv1.Token, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Token, error) {
		row := getToken(w.tx, cmd.GetName())
		if row == nil {
			return nil, fmt.Errorf("revoke token: no token named %q: %w", cmd.GetName(), ErrNotFound)
		}
		rec := proto.Clone(row.Rec).(*fsmv1.TokenRecord)
		if !rec.GetToken().GetRevoked() {
			rec.Token.Revoked = true
			rec.Token.RevokedUnixMs = cmd.GetTimeUnixMs()
		}
		mustInsert(w.tx, tableTokens, &tokenRow{Name: row.Name, Hash: row.Hash, Rec: rec})
		return proto.Clone(rec.GetToken()).(*kilnv1.Token), nil
	})
}

// RedeemToken consumes a one-time join token by its secret's hash and
// returns it (its name is the agent pool). Unknown hashes are ErrNotFound;
// a token that is not a join token, or is redeemed, revoked or expired at
// the command's time, is ErrNotPermitted.
func (s *Store) RedeemToken(index uint64, cmd *fsmv1.RedeemToken) (*kilnv1.Token, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Token, error) {
		raw, err := w.tx.First(tableTokens, "hash", hex.EncodeToString(cmd.GetHash()))
		if err != nil || raw == nil || len(cmd.GetHash()) == 0 {
			return nil, fmt.Errorf("redeem: unknown join token: %w", ErrNotFound)
		}
		row := raw.(*tokenRow)
		t := row.Rec.GetToken()
		switch {
		case t.GetKind() != TokenKindJoin:
			return nil, fmt.Errorf("redeem: %q is not a join token: %w", t.GetName(), ErrNotPermitted)
		case t.GetRedeemed():
			return nil, fmt.Errorf("redeem: join token %q was already used: %w", t.GetName(), ErrNotPermitted)
		case t.GetRevoked():
			return nil, fmt.Errorf("redeem: join token %q is revoked: %w", t.GetName(), ErrNotPermitted)
		case t.GetExpiresUnixMs() > 0 && cmd.GetTimeUnixMs() >= t.GetExpiresUnixMs():
			return nil, fmt.Errorf("redeem: join token %q expired: %w", t.GetName(), ErrNotPermitted)
		}
		rec := proto.Clone(row.Rec).(*fsmv1.TokenRecord)
		rec.Token.Redeemed = true
		rec.Token.RedeemedUnixMs = cmd.GetTimeUnixMs()
		mustInsert(w.tx, tableTokens, &tokenRow{Name: row.Name, Hash: row.Hash, Rec: rec})
		return proto.Clone(rec.GetToken()).(*kilnv1.Token), nil
	})
}

// TokenByHash returns the token whose secret has this SHA-256, or nil. The
// result is shared: do not modify it.
func (s *Store) TokenByHash(hash []byte) *kilnv1.Token {
	raw, err := s.read().First(tableTokens, "hash", hex.EncodeToString(hash))
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*tokenRow).Rec.GetToken()
}

// Token returns the named token (a copy), or nil.
func (s *Store) Token(name string) *kilnv1.Token {
	if row := getToken(s.read(), name); row != nil {
		return proto.Clone(row.Rec.GetToken()).(*kilnv1.Token)
	}
	return nil
}

// Tokens returns every token (copies, without hashes), by name.
func (s *Store) Tokens() []*kilnv1.Token {
	var out []*kilnv1.Token
	it := mustGet(s.read(), tableTokens, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, proto.Clone(raw.(*tokenRow).Rec.GetToken()).(*kilnv1.Token))
	}
	return out
}

// SetSecret creates or replaces a sealed secret.
func (s *Store) SetSecret(index uint64, cmd *fsmv1.SetSecret) error {
	return s.write(index, func(w *wtx) error {
		rec := cmd.GetRecord()
		if rec.GetName() == "" || len(rec.GetSealed()) == 0 {
			return fmt.Errorf("set secret: no name or value: %w", ErrInvalidCommand)
		}
		mustInsert(w.tx, tableSecrets, &secretRow{Key: secretKey(rec.GetRepo(), rec.GetName()), Rec: proto.Clone(rec).(*fsmv1.SecretRecord)})
		return nil
	})
}

// DeleteSecret deletes a secret; an absent one is ErrNotFound.
func (s *Store) DeleteSecret(index uint64, cmd *fsmv1.DeleteSecret) error {
	return s.write(index, func(w *wtx) error {
		raw := mustFirst(w.tx, tableSecrets, secretKey(cmd.GetRepo(), cmd.GetName()))
		if raw == nil {
			where := "global"
			if cmd.GetRepo() != "" {
				where = "of repository " + cmd.GetRepo()
			}
			return fmt.Errorf("delete secret: no %s secret named %q: %w", where, cmd.GetName(), ErrNotFound)
		}
		if err := w.tx.Delete(tableSecrets, raw); err != nil {
			return fmt.Errorf("delete secret: %w", err)
		}
		return nil
	})
}

// Secrets describes every secret (never a value), by repo then name.
func (s *Store) Secrets() []*kilnv1.Secret {
	var out []*kilnv1.Secret
	it := mustGet(s.read(), tableSecrets, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*secretRow).Rec
		out = append(out, &kilnv1.Secret{Name: r.GetName(), Repo: r.GetRepo(), UpdatedUnixMs: r.GetUpdatedUnixMs(), UpdatedBy: r.GetUpdatedBy()})
	}
	return out
}

// SealedSecret returns the sealed secret a build of repo gets for name: the
// repository's own, else the global one; nil when neither exists. The
// result is shared: do not modify it.
func (s *Store) SealedSecret(repo, name string) *fsmv1.SecretRecord {
	tx := s.read()
	if repo != "" {
		if raw := mustFirst(tx, tableSecrets, secretKey(repo, name)); raw != nil {
			return raw.(*secretRow).Rec
		}
	}
	if raw := mustFirst(tx, tableSecrets, secretKey("", name)); raw != nil {
		return raw.(*secretRow).Rec
	}
	return nil
}

// AppendAudit appends an audit record with seq = index, dropping the oldest
// beyond MaxAuditRecords.
func (s *Store) AppendAudit(index uint64, cmd *fsmv1.AppendAudit) error {
	return s.write(index, func(w *wtx) error {
		if cmd.GetRecord() == nil {
			return fmt.Errorf("append audit: no record: %w", ErrInvalidCommand)
		}
		rec := proto.Clone(cmd.GetRecord()).(*kilnv1.AuditRecord)
		rec.Seq = index
		mustInsert(w.tx, tableAudit, &auditRow{Seq: index, Rec: rec})
		m := readACLMeta(w.tx)
		m.Audit++
		for m.Audit > MaxAuditRecords {
			raw, err := w.tx.First(tableAudit, "id")
			if err != nil || raw == nil {
				break
			}
			if err := w.tx.Delete(tableAudit, raw); err != nil {
				return fmt.Errorf("append audit: drop oldest: %w", err)
			}
			m.Audit--
		}
		mustInsert(w.tx, tableACLMeta, &m)
		return nil
	})
}

// Audit returns the audit records at or after sinceMs, oldest first; with
// limit > 0 only the newest limit of them.
func (s *Store) Audit(sinceMs int64, limit int) []*kilnv1.AuditRecord {
	var out []*kilnv1.AuditRecord
	it := mustGet(s.read(), tableAudit, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*auditRow).Rec
		if r.GetTimeUnixMs() >= sinceMs {
			out = append(out, r)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	for i, r := range out {
		out[i] = proto.Clone(r).(*kilnv1.AuditRecord)
	}
	return out
}

// aclRecords emits the access-control records of a snapshot view.
func (sn *Snapshot) aclRecords(fn func(*fsmv1.SnapshotRecord) error) error {
	tx := sn.tx
	it := mustGet(tx, tableTokens, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Token{Token: raw.(*tokenRow).Rec}}); err != nil {
			return err
		}
	}
	it = mustGet(tx, tableSecrets, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Secret{Secret: raw.(*secretRow).Rec}}); err != nil {
			return err
		}
	}
	it = mustGet(tx, tableAudit, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Audit{Audit: raw.(*auditRow).Rec}}); err != nil {
			return err
		}
	}
	return nil
}

// restoreACL inserts one access-control snapshot record; ok is false for
// records of other kinds.
func restoreACL(tx *memdb.Txn, rec *fsmv1.SnapshotRecord) (ok bool, err error) {
	switch r := rec.GetRecord().(type) {
	case *fsmv1.SnapshotRecord_Token:
		t := proto.Clone(r.Token).(*fsmv1.TokenRecord)
		if t.GetToken().GetName() == "" || len(t.GetHash()) == 0 {
			return true, fmt.Errorf("restore: token without a name or hash")
		}
		return true, tx.Insert(tableTokens, &tokenRow{Name: t.GetToken().GetName(), Hash: hex.EncodeToString(t.GetHash()), Rec: t})
	case *fsmv1.SnapshotRecord_Secret:
		sr := proto.Clone(r.Secret).(*fsmv1.SecretRecord)
		if sr.GetName() == "" {
			return true, fmt.Errorf("restore: secret without a name")
		}
		return true, tx.Insert(tableSecrets, &secretRow{Key: secretKey(sr.GetRepo(), sr.GetName()), Rec: sr})
	case *fsmv1.SnapshotRecord_Audit:
		a := proto.Clone(r.Audit).(*kilnv1.AuditRecord)
		if err := tx.Insert(tableAudit, &auditRow{Seq: a.GetSeq(), Rec: a}); err != nil {
			return true, err
		}
		m := readACLMeta(tx)
		m.Audit++
		return true, tx.Insert(tableACLMeta, &m)
	}
	return false, nil
}
