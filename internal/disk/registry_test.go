package disk_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
)

// chainFormat is a test format: "CHAIN\n<backing name>\n"; it reads as its
// backing image (or 1 MiB of zeros without one).
func chainFormat() *disk.Format {
	return &disk.Format{
		Name: "chain",
		Probe: func(f disk.File) bool {
			b := make([]byte, 6)
			n, _ := f.ReadAt(b, 0)
			return n == 6 && string(b) == "CHAIN\n"
		},
		Open: func(ctx context.Context, f disk.File, o *disk.OpenOptions) (disk.Image, error) {
			b := make([]byte, f.Size())
			f.ReadAt(b, 0)
			name := strings.TrimSpace(strings.TrimPrefix(string(b), "CHAIN\n"))
			img := &chainImage{f: f}
			if name != "" {
				if o == nil || o.OpenBacking == nil {
					return nil, fmt.Errorf("%s: backing file %s refused: %w", f.Name(), name, errs.ErrPermissionDenied)
				}
				back, err := o.OpenBacking(ctx, name, "")
				if err != nil {
					return nil, err
				}
				img.back = back
			}
			return img, nil
		},
	}
}

type chainImage struct {
	f    disk.File
	back disk.Image
}

func (c *chainImage) ReadAt(p []byte, off int64) (int, error) {
	if c.back != nil {
		return c.back.ReadAt(p, off)
	}
	return 0, io.EOF
}
func (c *chainImage) Close() error {
	if c.back != nil {
		c.back.Close()
	}
	return c.f.Close()
}
func (c *chainImage) Size() int64 {
	if c.back != nil {
		return c.back.Size()
	}
	return 1 << 20
}
func (c *chainImage) Info() disk.Info { return disk.Info{Format: "chain", VirtualSize: c.Size()} }
func (c *chainImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {}
}

func TestRegistryChains(t *testing.T) {
	reg := disk.NewRegistry(chainFormat(), raw.Format())
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("base.raw", "hello world")
	write("sub/top", "CHAIN\n../base.raw\n") // relative to the image, not the cwd
	write("loop1", "CHAIN\nloop2\n")
	write("loop2", "CHAIN\nloop1\n")
	write("self", "CHAIN\nself\n")
	write("dangling", "CHAIN\nmissing.img\n")
	// a chain of 70
	for i := range 70 {
		next := fmt.Sprintf("deep%d", i+1)
		if i == 69 {
			next = "base.raw"
		}
		write(fmt.Sprintf("deep%d", i), "CHAIN\n"+next+"\n")
	}
	tests := []struct {
		name string
		path string
		o    *disk.RegistryOpenOptions
		code errs.Code
		msg  string
	}{
		{name: "relative backing", path: "sub/top"},
		{name: "loop", path: "loop1", code: errs.Corrupt, msg: "loops back"},
		{name: "self loop", path: "self", code: errs.Corrupt, msg: "loops back"},
		{name: "dangling", path: "dangling", code: errs.NotFound, msg: "missing.img"},
		{name: "too deep", path: "deep0", code: errs.Corrupt, msg: "longer than 64"},
		{name: "deep allowed", path: "deep0", o: &disk.RegistryOpenOptions{MaxChain: 100}},
		{name: "no backing", path: "sub/top", o: &disk.RegistryOpenOptions{NoBacking: true}, code: errs.PermissionDenied, msg: "refused"},
		{name: "forced format", path: "sub/top", o: &disk.RegistryOpenOptions{Format: "raw"}},
		{name: "unknown forced format", path: "sub/top", o: &disk.RegistryOpenOptions{Format: "xyz"}, code: errs.InvalidArgument, msg: "unknown format"},
		{name: "directory", path: "sub", code: errs.InvalidArgument, msg: "is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := reg.Open(t.Context(), filepath.Join(dir, tt.path), tt.o)
			if tt.code == errs.Unknown {
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				if tt.o == nil {
					b := make([]byte, 5)
					img.ReadAt(b, 0)
					if !bytes.Equal(b, []byte("hello")) {
						t.Fatalf("read %q through the chain", b)
					}
				}
				return
			}
			if err == nil {
				img.Close()
				t.Fatal("opened")
			}
			if !errs.Is(err, tt.code) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err %q (code %v), want code %v containing %q", err, errs.CodeOf(err), tt.code, tt.msg)
			}
		})
	}
}

func TestRegistryLookupAndCreate(t *testing.T) {
	reg := disk.NewRegistry(chainFormat(), raw.Format())
	if f, err := reg.Lookup("img"); err != nil || f.Name != "raw" {
		t.Fatalf("alias lookup: %v %v", f, err)
	}
	if _, err := reg.Create(t.Context(), filepath.Join(t.TempDir(), "x"), "chain", 10, nil); !errs.Is(err, errs.Unimplemented) {
		t.Fatalf("create of a read-only format: %v", err)
	}
	if _, err := reg.Create(t.Context(), filepath.Join(t.TempDir(), "x"), "raw", -1, nil); !errs.Is(err, errs.InvalidArgument) {
		t.Fatalf("negative size: %v", err)
	}
	if _, err := reg.Create(t.Context(), filepath.Join(t.TempDir(), "nodir", "x"), "raw", 10, nil); !errs.Is(err, errs.NotFound) {
		t.Fatalf("missing directory: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("duplicate format name did not panic")
		}
	}()
	disk.NewRegistry(raw.Format(), raw.Format())
}

func TestOutputFile(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "out")
	os.WriteFile(final, []byte("old"), 0o644)
	o, err := disk.CreateOutputFile(final)
	if err != nil {
		t.Fatal(err)
	}
	o.WriteAt([]byte("new"), 0)
	if b, _ := os.ReadFile(final); string(b) != "old" {
		t.Fatal("final name changed before commit")
	}
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(final); string(b) != "new" {
		t.Fatalf("after commit: %q", b)
	}
	if err := o.Commit(); err == nil {
		t.Fatal("second commit accepted")
	}
	o2, _ := disk.CreateOutputFile(final)
	o2.WriteAt([]byte("partial"), 0)
	o2.Abort()
	if b, _ := os.ReadFile(final); string(b) != "new" {
		t.Fatal("abort touched the final file")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}
