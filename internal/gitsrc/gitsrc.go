// Package gitsrc resolves git refs and fetches commits with the git CLI.
//
// The coordinator calls Resolve at submit time (git ls-remote, so no clone)
// to pin a branch, tag or HEAD to a commit; agents call Checkout to fetch
// exactly that commit (shallow when the server allows fetching by id, else a
// full fetch) into a job's workspace; the branch watcher calls ReadFile to
// read the pipeline file of a commit.
//
// Only file://, http(s)://, git://, ssh:// and scp-like [user@]host:path
// URLs are accepted, never anything starting with '-' (git would read it as
// an option), and every positional argument follows "--". git runs with
// GIT_TERMINAL_PROMPT=0 (and ssh in batch mode) so it fails instead of
// waiting for a password, with GIT_ALLOW_PROTOCOL limited to the same
// transports (unless the operator set it), in its own process group that is
// killed when the context ends.
package gitsrc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Errors, wrapped with context; test with errors.Is.
var (
	// ErrInvalidURL: the repository URL is not an accepted form.
	ErrInvalidURL = errors.New("invalid git URL")
	// ErrInvalidRef: the ref is not a valid branch, tag or commit name.
	ErrInvalidRef = errors.New("invalid git ref")
	// ErrUnreachable: git could not talk to the repository (wrong URL,
	// no access, network, timeout).
	ErrUnreachable = errors.New("git repository unreachable")
	// ErrRefNotFound: the repository has no such branch, tag or commit.
	ErrRefNotFound = errors.New("git ref not found")
	// ErrFileNotFound: ReadFile's path is not a file at that commit.
	ErrFileNotFound = errors.New("file not found in commit")
	// ErrFileTooLarge: ReadFile's file is above the size limit.
	ErrFileTooLarge = errors.New("file too large")
	// ErrNoGit: the git executable is not installed.
	ErrNoGit = errors.New("git executable not found in PATH")
)

// Timeouts applied on top of the caller's context.
var (
	// ResolveTimeout bounds one Resolve (one ls-remote).
	ResolveTimeout = 30 * time.Second
	// ReadFileTimeout bounds one ReadFile (a shallow fetch and a read).
	ReadFileTimeout = 2 * time.Minute
)

// Resolved is what a ref resolved to.
type Resolved struct {
	// Commit is the full object id (40 hex digits, 64 for SHA-256 repositories).
	Commit string
	// Branch is set when the ref named a branch (or HEAD, whose branch it is).
	Branch string
	// Tag is set when the ref named a tag (and no branch of that name exists).
	Tag string
}

var shortHexRe = regexp.MustCompile(`^[0-9a-fA-F]{4,39}$`)

var commitRe = regexp.MustCompile(`^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$`)

// IsCommit reports whether s is a full commit id (40 or 64 hex digits).
func IsCommit(s string) bool { return commitRe.MatchString(s) }

// scpRe is git's scp-like syntax: [user@]host:path, where host has no
// slash or colon (so "transport::address" remote-helper syntax and local
// paths never match).
var scpRe = regexp.MustCompile(`^(?:[A-Za-z0-9._~+-]+@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([^:].*)$`)

