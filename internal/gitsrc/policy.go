package gitsrc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"strings"
	"time"
)

// ErrNotAllowed marks a URL the coordinator's --git-allow policy refuses.
// It wraps ErrInvalidURL, so callers that classify invalid URLs need no
// new case.
var ErrNotAllowed = fmt.Errorf("%w: not allowed by --git-allow", ErrInvalidURL)

// DefaultAllow is the policy of a coordinator started without --git-allow:
// https and ssh repositories on any host whose addresses are not loopback,
// link-local, unspecified or multicast; no file://, http:// or git://.
var DefaultAllow = []string{"*"}

// DevAllow is the policy of --dev: everything, local repositories and
// loopback hosts included (a dev cluster is one user on one machine).
var DevAllow = []string{"*://*", "*://localhost", "*://127.0.0.1", "*://::1", "file://"}

// MaxAllowEntries bounds a policy.
const MaxAllowEntries = 256

// allowEntry is one --git-allow entry.
type allowEntry struct {
	raw    string
	scheme string // "", a scheme, or "*"; "" means https and ssh
	host   string // lower-case glob
	// literal: the host has no glob characters, so the operator named it
	// and its addresses are trusted even if local.
	literal bool
	file    bool
	dir     string // file entries: allowed directory ("" = any)
}

// Policy decides which repository URLs the coordinator may contact. The
// zero value and nil refuse nothing (tests of single packages); a
// coordinator always builds one with ParsePolicy.
type Policy struct {
	entries []allowEntry
	// lookup resolves host names (net.DefaultResolver; tests replace it).
	lookup func(ctx context.Context, host string) ([]net.IP, error)
}

// ParsePolicy parses --git-allow entries:
//
//	HOSTGLOB             https and ssh (and scp-like user@host:path) on matching hosts
//	SCHEME://HOSTGLOB    that scheme (https, http, ssh, git, or * for all four)
//	file://              local repositories on the coordinator (file:///DIR: only under DIR)
//
// HOSTGLOB is a path.Match pattern of the host name without port ("*",
// "*.example.com", "git.internal"). Hosts that resolve to a loopback,
// link-local, unspecified or multicast address are refused unless an
// entry names the host without wildcards.
func ParsePolicy(entries []string) (*Policy, error) {
	if len(entries) > MaxAllowEntries {
		return nil, fmt.Errorf("git-allow: %d entries; the limit is %d", len(entries), MaxAllowEntries)
	}
	p := &Policy{lookup: lookupIPs}
	for _, raw := range entries {
		e, err := parseAllowEntry(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("git-allow: %q: %w", raw, err)
		}
		p.entries = append(p.entries, e)
	}
	return p, nil
}

func parseAllowEntry(raw string) (allowEntry, error) {
	e := allowEntry{raw: raw}
	if raw == "" {
		return e, errors.New("empty entry")
	}
	if dir, ok := strings.CutPrefix(raw, "file://"); ok {
		e.file = true
		if dir != "" {
			if !strings.HasPrefix(dir, "/") || path.Clean(dir) != dir {
				return e, errors.New("file entries are file:// or file:///ABSOLUTE/CLEAN/DIR")
			}
			e.dir = dir
		}
		return e, nil
	}
	host := raw
	if s, h, ok := strings.Cut(raw, "://"); ok {
		switch s = strings.ToLower(s); s {
		case "https", "http", "ssh", "git", "*":
			e.scheme = s
		default:
			return e, fmt.Errorf("scheme %q is not one of https, http, ssh, git, *", s)
		}
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	if host == "" || strings.ContainsAny(host, "/@ ") {
		return e, errors.New("want a host name or glob (no path, user or port)")
	}
	if _, err := path.Match(host, ""); err != nil {
		return e, fmt.Errorf("host glob: %w", err)
	}
	e.host = host
	e.literal = !strings.ContainsAny(host, "*?[\\")
	return e, nil
}

func lookupIPs(ctx context.Context, host string) ([]net.IP, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]net.IP, len(addrs))
	for i, a := range addrs {
		out[i] = a.IP
	}
	return out, nil
}

// target is what a policy looks at in a URL.
type target struct {
	scheme string // https, http, ssh, git, file
	host   string // lower case, no brackets or port
	path   string // file URLs
}

