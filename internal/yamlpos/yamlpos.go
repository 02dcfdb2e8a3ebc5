// Package yamlpos reads YAML files written by users with the yaml.v3 node
// API, keeping every node's line and column so that callers can report
// problems at their position in the file.
//
// It holds the plumbing shared by Kiln's parsers of outside input (pipeline
// files, buildspecs): decoding exactly one document without ever panicking,
// turning the library's syntax errors into a line and a message, checking
// the keys of a mapping against a list of known keys with did-you-mean
// hints, and describing nodes in messages. The parsers keep their own error
// types and wording; this package only calls back with positions and text.
package yamlpos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// yamlLineRE matches the library's syntax errors, which carry a line but
// never a column.
var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Decode decodes data, which should hold one YAML document, and returns the
// root node of its first document. It returns nil when data holds no
// document, when the document is null (empty, or only "~"), or when the
// first document does not parse.
//
// Problems go to the callbacks, in file order:
//   - onSyntax gets a syntax error: its 1-based line (0 when the library
//     gives none) and the library's message without its "yaml: line N: "
//     prefix. A panic inside the library is reported the same way: a
//     malformed file never crashes the caller.
//   - onExtraDoc gets the document node of a second document (after a
//     "---"); the root of the first is still returned. Documents after the
//     second are not read.
func Decode(data []byte, onSyntax func(line int, msg string), onExtraDoc func(doc *yaml.Node)) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := decode(dec, &doc); err != nil {
		if !errors.Is(err, io.EOF) {
			syntaxError(err, onSyntax)
		}
		return nil
	}
	var extra yaml.Node
	switch err := decode(dec, &extra); {
	case err == nil:
		onExtraDoc(&extra)
	case !errors.Is(err, io.EOF):
		syntaxError(err, onSyntax)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if IsNull(root) {
		return nil
	}
	return root
}

// decode runs dec.Decode, turning a panic inside the YAML library into an
// error.
func decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return dec.Decode(n)
}

// syntaxError splits a decoding error into its line and message for
// onSyntax.
func syntaxError(err error, onSyntax func(line int, msg string)) {
	msg := err.Error()
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	onSyntax(line, msg)
}

// Field is one key of a mapping with its value.
type Field struct {
	Key, Val *yaml.Node
}

// Keys describes, for Fields, the keys a mapping may hold and how to word
// problems with the others.
type Keys struct {
	// What names the mapping in messages: "the pipeline", "step", "env".
	What string
	// Known lists the keys the mapping may hold, in the order hints list
	// them.
	Known []string
	// Fold is passed to Closest for did-you-mean hints; nil for none.
	Fold func(string) string
	// NonScalarHint is the hint for a key that is not a scalar (a mapping
	// or list written as a key); "" for none.
	NonScalarHint string
}

// Fields returns the fields of the mapping n whose keys are in k.Known, by
// key. Every other key is left out and reported through errorf at the key
// node, with a hint ("" when there is nothing useful to say):
//   - a key that is not a scalar ("<what> has a key that is a list"),
//   - a merge key (<<), which is not supported,
//   - a repeated key ("duplicate key ... (first at line N)"),
//   - an unknown key, with a did-you-mean hint when a known key is close
//     (see Closest), else the list of known keys.
//
// n must be a mapping node: the caller checks its kind first (and resolves
// aliases or accepts null as it sees fit). errorf has the shape of the
// parsers' own errorf methods, so they can be passed as they are.
func Fields(n *yaml.Node, k Keys, errorf func(n *yaml.Node, hint, format string, args ...any)) map[string]Field {
	out := make(map[string]Field, len(n.Content)/2)
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Kind != yaml.ScalarNode {
			errorf(key, k.NonScalarHint, "%s has a key that is %s", k.What, KindName(key))
			continue
		}
		if key.Tag == "!!merge" {
			errorf(key, "repeat the values instead", "merge keys (<<) are not supported")
			continue
		}
		if first, dup := seen[key.Value]; dup {
			errorf(key, "", "duplicate key %q in %s (first at line %d)", key.Value, k.What, first.Line)
			continue
		}
		seen[key.Value] = key
		if !slices.Contains(k.Known, key.Value) {
			hint := "known keys: " + strings.Join(k.Known, ", ")
			if c := Closest(key.Value, k.Known, k.Fold); c != "" {
				hint = fmt.Sprintf("did you mean %q?", c)
			}
			errorf(key, hint, "unknown key %q in %s", key.Value, k.What)
			continue
		}
		out[key.Value] = Field{Key: key, Val: val}
	}
	return out
}

// IsNull reports whether n is a null scalar: ~, null, or nothing at all.
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// KindName describes a node for messages: "a mapping", "a list", "an
// integer", "null", ...
func KindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return "a string"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!null":
			return "null"
		}
		return "a scalar"
	}
	return "an unknown node"
}

// Closest returns the candidate nearest to s when it is close enough to be
// a likely typo of it, else "". Close enough is at most 2 edits (insert,
// delete or replace a character), or 1 when s is 3 bytes or shorter; ties
// go to the first candidate.
//
// s is compared in lower case, the candidates as written (they are
// expected in lower case). fold, when not nil, then maps both sides, so
// that spellings it makes equal count as the same (a buildspec treats '-'
// and '_' alike).
func Closest(s string, candidates []string, fold func(string) string) string {
	if fold == nil {
		fold = func(x string) string { return x }
	}
	limit := 2
	if len(s) <= 3 {
		limit = 1
	}
	a := fold(strings.ToLower(s))
	best, bestD := "", -1
	for _, c := range candidates {
		b := fold(c)
		// Strings whose lengths differ by more than limit cannot be close:
		// skip them, and the quadratic distance, as a long s would make it.
		if diff := utf8.RuneCountInString(a) - utf8.RuneCountInString(b); diff > limit || -diff > limit {
			continue
		}
		d := levenshtein(a, b)
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	if bestD >= 0 && bestD <= limit {
		return best
	}
	return ""
}

// levenshtein returns the edit distance between a and b, in runes.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
