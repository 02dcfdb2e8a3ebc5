// Package dockertest builds the tiny image the Docker executor's tests run
// in: FROM scratch plus the host's static busybox (Debian's
// busybox-static), built through the Docker API from a tar context, since
// nothing can be pulled on a machine without a registry. Tests skip with a
// clear message when no engine answers or busybox is not static.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/kiln-ci/kiln/agent/executor"
)

// BusyboxPath is the static busybox the image is built from.
const BusyboxPath = "/bin/busybox"

// Engine connects to the local Docker engine or skips the test.
func Engine(t testing.TB) *executor.Docker {
	t.Helper()
	d, err := executor.NewDocker(context.Background(), "")
	if err != nil {
		t.Skipf("no Docker engine: %v (install docker.io and start dockerd to run this test)", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// BuildBusybox builds a uniquely tagged image holding a static busybox
// with its applets linked in /bin (so /bin/sh exists), plus the Dockerfile
// lines extra (a CMD for a service image), removes it at the
// end of the test, and returns its tag. It skips when busybox is missing
// or dynamically linked.
func BuildBusybox(t testing.TB, d *executor.Docker, extra ...string) string {
	t.Helper()
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Skipf("no %s: %v (apt-get install busybox-static)", BusyboxPath, err)
	}
	if f, err := elf.NewFile(bytes.NewReader(bin)); err != nil {
		t.Skipf("%s is not an ELF binary: %v", BusyboxPath, err)
	} else {
		interp := false
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				interp = true
			}
		}
		f.Close()
		if interp {
			t.Skipf("%s is dynamically linked; install busybox-static", BusyboxPath)
		}
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	tag := "kiln-test/busybox:" + hex.EncodeToString(suffix[:])

	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	dockerfile := []byte("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n" +
		"RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/tmp\", \"/etc\"]\n" +
		"RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo root:x:0:0:root:/:/bin/sh > /etc/passwd; echo nobody:x:65534:65534:nobody:/:/bin/sh >> /etc/passwd; chmod 1777 /tmp\"]\n" +
		"LABEL kiln.test=true\n" + strings.Join(extra, "\n") + "\n")
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"busybox", 0o755, bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli := d.Client()
	res, err := cli.ImageBuild(ctx, &ctxTar, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true, Labels: map[string]string{"kiln.test": "true"}})
	if err != nil {
		t.Fatalf("build test image: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = cli.ImageRemove(ctx, tag, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})
	if err := readBuild(res.Body); err != nil {
		t.Fatalf("build test image: %v", err)
	}
	return tag
}

// readBuild reads the build's JSON message stream and returns the error
// it reports, if any.
func readBuild(body io.ReadCloser) error {
	defer body.Close()
	dec := json.NewDecoder(body)
	var log bytes.Buffer
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read build output: %w (so far: %s)", err, log.String())
		}
		log.WriteString(m.Stream)
		if m.Error != "" {
			return fmt.Errorf("%s (output: %s)", m.Error, log.String())
		}
	}
}
