package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	"github.com/kiln-ci/kiln/internal/blobio"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// artifactBytes is the size of the benchmark artifact (KILN_BENCH_ARTIFACT_MB
// overrides it, in MiB).
func artifactBytes() int64 {
	if v, err := strconv.Atoi(os.Getenv("KILN_BENCH_ARTIFACT_MB")); err == nil && v > 0 {
		return int64(v) << 20
	}
	return 1 << 30
}

// peakRSS returns the process's peak resident set size in MiB (VmHWM).
func peakRSS(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// writeArtifact writes size pseudo-random bytes (incompressible, not
// deduplicated) to a file and returns its SHA-256.
func writeArtifact(b *testing.B, path string, size int64) string {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		_, _ = rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// BenchmarkArtifactUploadDownload uploads one 1 GiB artifact to a 3-node
// cluster (acknowledged once a quorum holds it) and downloads it from a
// follower, streaming in 1 MiB chunks. It reports MB/s both ways and the
// process's peak RSS (3 coordinators and the client share the process), to
// show memory stays flat in the file size.
func BenchmarkArtifactUploadDownload(b *testing.B) {
	size := artifactBytes()
	path := filepath.Join(b.TempDir(), "artifact.bin")
	sha := writeArtifact(b, path, size)
	rssBefore := peakRSS(b)
	for i := 0; i < b.N; i++ {
		c := clustertest.Start(b, 3, clustertest.Options{})
		leader := c.Leader()
		follower := c.Followers()[0]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)

		start := time.Now()
		upload(b, ctx, leader.GRPCAddr, path, size, sha)
		up := time.Since(start)

		start = time.Now()
		got := download(b, ctx, follower.GRPCAddr, sha)
		down := time.Since(start)
		cancel()
		if got != sha {
			b.Fatalf("downloaded digest %s, want %s", got, sha)
		}
		mb := float64(size) / (1 << 20)
		b.ReportMetric(mb/up.Seconds(), "upload-MB/s")
		b.ReportMetric(mb/down.Seconds(), "download-MB/s")
		b.Logf("%.0f MiB: upload (quorum ack) %s = %.0f MB/s; download from a follower %s = %.0f MB/s",
			mb, up.Round(time.Millisecond), mb/up.Seconds(), down.Round(time.Millisecond), mb/down.Seconds())
	}
	b.ReportMetric(peakRSS(b), "peak-rss-MiB")
	b.Logf("peak RSS %.0f MiB (before the cluster started: %.0f MiB)", peakRSS(b), rssBefore)
}

func dial(b *testing.B, addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

func upload(b *testing.B, ctx context.Context, addr, path string, size int64, sha string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	stream, err := kilnv1.NewBlobServiceClient(dial(b, addr)).Upload(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Header{Header: &kilnv1.BlobHeader{Size: size, Sha256: sha, Kind: "artifact"}}}); err != nil {
		b.Fatal(err)
	}
	if _, err := blobio.SendChunks(ctx, f, blobio.ChunkSize, func(chunk []byte) error {
		return stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Data{Data: chunk}})
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		b.Fatalf("upload: %v", err)
	}
}

func download(b *testing.B, ctx context.Context, addr, sha string) string {
	stream, err := kilnv1.NewBlobServiceClient(dial(b, addr)).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha})
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatalf("download: %v", err)
		}
		h.Write(m.GetData())
	}
	return hex.EncodeToString(h.Sum(nil))
}