// ValidateURL accepts file://, http://, https://, git://, ssh:// URLs and
// scp-like [user@]host:path; it rejects everything else, in particular
// strings starting with '-', control characters, local paths and the ext::
// style remote helpers.
func ValidateURL(raw string) error {
	switch {
	case raw == "":
		return fmt.Errorf("%w: empty", ErrInvalidURL)
	case strings.HasPrefix(raw, "-"):
		return fmt.Errorf("%w: %q starts with '-'", ErrInvalidURL, Redact(raw))
	case len(raw) > 2048:
		return fmt.Errorf("%w: %d bytes; the limit is 2048", ErrInvalidURL, len(raw))
	}
	for _, r := range raw {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: contains a control character", ErrInvalidURL)
		}
	}
	if i := strings.Index(raw, "://"); i > 0 {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidURL, err)
		}
		switch strings.ToLower(u.Scheme) {
		case "file":
			if u.Path == "" || u.Path == "/" {
				return fmt.Errorf("%w: %q has no path", ErrInvalidURL, raw)
			}
			if u.Host != "" && u.Host != "localhost" {
				return fmt.Errorf("%w: file URL %q names a host; use file:///path", ErrInvalidURL, raw)
			}
		case "http", "https", "git", "ssh":
			if u.Host == "" || strings.HasPrefix(u.Host, "-") || strings.HasPrefix(u.User.Username(), "-") {
				return fmt.Errorf("%w: %q has no valid host", ErrInvalidURL, Redact(raw))
			}
		default:
			return fmt.Errorf("%w: scheme %q is not supported (use file, http, https, git or ssh)", ErrInvalidURL, u.Scheme)
		}
		return nil
	}
	if strings.Contains(raw, "::") {
		return fmt.Errorf("%w: %q: remote helper syntax is not supported", ErrInvalidURL, raw)
	}
	if scpRe.MatchString(raw) {
		return nil
	}
	return fmt.Errorf("%w: %q (use file://, http(s)://, git://, ssh:// or user@host:path)", ErrInvalidURL, raw)
}

// ValidateRef accepts "" (the default branch), HEAD, a commit id, or a
// branch or tag name that git could accept.
func ValidateRef(ref string) error {
	switch {
	case ref == "" || ref == "HEAD" || IsCommit(ref):
		return nil
	case len(ref) > 1024:
		return fmt.Errorf("%w: %d bytes; the limit is 1024", ErrInvalidRef, len(ref))
	case strings.HasPrefix(ref, "-"):
		return fmt.Errorf("%w: %q starts with '-'", ErrInvalidRef, ref)
	case strings.HasPrefix(ref, "/") || strings.HasSuffix(ref, "/") || strings.HasSuffix(ref, ".") ||
		strings.HasSuffix(ref, ".lock") || strings.Contains(ref, "..") || strings.Contains(ref, "//") ||
		strings.Contains(ref, "@{") || ref == "@":
		return fmt.Errorf("%w: %q", ErrInvalidRef, ref)
	}
	for _, r := range ref {
		if r <= 0x20 || r == 0x7f || strings.ContainsRune("~^:?*[\\", r) {
			return fmt.Errorf("%w: %q contains %q", ErrInvalidRef, ref, r)
		}
	}
	return nil
}

// Redact hides the secrets of a URL's user info for logs and error
// messages: the password (https://user:xxxxx@host), and the user name of
// http(s):// and git:// URLs, which is often a token by itself
// (https://xxxxx@host). A URL that does not parse loses its user info.
func Redact(raw string) string {
	if !strings.Contains(raw, "://") {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return stripUserInfo(raw)
	}
	if u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else if s := strings.ToLower(u.Scheme); s != "ssh" {
		u.User = url.User("xxxxx")
	}
	return u.String()
}

