package blobio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestSendChunks(t *testing.T) {
	data := []byte(strings.Repeat("0123456789", 10)) // 100 bytes
	tests := []struct {
		name      string
		r         io.Reader
		chunkSize int
		want      []int // chunk sizes
	}{
		{"empty", bytes.NewReader(nil), 10, nil},
		{"exact multiple", bytes.NewReader(data), 25, []int{25, 25, 25, 25}},
		{"short last chunk", bytes.NewReader(data), 30, []int{30, 30, 30, 10}},
		{"one chunk", bytes.NewReader(data), 1000, []int{100}},
		{"one byte reads fill whole chunks", iotest.OneByteReader(bytes.NewReader(data)), 40, []int{40, 40, 20}},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(data)), 60, []int{60, 40}},
		{"default size", bytes.NewReader(make([]byte, ChunkSize+1)), 0, []int{ChunkSize, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			var out bytes.Buffer
			n, err := SendChunks(context.Background(), tt.r, tt.chunkSize, func(c []byte) error {
				got = append(got, len(c))
				out.Write(c)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("chunks %v, want %v", got, tt.want)
			}
			total := 0
			for _, c := range tt.want {
				total += c
			}
			if n != int64(total) || out.Len() != total {
				t.Fatalf("sent %d (%d written), want %d", n, out.Len(), total)
			}
			if tt.chunkSize != 0 && !bytes.Equal(out.Bytes(), data[:total]) {
				t.Fatalf("bytes differ")
			}
		})
	}
}

func TestSendChunksErrors(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 100)
	// A send error is returned as it is (io.EOF stays io.EOF) and stops the loop.
	calls := 0
	n, err := SendChunks(context.Background(), bytes.NewReader(data), 10, func([]byte) error {
		calls++
		if calls == 3 {
			return io.EOF
		}
		return nil
	})
	if err != io.EOF || n != 20 || calls != 3 {
		t.Fatalf("send error: n=%d err=%v calls=%d", n, err, calls)
	}

	// A read error is wrapped; the bytes read before it are sent.
	boom := errors.New("disk on fire")
	r := io.MultiReader(bytes.NewReader(data[:15]), iotest.ErrReader(boom))
	n, err = SendChunks(context.Background(), r, 10, func([]byte) error { return nil })
	if !errors.Is(err, boom) || n != 15 {
		t.Fatalf("read error: n=%d err=%v", n, err)
	}

	// An ended context stops before the next read.
	ctx, cancel := context.WithCancel(context.Background())
	n, err = SendChunks(ctx, bytes.NewReader(data), 10, func([]byte) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) || n != 10 {
		t.Fatalf("canceled: n=%d err=%v", n, err)
	}
}
