package gitsrc

import (
	"context"
	"errors"
	"fmt"
)

// Guard is how a coordinator reaches repositories on behalf of clients:
// every URL passes the policy first, and git's own messages (its stderr,
// which can echo what a probed server answered) go to Detail only, never
// into the error a client sees.
type Guard struct {
	// Policy decides which URLs may be contacted (nil: every valid URL).
	Policy *Policy
	// Detail receives the full error of a failure whose message was
	// replaced (for the coordinator's log); nil drops it.
	Detail func(redactedURL string, err error)
}

// Resolve is gitsrc.Resolve behind the policy, with quiet errors.
func (g *Guard) Resolve(ctx context.Context, rawURL, ref string) (Resolved, error) {
	if err := g.policy().Check(ctx, rawURL); err != nil {
		return Resolved{}, err
	}
	r, err := Resolve(ctx, rawURL, ref)
	return r, g.quiet(ctx, rawURL, err)
}

// ReadFile is gitsrc.ReadFile behind the policy, with quiet errors.
func (g *Guard) ReadFile(ctx context.Context, rawURL, commit, filePath string, maxBytes int64) ([]byte, error) {
	if err := g.policy().Check(ctx, rawURL); err != nil {
		return nil, err
	}
	data, err := ReadFile(ctx, rawURL, commit, filePath, maxBytes)
	return data, g.quiet(ctx, rawURL, err)
}

func (g *Guard) policy() *Policy {
	if g == nil {
		return nil
	}
	return g.Policy
}

// quiet keeps errors whose text is Kiln's own (bad URL or ref, missing
// ref or file, size, no git, the caller's context) and replaces the rest,
// which carry git's output, with a fixed message of the same kind.
func (g *Guard) quiet(ctx context.Context, rawURL string, err error) error {
	switch {
	case err == nil,
		errors.Is(err, ErrInvalidURL), errors.Is(err, ErrInvalidRef), errors.Is(err, ErrRefNotFound),
		errors.Is(err, ErrFileNotFound), errors.Is(err, ErrFileTooLarge), errors.Is(err, ErrNoGit):
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", Redact(rawURL), ctx.Err())
	}
	if g != nil && g.Detail != nil {
		g.Detail(Redact(rawURL), err)
	}
	return fmt.Errorf("%w: %s (git's message is in the coordinator's log)", ErrUnreachable, Redact(rawURL))
}