// Resolve asks the repository (git ls-remote) which commit ref names. A
// full commit id is returned as is without asking. "" and "HEAD" mean the
// remote's default branch. A name that is both a branch and a tag resolves
// to the branch; "refs/heads/X" and "refs/tags/X" pick one explicitly.
// Annotated tags resolve to the commit they point to.
func Resolve(ctx context.Context, rawURL, ref string) (Resolved, error) {
	if err := ValidateURL(rawURL); err != nil {
		return Resolved{}, err
	}
	if err := ValidateRef(ref); err != nil {
		return Resolved{}, err
	}
	if IsCommit(ref) {
		return Resolved{Commit: strings.ToLower(ref)}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, ResolveTimeout)
	defer cancel()

	if ref == "" || ref == "HEAD" {
		out, err := lsRemote(ctx, rawURL, true, "HEAD")
		if err != nil {
			return Resolved{}, err
		}
		var res Resolved
		for _, line := range strings.Split(out, "\n") {
			if target, ok := strings.CutPrefix(line, "ref: "); ok {
				target, _, _ = strings.Cut(target, "\t")
				res.Branch = strings.TrimPrefix(target, "refs/heads/")
				continue
			}
			sha, name, ok := strings.Cut(line, "\t")
			if ok && name == "HEAD" && IsCommit(sha) {
				res.Commit = sha
			}
		}
		if res.Commit == "" {
			return Resolved{}, fmt.Errorf("%w: %s has no HEAD (is it empty?)", ErrRefNotFound, Redact(rawURL))
		}
		return res, nil
	}

	var branchRef, tagRef string
	switch {
	case strings.HasPrefix(ref, "refs/heads/"):
		branchRef = ref
	case strings.HasPrefix(ref, "refs/tags/"):
		tagRef = ref
	case strings.HasPrefix(ref, "refs/"):
		// Another namespace (refs/pull/1/head...): a commit without a branch or tag.
		out, err := lsRemote(ctx, rawURL, false, ref)
		if err != nil {
			return Resolved{}, err
		}
		if sha := parseRefs(out)[ref]; sha != "" {
			return Resolved{Commit: sha}, nil
		}
		return Resolved{}, notFound(rawURL, ref)
	default:
		branchRef, tagRef = "refs/heads/"+ref, "refs/tags/"+ref
	}
	var patterns []string
	if branchRef != "" {
		patterns = append(patterns, branchRef)
	}
	if tagRef != "" {
		patterns = append(patterns, tagRef, tagRef+"^{}")
	}
	out, err := lsRemote(ctx, rawURL, false, patterns...)
	if err != nil {
		return Resolved{}, err
	}
	refs := parseRefs(out)
	if sha := refs[branchRef]; branchRef != "" && sha != "" {
		return Resolved{Commit: sha, Branch: strings.TrimPrefix(branchRef, "refs/heads/")}, nil
	}
	if tagRef != "" {
		sha := refs[tagRef+"^{}"] // an annotated tag, peeled to its commit
		if sha == "" {
			sha = refs[tagRef]
		}
		if sha != "" {
			return Resolved{Commit: sha, Tag: strings.TrimPrefix(tagRef, "refs/tags/")}, nil
		}
	}
	return Resolved{}, notFound(rawURL, ref)
}

func notFound(rawURL, ref string) error {
	msg := fmt.Sprintf("%s has no branch or tag %q", Redact(rawURL), ref)
	if shortHexRe.MatchString(ref) {
		msg += " (abbreviated commit ids cannot be resolved remotely; give all 40 hex digits)"
	}
	return fmt.Errorf("%w: %s", ErrRefNotFound, msg)
}

// parseRefs maps ref names to object ids from ls-remote output.
func parseRefs(out string) map[string]string {
	refs := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		sha, name, ok := strings.Cut(line, "\t")
		if ok && IsCommit(sha) {
			refs[name] = sha
		}
	}
	return refs
}

// lsRemote runs git ls-remote [--symref] -- URL PATTERNS...
func lsRemote(ctx context.Context, rawURL string, symref bool, patterns ...string) (string, error) {
	args := []string{"ls-remote"}
	if symref {
		args = append(args, "--symref")
	}
	args = append(append(args, "--", rawURL), patterns...)
	var stdout bytes.Buffer
	if err := run(ctx, "", &stdout, nil, args...); err != nil {
		return "", unreachable(ctx, rawURL, err)
	}
	return stdout.String(), nil
}

func unreachable(ctx context.Context, rawURL string, err error) error {
	if errors.Is(err, ErrNoGit) {
		return err
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: %s: no answer in time: %v", ErrUnreachable, Redact(rawURL), ctx.Err())
		}
		return fmt.Errorf("%s: %w", Redact(rawURL), ctx.Err())
	}
	return fmt.Errorf("%w: %s: %v", ErrUnreachable, Redact(rawURL), err)
}

