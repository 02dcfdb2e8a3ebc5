package authn

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNewTokenParses(t *testing.T) {
	tok, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	cred, kind, err := ParseBearer("Bearer " + tok)
	if err != nil || cred != tok || kind != KindToken {
		t.Fatalf("ParseBearer(new token) = %q, %v, %v", cred, kind, err)
	}
	if string(Hash(tok)) != string(hash) {
		t.Fatal("hash differs")
	}
	if err := ValidToken(tok); err != nil {
		t.Fatal(err)
	}
	tok2, _, _ := NewToken()
	if tok == tok2 {
		t.Fatal("two tokens are equal")
	}
}

func TestParseBearerRejects(t *testing.T) {
	tok, _, _ := NewToken()
	peer := PeerCredential([]byte("0123456789abcdef0123456789abcdef"))
	if _, k, err := ParseBearer("bearer " + peer); err != nil || k != KindPeer {
		t.Fatalf("peer credential: %v %v", k, err)
	}
	if ValidToken(peer) == nil {
		t.Fatal("ValidToken accepted a peer credential")
	}
	for _, v := range []string{
		"", "Bearer", "Bearer ", tok, "Basic " + tok, "Bearer  " + tok, "Bearer " + tok + "x",
		"Bearer " + tok[:len(tok)-1], "Bearer " + strings.Replace(tok, tok[10:11], "!", 1),
		"Bearer kiln_" + strings.Repeat("a", 300), "Bearer xyz_" + tok[5:],
	} {
		if _, _, err := ParseBearer(v); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseBearer(%q) = %v, want ErrMalformed", v, err)
		} else if len(v) > 12 && strings.Contains(err.Error(), v[12:]) {
			t.Errorf("error echoes the credential: %v", err)
		}
	}
}

func TestPeerCredentialDependsOnKey(t *testing.T) {
	a := PeerCredential([]byte("0123456789abcdef0123456789abcdef"))
	b := PeerCredential([]byte("0123456789abcdef0123456789abcdeF"))
	if a == b {
		t.Fatal("different keys give the same peer credential")
	}
}

func TestBearerMetadata(t *testing.T) {
	md, err := Bearer("kiln_x").GetRequestMetadata(context.Background())
	if err != nil || md[MetadataKey] != "Bearer kiln_x" {
		t.Fatalf("metadata %v %v", md, err)
	}
}

// FuzzParseBearer: the parser never panics, accepts only the documented
// syntax, and a value it accepts round-trips.
func FuzzParseBearer(f *testing.F) {
	tok, _, _ := NewToken()
	f.Add("Bearer " + tok)
	f.Add("bearer " + PeerCredential([]byte("k")))
	f.Add("Bearer kiln_")
	f.Add("Basic abc")
	f.Add("Bearer kiln_\x00\xff")
	f.Fuzz(func(t *testing.T, v string) {
		cred, kind, err := ParseBearer(v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(v) > MaxHeaderBytes || !strings.HasSuffix(v, " "+cred) {
			t.Fatalf("accepted %q as %q", v, cred)
		}
		switch kind {
		case KindToken:
			if !strings.HasPrefix(cred, TokenPrefix) || len(cred) != len(TokenPrefix)+secretLen {
				t.Fatalf("bad token accepted: %q", cred)
			}
		case KindPeer:
			if !strings.HasPrefix(cred, PeerPrefix) || len(cred) != len(PeerPrefix)+secretLen {
				t.Fatalf("bad peer credential accepted: %q", cred)
			}
		default:
			t.Fatalf("kind %d", kind)
		}
	})
}
