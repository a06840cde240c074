package raw

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

func TestConformance(t *testing.T) {
	disktest.TestFormat(t, Format(), disktest.FormatOptions{})
}

func TestSparseOutput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.raw")
	pt := &disktest.Pattern{Name: "s", Size: 64 * disktest.MiB, Seed: 9, Data: []disk.Extent{{Off: 8 * disktest.MiB, Len: disktest.MiB}}}
	w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "raw", pt.Size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := disktest.WritePattern(t.Context(), w, pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	f, err := disk.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := Format().Open(t.Context(), f, nil)
	defer img.Close()
	var kinds []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, e)
	}
	want := []disk.Extent{{Off: 0, Len: 8 << 20, Kind: disk.Unallocated}, {Off: 8 << 20, Len: 1 << 20, Kind: disk.Data}, {Off: 9 << 20, Len: 55 << 20, Kind: disk.Unallocated}}
	if len(kinds) != len(want) {
		t.Fatalf("extents %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("extents %v, want %v", kinds, want)
		}
	}
}

func TestStreamWriter(t *testing.T) {
	var buf bytes.Buffer
	w, err := Format().Create(t.Context(), &buf, 10000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !w.Sequential() {
		t.Fatal("stream writer must be sequential")
	}
	if _, err := w.WriteAt([]byte("abc"), 100); err != nil {
		t.Fatal(err)
	}
	if err := w.Zero(200, 50); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("x"), 50); err == nil {
		t.Fatal("write behind position accepted")
	}
	w2, _ := Format().Create(t.Context(), &buf, 10000, nil)
	buf.Reset()
	w2.WriteAt([]byte("abc"), 100)
	if err := w2.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 10000)
	copy(want[100:], "abc")
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("stream content differs")
	}
}

func TestReadPastEnd(t *testing.T) {
	img, _ := Format().Open(t.Context(), disk.BytesFile("b", []byte("hello")), nil)
	p := make([]byte, 10)
	n, err := img.ReadAt(p, 2)
	if n != 3 || err != io.EOF || string(p[:3]) != "llo" {
		t.Fatalf("got %d %v %q", n, err, p[:n])
	}
}

func TestQemuReadsFerry(t *testing.T) {
	for _, pt := range disktest.Patterns(testing.Short()) {
		t.Run(pt.Name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.raw")
			w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "raw", pt.Size, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := disktest.WritePattern(t.Context(), w, pt); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			ref := filepath.Join(dir, "ref.raw")
			disktest.WriteRaw(t, pt, ref)
			if qi := disktest.QemuInfoOf(t, path, "raw"); qi.VirtualSize != pt.Size {
				t.Fatalf("qemu size %d, want %d", qi.VirtualSize, pt.Size)
			}
			disktest.Qemu(t, "compare", "-f", "raw", "-F", "raw", path, ref)
		})
	}
}
