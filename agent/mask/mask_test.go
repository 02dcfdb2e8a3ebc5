package mask

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

const secret = "s3cr3t/p@ss+word="

func maskAll(t *testing.T, values []string, chunks ...string) string {
	t.Helper()
	var out bytes.Buffer
	m := New(&out, values)
	for _, c := range chunks {
		if n, err := m.Write([]byte(c)); err != nil || n != len(c) {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestMasksEveryForm(t *testing.T) {
	forms := []string{
		secret,
		base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.RawURLEncoding.EncodeToString([]byte(secret)),
		url.QueryEscape(secret),
		url.PathEscape(secret),
	}
	for _, f := range forms {
		got := maskAll(t, []string{secret}, "value: "+f+" end\n")
		if got != "value: *** end\n" {
			t.Errorf("form %q: got %q", f, got)
		}
	}
}

func TestMultiLineValue(t *testing.T) {
	v := "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n}\n-----END KEY-----\n"
	got := maskAll(t, []string{v}, "whole:"+v+"|one line: MIIBOgIBAAJBAK and } stays\n")
	want := "whole:***|one line: *** and } stays\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Every way of cutting the stream into writes gives the same masked
// output as one write, and the plain secret never gets through.
func TestSplitAcrossWrites(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte(secret))
	text := "a" + secret + "b " + b64 + "\n" + secret + secret + "s3cr3t/ not quite\n"
	want := "a***b ***\n******s3cr3t/ not quite\n"
	if got := maskAll(t, []string{secret}, text); got != want {
		t.Fatalf("one write: %q, want %q", got, want)
	}
	for cut := 0; cut <= len(text); cut++ {
		if got := maskAll(t, []string{secret}, text[:cut], text[cut:]); got != want {
			t.Fatalf("cut at %d: %q", cut, got)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 500; round++ {
		var chunks []string
		for rest := text; rest != ""; {
			n := 1 + r.IntN(8)
			n = min(n, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		if got := maskAll(t, []string{secret}, chunks...); got != want {
			t.Fatalf("chunks %q: %q", chunks, got)
		}
	}
}

// A held prefix is released by the next write that rules the secret out,
// so ordinary output is not delayed past the next write.
func TestHoldsOnlyPossiblePrefixes(t *testing.T) {
	var out bytes.Buffer
	m := New(&out, []string{secret})
	_, _ = m.Write([]byte("hello s3c"))
	if out.String() != "hello " {
		t.Fatalf("after a possible prefix: %q", out.String())
	}
	_, _ = m.Write([]byte("ond\n"))
	if out.String() != "hello s3cond\n" {
		t.Fatalf("after ruling it out: %q", out.String())
	}
	_, _ = m.Write([]byte("plain output\n"))
	if !strings.HasSuffix(out.String(), "plain output\n") {
		t.Fatalf("plain output held: %q", out.String())
	}
}

func TestNoSecretsPassesThrough(t *testing.T) {
	if got := maskAll(t, nil, "abc", "def"); got != "abcdef" {
		t.Fatal(got)
	}
	if got := maskAll(t, []string{""}, "abc"); got != "abc" {
		t.Fatal(got)
	}
}

// FuzzMask: for any text and split, the masked output never contains the
// secret, and text without the secret's first byte is unchanged.
func FuzzMask(f *testing.F) {
	f.Add("x"+secret+"y", 3)
	f.Add(secret[:5], 2)
	f.Fuzz(func(t *testing.T, text string, cut int) {
		if cut < 0 {
			cut = -cut
		}
		cut %= len(text) + 1
		var out bytes.Buffer
		m := New(&out, []string{secret})
		_, _ = m.Write([]byte(text[:cut]))
		_, _ = m.Write([]byte(text[cut:]))
		_ = m.Flush()
		if strings.Contains(out.String(), secret) {
			t.Fatalf("secret in output %q", out.String())
		}
		if !strings.ContainsAny(text, secret[:1]+"czC") && out.String() != text {
			t.Fatalf("changed %q to %q", text, out.String())
		}
	})
}

// BenchmarkMask: throughput of typical build output through a masker with
// three secrets (each with its encodings), written in 32 KiB reads.
func BenchmarkMask(b *testing.B) {
	line := []byte("ok  \tgithub.com/example/project/pkg/thing\t0.123s coverage: 81.2% of statements\n")
	chunk := bytes.Repeat(line, (32<<10)/len(line))
	m := New(io.Discard, []string{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "hunter2-db-password"})
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := m.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
}
