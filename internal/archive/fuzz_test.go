package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzLimits are small so that the fuzzer reaches the limits.
var fuzzLimits = Limits{MaxBytes: 4096, MaxEntries: 16}

// tarGz builds an archive from a line-based description, one entry a
// line: "TYPE NAME [LINK|CONTENT] [MODE]" with TYPE f (file), d (dir),
// l (symlink), h (hard link), c (char device). Unparseable lines are
// skipped, so every input is an archive.
func tarGz(desc string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for line := range strings.SplitSeq(desc, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		hdr := &tar.Header{Name: f[1], Mode: 0o644}
		arg := ""
		if len(f) > 2 {
			arg = f[2]
		}
		if len(f) > 3 {
			var m int64
			for _, c := range f[3] {
				if c >= '0' && c <= '7' {
					m = m*8 + int64(c-'0')
				}
			}
			hdr.Mode = m & 0o7777
		}
		switch f[0] {
		case "f":
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(arg))
		case "d":
			hdr.Typeflag = tar.TypeDir
		case "l":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, arg
		case "h":
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, arg
		case "c":
			hdr.Typeflag = tar.TypeChar
		default:
			continue
		}
		if tw.WriteHeader(hdr) != nil {
			continue
		}
		if hdr.Typeflag == tar.TypeReg {
			_, _ = tw.Write([]byte(arg))
		}
	}
	_ = tw.Close()
	_ = zw.Close()
	return buf.Bytes()
}

// FuzzUnpack: whatever an uploaded source archive holds (clients upload
// them; agents unpack them into job workspaces), Unpack never writes
// outside its directory, leaves no symbolic link that points outside it,
// no set-id or sticky bit, and stays within its limits. The input is a
// line-based description of the entries (see tarGz), or, when it starts
// with the gzip magic, the raw bytes.
func FuzzUnpack(f *testing.F) {
	for _, s := range []string{
		"f a.txt hello\nd sub\nf sub/b.txt world 755",
		"f ../evil x",
		"f /abs x",
		"l link ../../etc\nf link/passwd x",
		"l link sub/../..\n",
		"d sub\nl sub/up ..\nf sub/up/x y",
		"l dot .\nf dot/x y",
		"f a x\nf a/b y",
		"h hard a.txt",
		"c dev",
		"f suid x 4755",
		"f big " + strings.Repeat("x", 5000),
		"f ./a x\nd ./\nf a/../b y",
	} {
		f.Add([]byte(s))
	}
	f.Add(tarGz("f a x"))
	f.Fuzz(func(t *testing.T, in []byte) {
		data := in
		if !bytes.HasPrefix(in, []byte{0x1f, 0x8b}) {
			data = tarGz(string(in))
		}
		parent := t.TempDir()
		root := filepath.Join(parent, "ws")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		st, _ := Unpack(bytes.NewReader(data), root, fuzzLimits)
		if st.Bytes > fuzzLimits.MaxBytes || st.Files > fuzzLimits.MaxEntries {
			t.Fatalf("stats %+v beyond the limits %+v", st, fuzzLimits)
		}
		outside, _ := os.ReadDir(parent)
		if len(outside) != 1 || outside[0].Name() != "ws" {
			t.Fatalf("Unpack wrote beside its directory: %v", outside)
		}
		var total int64
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
				t.Errorf("%s has mode %v", p, fi.Mode())
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				abs := filepath.Clean(filepath.Join(filepath.Dir(p), target))
				if filepath.IsAbs(target) || (abs != root && !strings.HasPrefix(abs, root+string(filepath.Separator))) {
					t.Errorf("symbolic link %s → %s leaves the directory", p, target)
				}
				// Resolved through the links already there.
				if real, err := filepath.EvalSymlinks(p); err == nil {
					rroot, _ := filepath.EvalSymlinks(root)
					if real != rroot && !strings.HasPrefix(real, rroot+string(filepath.Separator)) {
						t.Errorf("symbolic link %s resolves to %s, outside", p, real)
					}
				}
			case fi.Mode().IsRegular():
				total += fi.Size()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if total > fuzzLimits.MaxBytes {
			t.Fatalf("%d bytes unpacked, limit %d", total, fuzzLimits.MaxBytes)
		}
	})
}
