// Package glob matches slash-separated relative paths against the patterns
// build files use for artifacts and test reports: '*', '?', '[...]' within a
// path component and '**' across components. The agent uses it to collect
// files, the coordinator to select artifacts passed between steps.
package glob

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Glob is a compiled artifact pattern: slash-separated, relative to the
// workspace. '*' matches any run of characters within a path component
// (dot files included), '?' one character, '[...]' a class ('[!...]' or
// '[^...]' negated; '\' escapes), and a '**' component any number of
// components (zero included). A trailing '/' means everything below the
// directory ("dir/" = "dir/**").
type Glob struct {
	src  string
	segs []string
}

// Compile checks and compiles an artifact pattern. Absolute patterns
// and ".." components are refused.
func Compile(p string) (Glob, error) {
	src := p
	if p == "" {
		return Glob{}, errors.New("empty artifact pattern")
	}
	if strings.HasPrefix(p, "/") {
		return Glob{}, fmt.Errorf("artifact pattern %q: must be relative to the workspace", src)
	}
	if strings.HasSuffix(p, "/") {
		p += "**"
	}
	var segs []string
	for _, s := range strings.Split(p, "/") {
		switch {
		case s == "" || s == ".":
			continue
		case s == "..":
			return Glob{}, fmt.Errorf("artifact pattern %q: \"..\" is not allowed", src)
		case s == "**":
			if len(segs) > 0 && segs[len(segs)-1] == "**" {
				continue
			}
		default:
			for strings.Contains(s, "**") {
				s = strings.ReplaceAll(s, "**", "*")
			}
			s = negateClasses(s)
			if _, err := path.Match(s, ""); err != nil {
				return Glob{}, fmt.Errorf("artifact pattern %q: %w", src, err)
			}
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		return Glob{}, fmt.Errorf("artifact pattern %q: names the workspace itself", src)
	}
	return Glob{src: src, segs: segs}, nil
}

// negateClasses turns the shell's "[!" into path.Match's "[^".
func negateClasses(s string) string {
	b := []byte(s)
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '\\':
			i++
		case b[i] == '[' && i+1 < len(b) && b[i+1] == '!':
			b[i+1] = '^'
		}
	}
	return string(b)
}

// String returns the pattern as written.
func (g Glob) String() string { return g.src }

// Match reports whether the slash-separated relative path matches.
func (g Glob) Match(rel string) bool {
	return matchSegs(g.segs, strings.Split(rel, "/"))
}

// MayContain reports whether files below the directory dir ("" for the
// workspace) can match.
func (g Glob) MayContain(dir string) bool {
	if dir == "" {
		return true
	}
	return prefixSegs(g.segs, strings.Split(dir, "/"))
}

func matchSegs(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchSegs(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

func prefixSegs(pat, dir []string) bool {
	for len(dir) > 0 {
		if len(pat) == 0 {
			return false
		}
		if pat[0] == "**" {
			return true
		}
		if ok, _ := path.Match(pat[0], dir[0]); !ok {
			return false
		}
		pat, dir = pat[1:], dir[1:]
	}
	return len(pat) > 0
}
