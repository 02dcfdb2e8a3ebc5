package agentsession

import (
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestLogCapClipsPastTheLimit(t *testing.T) {
	c := logCap{limit: 10, bytes: map[logKey]int64{}, committed: func(job string, _ uint32) int64 {
		if job == "1.a" {
			return 8 // committed before this session
		}
		return 0
	}}
	chunk := func(job string, seq uint64, n int) *kilnv1.LogChunk {
		return &kilnv1.LogChunk{JobId: job, Attempt: 1, Seq: seq, Data: []byte(strings.Repeat("x", n))}
	}
	big := chunk("1.a", 2, LogMarkerSlack+10)
	out, dropped := c.clip([]*kilnv1.LogChunk{big, chunk("1.a", 3, 5), chunk("1.b", 1, 5)})
	// 1.a: 8 bytes committed, so limit+slack-8 more are kept.
	if got := len(out[0].GetData()); got != 10+LogMarkerSlack-8 || len(big.GetData()) != LogMarkerSlack+10 {
		t.Fatalf("first chunk kept %d bytes (the caller's chunk now %d)", got, len(big.GetData()))
	}
	if len(out[1].GetData()) != 0 || out[1].GetSeq() != 3 {
		t.Fatalf("chunk past the limit: %v", out[1])
	}
	if len(out[2].GetData()) != 5 {
		t.Fatal("another attempt was clipped")
	}
	if dropped != 8+5 {
		t.Fatalf("dropped %d", dropped)
	}
	none := logCap{bytes: map[logKey]int64{}}
	if out, d := none.clip([]*kilnv1.LogChunk{chunk("x", 1, 100)}); d != 0 || len(out[0].GetData()) != 100 {
		t.Fatal("no limit clipped")
	}
}
