package vmdk

import (
	"context"
	"errors"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

const (
	kib = disktest.KiB
	mib = disktest.MiB
	gib = disktest.GiB
)

func roundSector(n int64) int64 { return (n + 511) &^ 511 }

func opts(sub string) *disk.CreateOptions {
	return &disk.CreateOptions{Options: map[string]string{"subformat": sub}}
}

// verifyImage is disktest.VerifyImage with its coverage check done on
// 4 KiB blocks aligned to the disk rather than stepped from each data
// range's start.
//
// disktest.VerifyImage demands that every 4 KiB piece counted from a data
// range's start that holds a non-zero byte lie wholly inside data extents.
// When a range starts off a 4 KiB boundary, such a piece straddles two
// blocks; if the second holds only written zeros and falls in a grain that
// is all zeros, ferry does not store that grain (VMware's rule) and the
// piece is half in an unallocated extent, though every non-zero byte is in
// a data extent. The same happens to a flat extent whose writer (qemu-img)
// skipped a zero block. Aligned blocks lie inside one grain and one file
// system block, so this check asks what VerifyImage means to ask. The
// contents, end-of-disk behaviour and the rest are left to VerifyImage.
func verifyImage(t testing.TB, img disk.Image, pt *disktest.Pattern) {
	t.Helper()
	var data []disk.Extent
	var next int64
	for e, err := range img.Extents(context.Background(), 0, img.Size()) {
		if err != nil {
			t.Fatalf("%s: extents: %v", pt.Name, err)
		}
		if e.Off != next || e.Len <= 0 {
			t.Fatalf("%s: extent %+v does not follow %d", pt.Name, e, next)
		}
		next = e.End()
		if e.Kind == disk.Data {
			if n := len(data); n > 0 && data[n-1].End() == e.Off {
				data[n-1].Len += e.Len
			} else {
				data = append(data, e)
			}
		}
	}
	if next != img.Size() {
		t.Fatalf("%s: extents end at %d, size %d", pt.Name, next, img.Size())
	}
	b := make([]byte, 4096)
	for _, e := range pt.Data {
		for off := e.Off &^ 4095; off < e.End(); off += 4096 {
			s, end := max(off, e.Off), min(off+4096, e.End())
			p := b[:end-s]
			pt.Fill(s, p)
			if isZero(p) {
				continue
			}
			if !inside(data, s, end) {
				t.Fatalf("%s: non-zero bytes in [%d, %d) not inside a data extent", pt.Name, s, end)
			}
		}
	}
	disktest.VerifyImage(t, allData{img}, pt)
}

func inside(data []disk.Extent, s, end int64) bool {
	for _, d := range data {
		if d.Off <= s && end <= d.End() {
			return true
		}
	}
	return false
}

// allData reports the whole disk as one data extent, so that
// disktest.VerifyImage checks contents only.
type allData struct{ disk.Image }

func (a allData) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		if end := min(off+n, a.Size()); off < end {
			yield(disk.Extent{Off: off, Len: end - off, Kind: disk.Data}, nil)
		}
	}
}

// writeImage writes pt with ferry into dir/name and returns the path.
func writeImage(t testing.TB, dir, name, sub string, pt *disktest.Pattern) string {
	t.Helper()
	path := filepath.Join(dir, name)
	w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "vmdk", pt.Size, opts(sub))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer w.Close()
	if err := disktest.WritePattern(t.Context(), w, pt); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close after commit: %v", err)
	}
	return path
}

func openPath(t testing.TB, path string) disk.Image {
	t.Helper()
	img, err := disk.NewRegistry(Format()).Open(t.Context(), path, nil)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func checkClean(t testing.TB, img disk.Image) {
	t.Helper()
	res, err := img.(disk.Checker).Check(t.Context())
	if err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
}

// wantErr fails unless err carries code and its message names name.
func wantErr(t testing.TB, err error, code errs.Code, name string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", code)
	}
	if got := errs.CodeOf(err); got != code {
		t.Fatalf("error %q has code %v, want %v", err, got, code)
	}
	if name != "" && !strings.Contains(err.Error(), name) {
		t.Fatalf("error %q does not name %s", err, name)
	}
}

// openBytes opens b as a file named name with the format's Open, without
// backing files.
func openBytes(t testing.TB, name string, b []byte) (disk.Image, error) {
	t.Helper()
	img, err := Format().Open(t.Context(), disk.BytesFile(name, b), &disk.OpenOptions{})
	if err == nil {
		t.Cleanup(func() { img.Close() })
	}
	return img, err
}

// readAll reads the whole image and walks its extents, returning the first
// error.
func readAll(img disk.Image) error {
	for _, err := range img.Extents(context.Background(), 0, img.Size()) {
		if err != nil {
			return err
		}
	}
	buf := make([]byte, mib)
	for off := int64(0); off < img.Size(); off += mib {
		if _, err := img.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