// CheckoutTo fetches commit from the repository at rawURL into dir (created
// if needed; a git repository is initialized there) and checks it out
// detached, writing git's output (and a line per step) to log (nil: none).
func CheckoutTo(ctx context.Context, dir, rawURL, commit string, log io.Writer) error {
	if err := ValidateURL(rawURL); err != nil {
		return err
	}
	if !IsCommit(commit) {
		return fmt.Errorf("%w: %q is not a full commit id", ErrInvalidRef, commit)
	}
	if log == nil {
		log = io.Discard
	}
	commit = strings.ToLower(commit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create checkout directory: %w", err)
	}
	if err := run(ctx, dir, log, log, "-c", "init.defaultBranch=kiln", "init", "-q"); err != nil {
		return fmt.Errorf("git init %s: %w", dir, err)
	}
	fmt.Fprintf(log, "kiln: fetching %s from %s\n", commit, Redact(rawURL))
	if err := fetchCommit(ctx, dir, rawURL, commit, log); err != nil {
		return err
	}
	if err := run(ctx, dir, log, log, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit, "--"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: commit %s of %s: checkout: %v", ErrRefNotFound, commit, Redact(rawURL), err)
	}
	var head bytes.Buffer
	if err := run(ctx, dir, &head, log, "rev-parse", "--verify", "HEAD"); err != nil {
		return fmt.Errorf("git rev-parse HEAD: %w", err)
	}
	if got := strings.TrimSpace(head.String()); got != commit {
		return fmt.Errorf("checked out %s, want %s", got, commit)
	}
	fmt.Fprintf(log, "kiln: checked out %s\n", commit)
	if err := fetchTags(ctx, dir, rawURL, commit, log); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Tags are a convenience (git describe); the checkout stands.
		fmt.Fprintf(log, "kiln: warning: tags not fetched: %v\n", err)
	}
	return nil
}

// deepenSteps are the history depths a shallow checkout is deepened to,
// in turn, looking for the newest tag in it; after the last the whole
// history is fetched.
var deepenSteps = []int{50, 500, 5000}

// maxTagRefspecs bounds the refspecs of one git fetch of tags.
const maxTagRefspecs = 500

// fetchTags makes `git describe --tags` work in a shallow checkout: it
// deepens the history of commit until it holds a commit some tag of the
// repository points at (or the whole history), then fetches every tag
// that points into the history it now holds. A repository without tags
// costs one ls-remote; a full (non-shallow) fetch already has the tags.
func fetchTags(ctx context.Context, dir, rawURL, commit string, log io.Writer) error {
	var shallow bytes.Buffer
	if err := run(ctx, dir, &shallow, io.Discard, "rev-parse", "--is-shallow-repository"); err != nil {
		return fmt.Errorf("git rev-parse: %w", err)
	}
	if strings.TrimSpace(shallow.String()) != "true" {
		return nil // the fallback fetch took every tag
	}
	out, err := lsRemote(ctx, rawURL, false, "refs/tags/*")
	if err != nil {
		return err
	}
	// Tag name → the commit it points at (annotated tags peeled).
	tags := map[string]string{}
	for name, sha := range parseRefs(out) {
		if base, ok := strings.CutSuffix(name, "^{}"); ok {
			tags[base] = sha
		} else if _, seen := tags[name]; !seen {
			tags[name] = sha
		}
	}
	if len(tags) == 0 {
		return nil
	}
	held := func() ([]string, error) {
		var in strings.Builder
		names := make([]string, 0, len(tags))
		for name, sha := range tags {
			names = append(names, name)
			in.WriteString(sha + "^{commit}\n")
		}
		var res bytes.Buffer
		cmd := command(ctx, dir, "cat-file", "--batch-check")
		cmd.Stdin = strings.NewReader(in.String())
		cmd.Stdout = &res
		if err := runCmd(cmd); err != nil {
			return nil, fmt.Errorf("git cat-file: %w", err)
		}
		var have []string
		for i, line := range strings.Split(strings.TrimSuffix(res.String(), "\n"), "\n") {
			if i < len(names) && !strings.HasSuffix(line, " missing") {
				have = append(have, names[i])
			}
		}
		return have, nil
	}
	have, err := held()
	if err != nil {
		return err
	}
	for i := 0; len(have) == 0 && i <= len(deepenSteps); i++ {
		args := []string{"fetch", "-q", "--no-tags", "--unshallow", "--", rawURL, commit}
		if i < len(deepenSteps) {
			args[3] = fmt.Sprintf("--depth=%d", deepenSteps[i])
		}
		if err := run(ctx, dir, log, log, args...); err != nil {
			return fmt.Errorf("deepen history: %w", err)
		}
		if have, err = held(); err != nil {
			return err
		}
	}
	if len(have) == 0 {
		return nil // no tag points into this commit's history
	}
	slices.Sort(have)
	for start := 0; start < len(have); start += maxTagRefspecs {
		args := []string{"fetch", "-q", "--no-tags", "--", rawURL}
		for _, name := range have[start:min(start+maxTagRefspecs, len(have))] {
			args = append(args, "+"+name+":"+name)
		}
		if err := run(ctx, dir, log, log, args...); err != nil {
			return fmt.Errorf("fetch tags: %w", err)
		}
	}
	fmt.Fprintf(log, "kiln: fetched %d tag(s) in the history of %.12s\n", len(have), commit)
	return nil
}

