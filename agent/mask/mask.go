// Package mask hides secret values in a job's output stream. A Writer
// replaces every occurrence of a secret's value, its base64 forms (standard
// and URL alphabets, with and without padding), its URL-encoded forms and
// each line of a multi-line value (lines of at least MinLineBytes) with
// "***", also when an occurrence is split across writes: bytes that may be
// the start of a secret are held back until the next write shows whether
// they are, or until Flush. The output is otherwise byte-for-byte the input.
package mask

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Replacement is what a secret becomes in the log.
const Replacement = "***"

// MinLineBytes is the shortest line of a multi-line secret masked on its
// own: shorter lines (a lone "}" of a JSON key file) would mask ordinary
// output everywhere. The whole value is always masked.
const MinLineBytes = 4

// Patterns returns the byte strings a Writer masks for the given secret
// values, longest first, without duplicates or empty strings.
func Patterns(values []string) [][]byte {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, v := range values {
		if v == "" {
			continue
		}
		add(v)
		add(base64.StdEncoding.EncodeToString([]byte(v)))
		add(base64.RawStdEncoding.EncodeToString([]byte(v)))
		add(base64.URLEncoding.EncodeToString([]byte(v)))
		add(base64.RawURLEncoding.EncodeToString([]byte(v)))
		add(url.QueryEscape(v))
		add(url.PathEscape(v))
		if strings.ContainsAny(v, "\r\n") {
			for _, line := range strings.FieldsFunc(v, func(r rune) bool { return r == '\n' || r == '\r' }) {
				if len(line) >= MinLineBytes {
					add(line)
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	b := make([][]byte, len(out))
	for i, s := range out {
		b[i] = []byte(s)
	}
	return b
}

// Writer masks secrets on their way to an underlying writer.
type Writer struct {
	mu       sync.Mutex
	w        io.Writer
	patterns [][]byte // longest first
	// byFirst lists the patterns by their first byte (longest first), so
	// a position is compared only with the patterns that may start there.
	byFirst [256][][]byte
	held    []byte
}

// New returns a Writer to w masking the given secret values. With no
// values it still works (and passes everything through).
func New(w io.Writer, values []string) *Writer {
	m := &Writer{w: w, patterns: Patterns(values)}
	for _, p := range m.patterns {
		m.byFirst[p[0]] = append(m.byFirst[p[0]], p)
	}
	return m
}

// Write masks p (with the bytes held from earlier writes) and writes what
// is settled. It reports len(p) written unless the underlying writer
// fails.
func (m *Writer) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	buf := append(m.held, p...)
	out, held := m.scan(buf, false)
	m.held = append(m.held[:0:0], held...)
	if len(out) > 0 {
		if _, err := m.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes the bytes held back, masked as the end of the stream: a
// secret that did not complete is not one.
func (m *Writer) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.held) == 0 {
		return nil
	}
	out, _ := m.scan(m.held, true)
	m.held = nil
	_, err := m.w.Write(out)
	return err
}

// scan returns the masked, settled output of buf and the tail to hold: it
// starts at the first position where a pattern begins but buf ends before
// the pattern could be told apart. A longer pattern that may still
// complete wins over a shorter one complete at the same position (the raw
// base64 form is a prefix of the padded one). With final, nothing is held.
func (m *Writer) scan(buf []byte, final bool) (out, held []byte) {
	if len(m.patterns) == 0 {
		return buf, nil
	}
	out = make([]byte, 0, len(buf))
	start := 0 // first byte not yet copied to out
	for i := 0; i < len(buf); {
		cands := m.byFirst[buf[i]]
		if cands == nil {
			i++
			continue
		}
		rest := buf[i:]
		matched := 0
		partial := false
		for _, p := range cands {
			if len(rest) >= len(p) {
				if bytes.HasPrefix(rest, p) {
					matched = len(p)
					break // longest complete match (patterns are longest first)
				}
			} else if !final && bytes.HasPrefix(p, rest) {
				partial = true // a longer pattern may still complete here
				break
			}
		}
		switch {
		case partial:
			out = append(out, buf[start:i]...)
			return out, buf[i:]
		case matched > 0:
			out = append(out, buf[start:i]...)
			out = append(out, Replacement...)
			i += matched
			start = i
		default:
			i++
		}
	}
	return append(out, buf[start:]...), nil
}
