package xva

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

const benchSize = 256 * MiB

func benchPattern() *disktest.Pattern { return disktest.MakePattern("bench", benchSize, 0.5, 11) }

// rawSource opens pt written as a sparse raw file.
func rawSource(b *testing.B, pt *disktest.Pattern) disk.Image {
	b.Helper()
	p := filepath.Join(b.TempDir(), "src.raw")
	disktest.WriteRaw(b, pt, p)
	f, err := disk.OpenFile(p)
	if err != nil {
		b.Fatal(err)
	}
	img, err := raw.Format().Open(context.Background(), f, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	return img
}

// writeBench converts src into an XVA file at path.
func writeBench(b *testing.B, src disk.Image, path string, opts map[string]string) {
	ctx := context.Background()
	out, err := disk.CreateOutputFile(path)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Abort()
	vm := vmFor("bench", &disktest.Pattern{Name: "bench", Size: src.Size()})
	w, err := Format().Create(ctx, out, vm, &archive.CreateOptions{Options: opts})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	dw, err := w.NextDisk(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := disk.Convert(ctx, dw, src, nil); err != nil {
		b.Fatal(err)
	}
	if err := dw.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	if err := out.Commit(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkWrite(b *testing.B) {
	src := rawSource(b, benchPattern())
	for _, kind := range []string{"xxhash", "sha1"} {
		b.Run(kind, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "vm.xva")
			b.SetBytes(benchSize)
			b.ResetTimer()
			for range b.N {
				writeBench(b, src, path, map[string]string{"checksum": kind})
			}
		})
	}
}

func benchArchive(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "vm.xva")
	writeBench(b, rawSource(b, benchPattern()), path, nil)
	return path
}

// BenchmarkRead opens the archive and reads the whole disk in 1 MiB
// pieces, every chunk checked on first read.
func BenchmarkRead(b *testing.B) {
	path := benchArchive(b)
	ctx := context.Background()
	buf := make([]byte, MiB)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		f, err := disk.OpenFile(path)
		if err != nil {
			b.Fatal(err)
		}
		r, err := Format().Open(ctx, f, nil)
		if err != nil {
			b.Fatal(err)
		}
		img, err := r.OpenDisk(ctx, 0)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < img.Size(); off += MiB {
			if _, err := img.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
				b.Fatal(err)
			}
		}
		r.Close()
	}
}

// BenchmarkReadStream reads the archive front to back with OpenStream.
func BenchmarkReadStream(b *testing.B) {
	path := benchArchive(b)
	ctx := context.Background()
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := streamAll(ctx, f, 1<<40); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