// fetchCommit brings commit into the repository at dir: a shallow fetch of
// exactly that commit, else (the server refuses to serve an unadvertised
// object) every branch and tag.
func fetchCommit(ctx context.Context, dir, rawURL, commit string, log io.Writer) error {
	shallowErr := run(ctx, dir, log, log, "fetch", "--no-tags", "--depth", "1", "--", rawURL, commit)
	if shallowErr == nil {
		return nil
	}
	if ctx.Err() != nil {
		return unreachable(ctx, rawURL, shallowErr)
	}
	fmt.Fprintf(log, "kiln: shallow fetch of %s failed (%v); fetching all branches and tags\n", commit, shallowErr)
	if err := run(ctx, dir, log, log, "fetch", "--no-tags", "--", rawURL,
		"+refs/heads/*:refs/remotes/kiln/*", "+refs/tags/*:refs/tags/*"); err != nil {
		return unreachable(ctx, rawURL, err)
	}
	if err := run(ctx, dir, io.Discard, io.Discard, "cat-file", "-e", commit+"^{commit}"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %s has no commit %s", ErrRefNotFound, Redact(rawURL), commit)
	}
	return nil
}

// ReadFile returns the file at path (slash-separated, relative to the
// repository root) in commit, fetching the commit into a temporary
// repository that is removed afterwards. Files above maxBytes fail with
// ErrFileTooLarge; a missing path (or a directory) with ErrFileNotFound.
func ReadFile(ctx context.Context, rawURL, commit, filePath string, maxBytes int64) ([]byte, error) {
	if err := ValidateURL(rawURL); err != nil {
		return nil, err
	}
	if !IsCommit(commit) {
		return nil, fmt.Errorf("%w: %q is not a full commit id", ErrInvalidRef, commit)
	}
	clean, err := CleanPath(filePath)
	if err != nil {
		return nil, err
	}
	commit = strings.ToLower(commit)
	ctx, cancel := context.WithTimeout(ctx, ReadFileTimeout)
	defer cancel()
	tmp, err := os.MkdirTemp("", "kiln-gitsrc-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var log bytes.Buffer
	if err := run(ctx, tmp, &log, &log, "-c", "init.defaultBranch=kiln", "init", "-q", "--bare"); err != nil {
		return nil, fmt.Errorf("git init: %w", err)
	}
	if err := fetchCommit(ctx, tmp, rawURL, commit, &log); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	cmd := command(ctx, tmp, "cat-file", "--batch-check")
	cmd.Stdin = strings.NewReader(commit + ":" + clean + "\n")
	cmd.Stdout = &out
	if err := runCmd(cmd); err != nil {
		return nil, fmt.Errorf("git cat-file: %w", err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 3 || fields[2] == "missing" || fields[1] != "blob" {
		return nil, fmt.Errorf("%w: %s at %.12s", ErrFileNotFound, clean, commit)
	}
	size, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("git cat-file: size %q: %w", fields[2], err)
	}
	if maxBytes > 0 && size > maxBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes; the limit is %d", ErrFileTooLarge, clean, size, maxBytes)
	}
	var blob bytes.Buffer
	if err := run(ctx, tmp, &blob, nil, "cat-file", "blob", fields[0]); err != nil {
		return nil, fmt.Errorf("git cat-file blob: %w", err)
	}
	return blob.Bytes(), nil
}

// CleanPath checks a repository-relative file path and returns it cleaned.
func CleanPath(p string) (string, error) {
	c := path.Clean(strings.TrimPrefix(p, "./"))
	switch {
	case p == "" || c == "." || c == "":
		return "", fmt.Errorf("%w: empty path", ErrFileNotFound)
	case path.IsAbs(c) || c == ".." || strings.HasPrefix(c, "../"):
		return "", fmt.Errorf("%w: %q is not inside the repository", ErrFileNotFound, p)
	case strings.HasPrefix(c, "-") || strings.ContainsAny(c, "\x00\n\r"):
		return "", fmt.Errorf("%w: %q is not a valid path", ErrFileNotFound, p)
	}
	return c, nil
}

// scrubbed are variables that would point git at another repository.
var scrubbed = []string{"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
	"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_COMMON_DIR", "GIT_PREFIX"}

// environ is the environment of every git command.
func environ() []string {
	var env []string
	have := map[string]bool{}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		skip := k == "GIT_TERMINAL_PROMPT" || k == "LC_ALL"
		for _, s := range scrubbed {
			skip = skip || k == s
		}
		if !skip {
			env = append(env, kv)
			have[k] = true
		}
	}
	env = append(env, "GIT_TERMINAL_PROMPT=0", "GCM_INTERACTIVE=never", "LC_ALL=C")
	if !have["GIT_SSH_COMMAND"] && !have["GIT_SSH"] {
		env = append(env, "GIT_SSH_COMMAND=ssh -o BatchMode=yes")
	}
	if !have["GIT_ALLOW_PROTOCOL"] {
		env = append(env, "GIT_ALLOW_PROTOCOL=file:git:http:https:ssh")
	}
	return env
}

