package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/vmdk"
	"github.com/ferry-project/ferry/internal/errs"
)

func testRegistry() *disk.Registry { return disk.NewRegistry(vmdk.Format(), raw.Format()) }

// testVM describes a VM whose disks hold pts.
func testVM(name string, fw core.Firmware, pts ...*disktest.Pattern) core.VMSpec {
	vm := core.VMSpec{
		Name: name, Description: "test VM <" + name + "> & co", CPUs: 2, MemoryBytes: 3 << 30,
		Firmware: fw, OSType: "linux",
		NICs: []core.NICSpec{
			{Name: "eth0", Network: "VM Network", MAC: "00:50:56:aa:bb:01"},
			{Name: "eth1", Network: "backend \"b\"", MAC: "00:50:56:aa:bb:02"},
		},
	}
	for i, pt := range pts {
		vm.Disks = append(vm.Disks, core.DiskSpec{Name: pt.Name, Size: pt.Size, Bootable: i == 0, Position: i})
	}
	return vm
}

// writeArchive writes vm with pts as its disks through Create to t.
func writeArchive(t testing.TB, tg disk.Target, vm core.VMSpec, pts []*disktest.Pattern, opts map[string]string) {
	t.Helper()
	ctx := context.Background()
	w, err := Format().Create(ctx, tg, vm, &archive.CreateOptions{Disks: testRegistry(), Options: opts})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer w.Close()
	for i, pt := range pts {
		dw, err := w.NextDisk(ctx)
		if err != nil {
			t.Fatalf("disk %d: %v", i, err)
		}
		if _, err := disk.Convert(ctx, dw, disktest.PatternImage{P: pt}, nil); err != nil {
			t.Fatalf("disk %d: convert: %v", i, err)
		}
		if err := dw.Commit(ctx); err != nil {
			t.Fatalf("disk %d: commit: %v", i, err)
		}
		if err := dw.Close(); err != nil {
			t.Fatalf("disk %d: close: %v", i, err)
		}
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// writeFile writes an OVA at dir/name on a seekable output file, as the
// service does, and returns its path.
func writeFile(t testing.TB, dir string, vm core.VMSpec, pts []*disktest.Pattern, opts map[string]string) string {
	t.Helper()
	path := filepath.Join(dir, vm.Name+".ova")
	out, err := disk.CreateOutputFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Abort()
	writeArchive(t, out, vm, pts, opts)
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	return path
}

// writePipe writes an OVA through an os.Pipe (a non-seekable *os.File)
// and saves what comes out at dir/name.
func writePipe(t testing.TB, dir string, vm core.VMSpec, pts []*disktest.Pattern, opts map[string]string) string {
	t.Helper()
	path := filepath.Join(dir, vm.Name+"-piped.ova")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(f, pr)
		pr.Close()
		done <- errors.Join(err, f.Close())
	}()
	writeArchive(t, pw, vm, pts, opts)
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return path
}

// openFile opens an OVA file.
func openFile(t testing.TB, path string) archive.Reader {
	t.Helper()
	f, err := disk.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Format().Open(context.Background(), f, &archive.OpenOptions{Disks: testRegistry()})
	if err != nil {
		f.Close()
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// openBytes opens b as an OVA, returning the error.
func openBytes(b []byte) (archive.Reader, error) {
	return Format().Open(context.Background(), disk.BytesFile("test.ova", b), &archive.OpenOptions{Disks: testRegistry()})
}

// verifyStream reads s to its end and checks it reads as pt.
func verifyStream(t testing.TB, s disk.Stream, pt *disktest.Pattern) {
	t.Helper()
	ctx := context.Background()
	if s.Size() != pt.Size {
		t.Fatalf("%s: stream size %d, want %d", pt.Name, s.Size(), pt.Size)
	}
	var runs []disk.Extent
	var pos int64
	for {
		off, p, err := s.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: next: %v", pt.Name, err)
		}
		if off < pos || off+int64(len(p)) > pt.Size {
			t.Fatalf("%s: run [%d, %d) out of order or past the end", pt.Name, off, off+int64(len(p)))
		}
		want := make([]byte, len(p))
		pt.Fill(off, want)
		if !bytes.Equal(p, want) {
			t.Fatalf("%s: run at %d differs", pt.Name, off)
		}
		runs = append(runs, disk.Extent{Off: off, Len: int64(len(p))})
		pos = off + int64(len(p))
	}
	// what no run covered must read as zeros in the pattern
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); {
			n := min(e.End()-off, 64<<10)
			covered := false
			for _, r := range runs {
				if r.Off <= off && off+n <= r.End() {
					covered = true
					break
				}
			}
			if !covered {
				b := make([]byte, n)
				pt.Fill(off, b)
				// a piece straddling runs: check byte by byte
				for k := range b {
					in := false
					for _, r := range runs {
						if r.Off <= off+int64(k) && off+int64(k) < r.End() {
							in = true
							break
						}
					}
					if !in && b[k] != 0 {
						t.Fatalf("%s: byte %d is %#x but no run holds it", pt.Name, off+int64(k), b[k])
					}
				}
			}
			off += n
		}
	}
}

// members lists an OVA's tar members with archive/tar.
func members(t testing.TB, path string) []*tar.Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var hs []*tar.Header
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		hs = append(hs, h)
	}
}

// extract saves member name of the OVA at path into dir and returns its path.
func extract(t testing.TB, path, name, dir string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: member %s: %v", path, name, err)
		}
		if h.Name != name {
			continue
		}
		out := filepath.Join(dir, filepath.Base(name))
		o, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(o, tr); err != nil {
			t.Fatal(err)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
}

// wantCode fails unless err wraps code and names what.
func wantCode(t testing.TB, err error, code errs.Code, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v naming %q", code, what)
	}
	if errs.CodeOf(err) != code {
		t.Fatalf("error %q is %v, want %v", err, errs.CodeOf(err), code)
	}
	if what != "" && !bytes.Contains([]byte(err.Error()), []byte(what)) {
		t.Fatalf("error %q does not name %q", err, what)
	}
}
