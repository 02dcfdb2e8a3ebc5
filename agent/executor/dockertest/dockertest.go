// Package dockertest makes the tiny image the Docker executor's tests run
// in: the host's static busybox (Debian's busybox-static) with its applets
// linked in /bin, imported through the Docker API from a root file system
// tarball (docker import), since nothing can be pulled on a machine
// without a registry and importing needs no build container. Tests skip
// with a clear message when no engine answers or busybox is not static.
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
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/kiln-ci/kiln/agent/executor"
)

// BusyboxPath is the static busybox the image is made from.
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

// BuildBusybox imports a uniquely tagged image holding a static busybox
// with its applets linked in /bin (so /bin/sh exists), /etc/passwd with
// root and nobody, and a world-writable /tmp; it removes the image at the
// end of the test and returns its tag. It skips when busybox is missing
// or dynamically linked.
func BuildBusybox(t testing.TB, d *executor.Docker) string {
	t.Helper()
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Skipf("no %s: %v (apt-get install busybox-static)", BusyboxPath, err)
	}
	if err := checkStatic(bin); err != nil {
		t.Skipf("%s: %v (apt-get install busybox-static)", BusyboxPath, err)
	}
	list, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		t.Skipf("%s --list: %v", BusyboxPath, err)
	}
	rootfs, err := rootFS(bin, strings.Fields(string(list)))
	if err != nil {
		t.Fatalf("test image root file system: %v", err)
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	tag := "kiln-test/busybox:" + hex.EncodeToString(suffix[:])

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli := d.Client()
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"}, tag,
		client.ImageImportOptions{Changes: []string{"LABEL kiln.test=true", `CMD ["/bin/sh"]`}, Message: "kiln test image"})
	if err != nil {
		t.Fatalf("import test image: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = cli.ImageRemove(ctx, tag, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})
	if err := readStream(res); err != nil {
		t.Fatalf("import test image: %v", err)
	}
	return tag
}

// checkStatic returns an error unless bin is an ELF executable without an
// interpreter (statically linked), which runs in an image with no libc.
func checkStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked")
		}
	}
	return nil
}

// rootFS is the image's root file system as a tar stream.
func rootFS(busybox []byte, applets []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Name: name + "/", Mode: mode, Typeflag: tar.TypeDir, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, step := range []func() error{
		func() error { return dir("bin", 0o755) },
		func() error { return dir("etc", 0o755) },
		func() error { return dir("tmp", 0o1777) },
		func() error { return file("bin/busybox", 0o755, busybox) },
		func() error {
			return file("etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"))
		},
		func() error { return file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")) },
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	for _, a := range applets {
		if a == "busybox" || strings.ContainsAny(a, "/.") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Linkname: "busybox", Typeflag: tar.TypeSymlink, Mode: 0o777, ModTime: now}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readStream reads the engine's JSON message stream and returns the error
// it reports, if any.
func readStream(body io.ReadCloser) error {
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read the engine's answer: %w", err)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}