// parseTarget extracts scheme and host from a URL ValidateURL accepted.
func parseTarget(raw string) (target, error) {
	if err := ValidateURL(raw); err != nil {
		return target{}, err
	}
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return target{}, fmt.Errorf("%w: %v", ErrInvalidURL, err)
		}
		t := target{scheme: strings.ToLower(u.Scheme), host: strings.ToLower(u.Hostname())}
		if t.scheme == "file" {
			t.path = path.Clean(u.Path)
		}
		return t, nil
	}
	m := scpRe.FindStringSubmatch(raw)
	if m == nil {
		return target{}, fmt.Errorf("%w: %q", ErrInvalidURL, Redact(raw))
	}
	return target{scheme: "ssh", host: strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(m[1], "["), "]"))}, nil
}

// match returns the entries that allow t (by scheme and host).
func (p *Policy) match(t target) (matched, literal bool) {
	for _, e := range p.entries {
		if t.scheme == "file" {
			if e.file && (e.dir == "" || t.path == e.dir || strings.HasPrefix(t.path, e.dir+"/")) {
				return true, true
			}
			continue
		}
		if e.file {
			continue
		}
		switch e.scheme {
		case "":
			if t.scheme != "https" && t.scheme != "ssh" {
				continue
			}
		case "*":
		default:
			if e.scheme != t.scheme {
				continue
			}
		}
		if ok, _ := path.Match(e.host, t.host); ok {
			matched = true
			literal = literal || e.literal
		}
	}
	return matched, literal
}

// Check reports whether the coordinator may contact rawURL: the URL must
// be valid, an entry must allow its scheme and host, and unless an entry
// names the host literally, none of the host's addresses may be loopback,
// link-local, unspecified or multicast. A nil Policy allows every valid
// URL. Errors wrap ErrNotAllowed (or ErrInvalidURL).
func (p *Policy) Check(ctx context.Context, rawURL string) error {
	t, err := parseTarget(rawURL)
	if err != nil {
		return err
	}
	if p == nil {
		return nil
	}
	matched, literal := p.match(t)
	if !matched {
		if t.scheme == "file" {
			return fmt.Errorf("%w: %s: repositories on the coordinator's disk need --git-allow file://", ErrNotAllowed, Redact(rawURL))
		}
		return fmt.Errorf("%w: %s (%s on host %q)", ErrNotAllowed, Redact(rawURL), t.scheme, t.host)
	}
	if literal || t.scheme == "file" {
		return nil
	}
	ips := []net.IP{net.ParseIP(t.host)}
	if ips[0] == nil {
		if ips, err = p.lookup(ctx, t.host); err != nil {
			return fmt.Errorf("%w: %s: resolve %q: %v", ErrUnreachable, Redact(rawURL), t.host, err)
		}
	}
	for _, ip := range ips {
		if local(ip) {
			return fmt.Errorf("%w: %s: host %q has the local address %s; name it in --git-allow to allow it",
				ErrNotAllowed, Redact(rawURL), t.host, ip)
		}
	}
	return nil
}

// local reports addresses a coordinator must not be sent to by a client:
// its own loopback, link-local (cloud metadata services live at
// 169.254.169.254), unspecified (reaches the local host) and multicast.
func local(ip net.IP) bool {
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified()
}

// StripCredentials removes the secret part of a URL's user info, for
// answers to clients: every user info of http(s):// and git:// URLs
// (https://TOKEN@host is a common form), the password of ssh:// URLs (the
// user name, like git@, is kept). scp-like and file URLs carry no
// password and are returned as they are, as is anything that does not
// parse.
func StripCredentials(raw string) string {
	if !strings.Contains(raw, "://") || !strings.Contains(raw, "@") {
		// No user info without an '@': the common case, without a parse.
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return stripUserInfo(raw)
	}
	if u.User == nil {
		return raw
	}
	switch strings.ToLower(u.Scheme) {
	case "ssh":
		if _, has := u.User.Password(); !has {
			return raw
		}
		u.User = url.User(u.User.Username())
	default:
		u.User = nil
	}
	return u.String()
}

// stripUserInfo drops everything between "://" and the last '@' of the
// authority, for URLs url.Parse refuses (their user info may still hold a
// secret).
func stripUserInfo(raw string) string {
	scheme, rest, _ := strings.Cut(raw, "://")
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		return scheme + "://" + rest[at+1:]
	}
	return raw
}
