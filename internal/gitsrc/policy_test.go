package gitsrc

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
)

// fakeLookup resolves a few names the way DNS might.
func fakeLookup(_ context.Context, host string) ([]net.IP, error) {
	switch host {
	case "github.com", "git.example.com":
		return []net.IP{net.ParseIP("140.82.121.4")}, nil
	case "internal.example.com":
		return []net.IP{net.ParseIP("10.1.2.3")}, nil
	case "metadata.example.com":
		return []net.IP{net.ParseIP("140.82.121.5"), net.ParseIP("169.254.169.254")}, nil
	case "localhost", "git.local":
		return []net.IP{net.ParseIP("127.0.0.1")}, nil
	}
	return nil, errors.New("no such host")
}

func policy(t *testing.T, entries ...string) *Policy {
	t.Helper()
	p, err := ParsePolicy(entries)
	if err != nil {
		t.Fatal(err)
	}
	p.lookup = fakeLookup
	return p
}

func TestPolicy(t *testing.T) {
	def := policy(t, DefaultAllow...)
	cases := []struct {
		p    *Policy
		url  string
		want error // nil: allowed
	}{
		{def, "https://github.com/kiln-ci/kiln.git", nil},
		{def, "https://user:tok@github.com/x.git", nil},
		{def, "git@github.com:kiln-ci/kiln.git", nil},
		{def, "ssh://git@git.example.com/x.git", nil},
		{def, "https://internal.example.com/x.git", nil}, // private, not local
		{def, "http://github.com/x.git", ErrNotAllowed},
		{def, "git://github.com/x.git", ErrNotAllowed},
		{def, "file:///srv/git/x.git", ErrNotAllowed},
		{def, "https://169.254.169.254/latest/meta-data/", ErrNotAllowed},
		{def, "https://[fe80::1]/x.git", ErrNotAllowed},
		{def, "https://127.0.0.1/x.git", ErrNotAllowed},
		{def, "https://0.0.0.0/x.git", ErrNotAllowed},
		{def, "https://localhost/x.git", ErrNotAllowed},
		{def, "https://metadata.example.com/x", ErrNotAllowed}, // one address is link-local
		{def, "https://nowhere.invalid/x", ErrUnreachable},
		{def, "-upload-pack=evil", ErrInvalidURL},
		{policy(t, "*.example.com"), "https://github.com/x", ErrNotAllowed},
		{policy(t, "*.example.com"), "https://git.example.com/x", nil},
		{policy(t, "git.local"), "https://git.local/x", nil}, // named literally: trusted
		{policy(t, "*.local"), "https://git.local/x", ErrNotAllowed},
		{policy(t, "http://127.0.0.1"), "http://127.0.0.1:8080/x", nil},
		{policy(t, "http://127.0.0.1"), "https://127.0.0.1/x", ErrNotAllowed},
		{policy(t, "file://"), "file:///anything/x.git", nil},
		{policy(t, "file:///srv/git"), "file:///srv/git/x.git", nil},
		{policy(t, "file:///srv/git"), "file:///srv/git/../../etc/x", ErrNotAllowed},
		{policy(t, "file:///srv/git"), "file:///srv/gitx/y", ErrNotAllowed},
		{policy(t, DevAllow...), "file:///tmp/x", nil},
		{policy(t, DevAllow...), "git://127.0.0.1:9418/x", nil},
		{policy(t, DevAllow...), "http://169.254.169.254/", ErrNotAllowed},
		{nil, "file:///tmp/x", nil},
	}
	for _, c := range cases {
		err := c.p.Check(context.Background(), c.url)
		switch {
		case c.want == nil && err != nil:
			t.Errorf("%s: %v, want allowed", c.url, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: %v, want %v", c.url, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "tok") {
			t.Errorf("%s: error shows the password: %v", c.url, err)
		}
	}
	if !errors.Is(ErrNotAllowed, ErrInvalidURL) {
		t.Error("ErrNotAllowed must classify as an invalid URL")
	}
}

func TestParsePolicyRejectsBadEntries(t *testing.T) {
	for _, bad := range []string{"", "ftp://x", "https://a/b", "user@host", "[", "file://relative", "file:///a/../b", "a b"} {
		if _, err := ParsePolicy([]string{bad}); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}

func TestStripCredentials(t *testing.T) {
	cases := map[string]string{
		"https://user:tok@github.com/x.git": "https://github.com/x.git",
		"https://tok@github.com/x.git":      "https://github.com/x.git",
		"http://u:p@h:8080/x?y#z":           "http://h:8080/x?y#z",
		"ssh://git:pw@host/x.git":           "ssh://git@host/x.git",
		"ssh://git@host/x.git":              "ssh://git@host/x.git",
		"git@github.com:x/y.git":            "git@github.com:x/y.git",
		"file:///srv/x.git":                 "file:///srv/x.git",
		"https://github.com/x.git":          "https://github.com/x.git",
		"https://us%zzer:tok@github.com/x":  "https://github.com/x",
		"https://a:b@c:d@host/x":            "https://host/x",
		"":                                  "",
	}
	for in, want := range cases {
		if got := StripCredentials(in); got != want {
			t.Errorf("StripCredentials(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzPolicyCheck: parsing any entry list and checking any URL never
// panics, and a URL the policy allows is one ValidateURL accepts.
func FuzzPolicyCheck(f *testing.F) {
	f.Add("*", "https://github.com/x.git")
	f.Add("file:///srv", "file:///srv/../x")
	f.Add("*://127.0.0.1", "git://127.0.0.1/x")
	f.Add("git.local", "user@git.local:x.git")
	f.Add("http://[::1]", "http://[::1]:80/x")
	f.Fuzz(func(t *testing.T, entry, raw string) {
		p, err := ParsePolicy(strings.Split(entry, ","))
		if err != nil {
			return
		}
		p.lookup = fakeLookup
		if p.Check(context.Background(), raw) == nil {
			if err := ValidateURL(raw); err != nil {
				t.Fatalf("policy %q allowed %q which ValidateURL refuses: %v", entry, raw, err)
			}
		}
	})
}

// FuzzStripCredentials: for every URL Kiln accepts (ValidateURL; stored
// sources passed it), the answer never carries a password, nor any user
// info of an http(s) URL.
func FuzzStripCredentials(f *testing.F) {
	f.Add("https://user:secret@github.com/x.git")
	f.Add("ssh://git:secret@host/x")
	f.Add("https://secret@host/x")
	f.Add("https://us%zzer:secret@h/x")
	f.Fuzz(func(t *testing.T, raw string) {
		if ValidateURL(raw) != nil {
			return
		}
		out := StripCredentials(raw)
		u, err := url.Parse(out)
		if err != nil || u.User == nil {
			return
		}
		if _, has := u.User.Password(); has {
			t.Fatalf("StripCredentials(%q) = %q keeps a password", raw, out)
		}
		if s := strings.ToLower(u.Scheme); s == "http" || s == "https" {
			t.Fatalf("StripCredentials(%q) = %q keeps user info", raw, out)
		}
	})
}