// command returns a git command in its own process group, killed (the
// whole group) when ctx ends.
func command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs git with args; stdout and stderr may be nil. The error carries
// the end of stderr.
func run(ctx context.Context, dir string, stdout, stderr io.Writer, args ...string) error {
	cmd := command(ctx, dir, args...)
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	return runCmd(cmd)
}

// runCmd runs cmd, keeping the last lines of its stderr for the error.
func runCmd(cmd *exec.Cmd) error {
	tail := &tailWriter{max: 2048}
	if cmd.Stderr == nil {
		cmd.Stderr = tail
	} else {
		cmd.Stderr = io.MultiWriter(tail, safeWriter{cmd.Stderr})
	}
	if cmd.Stdout != nil {
		cmd.Stdout = safeWriter{cmd.Stdout}
	}
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(err, exec.ErrNotFound) {
		return ErrNoGit
	}
	if msg := tail.summary(); msg != "" {
		return fmt.Errorf("git %s: %v: %s", cmd.Args[1], err, msg)
	}
	return fmt.Errorf("git %s: %w", cmd.Args[1], err)
}

// safeWriter never fails, so a log writer that stops accepting output
// (a dropped job) does not fail the git command.
type safeWriter struct{ w io.Writer }

func (s safeWriter) Write(p []byte) (int, error) {
	_, _ = s.w.Write(p)
	return len(p), nil
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

// summary joins the non-empty lines of what was written, "fatal:" and
// "error:" lines only when there are any.
func (t *tailWriter) summary() string {
	var all, important []string
	sc := bufio.NewScanner(bytes.NewReader(t.buf))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		all = append(all, line)
		if strings.HasPrefix(line, "fatal:") || strings.HasPrefix(line, "error:") {
			important = append(important, line)
		}
	}
	if len(important) > 0 {
		all = important
	}
	return strings.Join(all, "; ")
}
