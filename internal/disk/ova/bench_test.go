package ova

import (
	"errors"
	"io"
	"os"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// benchPattern is a 256 MiB disk, about half of it data.
func benchPattern() *disktest.Pattern { return disktest.MakePattern("bench", 256<<20, 0.5, 42) }

// plain hides everything but Write: a streamed output.
type plain struct{ io.Writer }

func BenchmarkWriteFile(b *testing.B) {
	pt := benchPattern()
	vm := testVM("bench", core.BIOS, pt)
	dir := b.TempDir()
	b.SetBytes(pt.Size)
	for b.Loop() {
		path := writeFile(b, dir, vm, []*disktest.Pattern{pt}, nil)
		os.Remove(path)
	}
}

func BenchmarkWriteStream(b *testing.B) {
	pt := benchPattern()
	vm := testVM("bench", core.BIOS, pt)
	b.Setenv("TMPDIR", b.TempDir())
	b.SetBytes(pt.Size)
	for b.Loop() {
		writeArchive(b, plain{io.Discard}, vm, []*disktest.Pattern{pt}, nil)
	}
}

// benchOVA writes the benchmark OVA once.
func benchOVA(b *testing.B) (string, *disktest.Pattern) {
	pt := benchPattern()
	return writeFile(b, b.TempDir(), testVM("bench", core.BIOS, pt), []*disktest.Pattern{pt}, nil), pt
}

func BenchmarkReadDisk(b *testing.B) {
	path, pt := benchOVA(b)
	r := openFile(b, path)
	buf := make([]byte, 4<<20)
	b.SetBytes(pt.Size)
	for b.Loop() {
		img, err := r.OpenDisk(b.Context(), 0)
		if err != nil {
			b.Fatal(err)
		}
		for e, err := range img.Extents(b.Context(), 0, img.Size()) {
			if err != nil {
				b.Fatal(err)
			}
			if e.Kind != disk.Data {
				continue
			}
			for off := e.Off; off < e.End(); {
				n := min(int64(len(buf)), e.End()-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
					b.Fatal(err)
				}
				off += n
			}
		}
		img.Close()
	}
}

func BenchmarkReadStream(b *testing.B) {
	path, pt := benchOVA(b)
	b.SetBytes(pt.Size)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		sr, err := Format().OpenStream(b.Context(), plainReader{f}, &archive.OpenOptions{Disks: testRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, s, err := sr.NextDisk(b.Context())
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, _, err := s.Next(b.Context()); err != nil {
					if !errors.Is(err, io.EOF) {
						b.Fatal(err)
					}
					break
				}
			}
		}
		sr.Close()
		f.Close()
	}
}

type plainReader struct{ io.Reader }

func BenchmarkVerify(b *testing.B) {
	path, _ := benchOVA(b)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	r := openFile(b, path)
	b.SetBytes(st.Size())
	for b.Loop() {
		if err := r.Verify(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
}
