package archive

import (
	"bufio"
	"io"
	"regexp"
	"strings"
)

// Ignore is a list of .kilnignore patterns. The syntax is a subset of
// .gitignore: one pattern per line; blank lines and lines starting with '#'
// are skipped; '*' matches within a path component, '?' one character other
// than '/', '**' any number of components ("**/x", "a/**", "a/**/b"); a
// trailing '/' matches only directories; a pattern with a '/' elsewhere (a
// leading '/' included) is anchored at the packed directory, one without
// matches the name at any depth; a leading '!' re-includes what an earlier
// pattern excluded (not below an excluded directory). The last matching
// pattern wins. A directory that is excluded excludes everything below it.
type Ignore struct {
	rules []rule
}

type rule struct {
	re      *regexp.Regexp
	dirOnly bool
	negate  bool
}

// ParseIgnore reads patterns from r.
func ParseIgnore(r io.Reader) (*Ignore, error) {
	ig := &Ignore{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var ru rule
		if strings.HasPrefix(line, "!") {
			ru.negate = true
			line = line[1:]
		} else if strings.HasPrefix(line, `\`) {
			line = line[1:] // \# and \! escape the first character
		}
		if strings.HasSuffix(line, "/") {
			ru.dirOnly = true
			line = strings.TrimRight(line, "/")
		}
		if line == "" {
			continue
		}
		anchored := strings.Contains(line, "/")
		line = strings.TrimPrefix(line, "/")
		expr := globRegexp(line)
		if anchored {
			expr = "^" + expr + "$"
		} else {
			expr = "^(?:.*/)?" + expr + "$"
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, err
		}
		ru.re = re
		ig.rules = append(ig.rules, ru)
	}
	return ig, sc.Err()
}

// globRegexp translates one glob pattern into a regular expression body.
func globRegexp(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '*' && strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case c == '*' && strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '[':
			if j := strings.IndexByte(p[i+1:], ']'); j > 0 {
				class := p[i+1 : i+1+j]
				if strings.HasPrefix(class, "!") {
					class = "^" + class[1:]
				}
				b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
				i += j + 1
			} else {
				b.WriteString(regexp.QuoteMeta("["))
			}
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteString(regexp.QuoteMeta(string(p[i])))
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	return b.String()
}

// match reports whether the rules exclude the slash-separated relative
// path itself (not looking at its parents).
func (ig *Ignore) match(rel string, isDir bool) bool {
	excluded := false
	for _, r := range ig.rules {
		if r.dirOnly && !isDir {
			continue
		}
		if r.re.MatchString(rel) {
			excluded = !r.negate
		}
	}
	return excluded
}

// Excluded reports whether rel (slash-separated, relative to the packed
// directory) is excluded, itself or through one of its parent directories.
func (ig *Ignore) Excluded(rel string, isDir bool) bool {
	if ig == nil || len(ig.rules) == 0 {
		return false
	}
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		if ig.match(strings.Join(parts[:i], "/"), true) {
			return true
		}
	}
	return ig.match(rel, isDir)
}
