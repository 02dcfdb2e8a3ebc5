package junit

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// writeBigReport writes a report of about size bytes: suites of 100 cases,
// every 10th case failing with a ~1.5 KiB stack trace, every case carrying
// ~600 B of system-out (dropped by the default MaxOutputBytes=0).
func writeBigReport(tb testing.TB, path string, size int64) (cases int) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	trace := strings.Repeat("\tat com.example.service.Handler.process(Handler.java:123)\n", 25)
	out := strings.Repeat("log line with some &lt;escaped&gt; &amp; output\n", 14)
	var n int64
	wr := func(s string) { k, _ := w.WriteString(s); n += int64(k) }
	wr(`<?xml version="1.0" encoding="UTF-8"?>` + "\n<testsuites>\n")
	for s := 0; n < size; s++ {
		wr(fmt.Sprintf("<testsuite name=\"com.example.Suite%d\" tests=\"100\" time=\"12.5\">\n"+
			"<properties><property name=\"java.version\" value=\"21\"/></properties>\n", s))
		for c := 0; c < 100; c++ {
			cases++
			wr(fmt.Sprintf(`<testcase classname="com.example.Suite%d" name="testCase%d" time="0.%03d">`, s, c, c))
			if c%10 == 3 {
				wr(`<failure message="expected &lt;1&gt; but was &lt;2&gt;" type="java.lang.AssertionError"><![CDATA[` + trace + `]]></failure>`)
			}
			wr("<system-out>" + out + "</system-out></testcase>\n")
		}
		wr("</testsuite>\n")
	}
	wr("</testsuites>\n")
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return cases
}

func benchmarkParseFile(b *testing.B, size int64) {
	path := filepath.Join(b.TempDir(), "big.xml")
	cases := writeBigReport(b, path, size)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	b.ReportAllocs()

	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)

	// Sample HeapInuse while parsing to catch the peak, not just the end.
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()

	var r *Report
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		r, err = Parse(f, Options{})
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	<-done

	var after runtime.MemStats
	runtime.ReadMemStats(&after) // report r still live
	if after.HeapInuse > peak.Load() {
		peak.Store(after.HeapInuse)
	}
	if r.Summary.Total != cases {
		b.Fatalf("parsed %d cases, wrote %d", r.Summary.Total, cases)
	}
	mb := func(v uint64) float64 { return float64(v) / (1 << 20) }
	b.ReportMetric(float64(cases), "cases")
	b.ReportMetric(float64(r.Dropped), "dropped")
	b.ReportMetric(mb(after.HeapInuse), "heapinuse-after-MB")
	b.ReportMetric(mb(peak.Load()), "heapinuse-peak-MB")
	b.ReportMetric(mb(base.HeapInuse), "heapinuse-base-MB")
	runtime.KeepAlive(r)
}

// BenchmarkParse100MB parses a ~100 MB report from a temp file (generated
// once per benchmark run). Heap metrics show memory is bounded by the kept
// cases (MaxCases = 100,000 by default), not by the file size: compare with
// BenchmarkParse10MB / BenchmarkParse300MB.
func BenchmarkParse100MB(b *testing.B) { benchmarkParseFile(b, 100<<20) }

// BenchmarkParse10MB is the small-file baseline for the heap comparison.
func BenchmarkParse10MB(b *testing.B) { benchmarkParseFile(b, 10<<20) }

// BenchmarkParse300MB shows the heap stays flat once MaxCases is reached.
func BenchmarkParse300MB(b *testing.B) { benchmarkParseFile(b, 300<<20) }
