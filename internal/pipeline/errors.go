package pipeline

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem found in a pipeline file, with its position.
// Line and Column are 1-based; 0 means unknown (the position is then left
// out of the message).
type Error struct {
	File   string
	Line   int
	Column int
	Msg    string
	// Hint suggests a fix; empty when there is nothing useful to say.
	Hint string
}

// Error formats the problem as "file:line:col: msg (hint: ...)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString(" (hint: ")
		b.WriteString(e.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Errors is every problem found in a pipeline file, in file order. Parse
// returns it (never an empty one) when the file is invalid.
type Errors struct {
	List []*Error
}

// Error returns one line per problem.
func (e *Errors) Error() string {
	lines := make([]string, len(e.List))
	for i, x := range e.List {
		lines[i] = x.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the individual problems to errors.Is and errors.As.
func (e *Errors) Unwrap() []error {
	out := make([]error, len(e.List))
	for i, x := range e.List {
		out[i] = x
	}
	return out
}

// sort orders the problems by position; problems without a position first.
func (e *Errors) sort() {
	sort.SliceStable(e.List, func(i, j int) bool {
		a, b := e.List[i], e.List[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}
