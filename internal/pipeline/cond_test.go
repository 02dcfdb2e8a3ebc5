package pipeline

import (
	"errors"
	"strings"
	"testing"
)

func TestConditionEval(t *testing.T) {
	ctx := Context{Branch: "main", Tag: "v1.2.3", Event: "push", Env: map[string]string{"DEPLOY": "yes", "EMPTY": ""}}
	tests := []struct {
		expr string
		want bool
	}{
		{`branch == "main"`, true},
		{`branch != "main"`, false},
		{`"main" == branch`, true},
		{`event == "pull_request"`, false},
		{`tag =~ "^v[0-9]+\.[0-9]+"`, true},
		{`tag =~ "^v\d+"`, true}, // backslashes other than \" and \\ are kept
		{`branch =~ "ai"`, true}, // unanchored
		{`branch =~ "^ai$"`, false},
		{`tag`, true},
		{`!tag`, false},
		{`env.DEPLOY == "yes"`, true},
		{`env.EMPTY`, false},
		{`env.MISSING == ""`, true},
		{`!env.MISSING`, true},
		{`!branch == "main"`, false}, // ! binds looser than ==
		{`!(branch == "main")`, false},
		{`!!tag`, true},
		{`branch == "dev" || branch == "main" && event == "push"`, true}, // && before ||
		{`(branch == "dev" || branch == "main") && event == "tag"`, false},
		{`branch == "dev" || branch == "x" && event == "push"`, false},
		{`branch == "main" && !(event == "pull_request")`, true},
		{`"a\"b" == "a\"b"`, true},
		{`"a\\" == "a\\"`, true},
		{"  branch\t==\n\"main\"  ", true},
		{`((((branch))))`, true},
	}
	for _, tt := range tests {
		c, err := ParseCondition(tt.expr)
		if err != nil {
			t.Errorf("%s: %v", tt.expr, err)
			continue
		}
		if got := c.Eval(ctx); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.expr, got, tt.want)
		}
		if c.String() != tt.expr {
			t.Errorf("String() = %q", c.String())
		}
	}
}

func TestConditionErrors(t *testing.T) {
	tests := []struct {
		expr   string
		offset int
		msg    string
	}{
		{`brnch == "main"`, 0, `unknown identifier "brnch"`},
		{`commit == "x"`, 0, `unknown identifier "commit"`},
		{`branch = "main"`, 7, `unexpected "="`},
		{`branch == 'main'`, 10, `unexpected "'"`},
		{`branch == "main`, 10, `unterminated string`},
		{`branch ==`, 9, `unexpected end of expression`},
		{`branch == "a" == "b"`, 14, `unexpected "=="`},
		{`(branch == "a"`, 14, `expected ")", found end of expression`},
		{`branch == "a")`, 13, `unexpected ")"`},
		{`branch "a"`, 7, `unexpected string "a"`},
		{`branch =~ "("`, 10, `invalid regexp: missing closing ): ` + "`(`"},
		{`branch =~ tag`, 10, `right side of =~ must be a string holding a regexp`},
		{`(branch == "a") == "b"`, 16, `left side of == must be a value, not a condition`},
		{`branch == (tag == "b")`, 10, `right side of == must be a value, not a condition`},
		{`env == "x"`, 0, `env needs a variable name`},
		{`env.1A == "x"`, 0, `invalid environment variable name "1A"`},
		{`branch & tag`, 7, `unexpected "&"`},
		{`branch | tag`, 7, `unexpected "|"`},
		{`branch == "a" ; tag`, 14, `unexpected character ';'`},
		{``, 0, `unexpected end of expression`},
		{`true`, 0, `unknown identifier "true"`},
		{strings.Repeat("(", 200) + "tag" + strings.Repeat(")", 200), 100, `expression is nested too deeply`},
		{strings.Repeat("!", 200) + "tag", 100, `expression is nested too deeply`},
		{`tag == "` + strings.Repeat("x", MaxIfLength) + `"`, 0, `expression is 1033 bytes; the limit is 1024`},
	}
	for _, tt := range tests {
		_, err := ParseCondition(tt.expr)
		var ce *CondError
		if !errors.As(err, &ce) {
			t.Errorf("%.40s: error %v, want a *CondError", tt.expr, err)
			continue
		}
		if ce.Offset != tt.offset || ce.Msg != tt.msg {
			t.Errorf("%.40s: got offset %d %q, want %d %q", tt.expr, ce.Offset, ce.Msg, tt.offset, tt.msg)
		}
	}
}
