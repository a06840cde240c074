package vmdk

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// benchPattern is a 256 MiB disk, 60% data of mixed random, text-like and
// zero 4 KiB blocks.
var benchPattern = sync.OnceValues(func() (*disktest.Pattern, []byte) {
	pt := disktest.MakePattern("bench", 256*disktest.MiB, 0.6, 42)
	return pt, pt.Bytes()
})

// writeAll writes the pattern's data ranges from src in ascending 1 MiB
// pieces, as Convert hands them to a sequential writer.
func writeAll(b *testing.B, w disk.Writer, pt *disktest.Pattern, src []byte) {
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); {
			n := min(disktest.MiB, e.End()-off)
			if _, err := w.WriteAt(src[off:off+n], off); err != nil {
				b.Fatal(err)
			}
			off += n
		}
	}
	if err := w.Commit(b.Context()); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
}

type discard struct{ n int64 }

func (d *discard) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }

// BenchmarkWriteStream measures streamOptimized output to a plain
// (non-seekable) target: compression on all cores is the work.
func BenchmarkWriteStream(b *testing.B) {
	pt, src := benchPattern()
	b.SetBytes(pt.DataBytes())
	b.ReportAllocs()
	var out int64
	for b.Loop() {
		d := &discard{}
		w, err := Format().Create(b.Context(), d, pt.Size, &disk.CreateOptions{Options: map[string]string{"subformat": StreamOptimized}})
		if err != nil {
			b.Fatal(err)
		}
		writeAll(b, w, pt, src)
		out = d.n
	}
	b.ReportMetric(float64(out)/float64(pt.DataBytes()), "ratio")
}

// BenchmarkWriteStreamFile writes streamOptimized to a file in b.TempDir().
func BenchmarkWriteStreamFile(b *testing.B) {
	benchWriteFile(b, StreamOptimized)
}

func BenchmarkWriteSparse(b *testing.B) {
	benchWriteFile(b, MonolithicSparse)
}

func benchWriteFile(b *testing.B, sub string) {
	pt, src := benchPattern()
	reg := disk.NewRegistry(Format())
	path := filepath.Join(b.TempDir(), "out.vmdk")
	b.SetBytes(pt.DataBytes())
	for b.Loop() {
		w, err := reg.Create(b.Context(), path, "vmdk", pt.Size, &disk.CreateOptions{Options: map[string]string{"subformat": sub}})
		if err != nil {
			b.Fatal(err)
		}
		writeAll(b, w, pt, src)
	}
}

// benchImage writes the bench pattern once per subformat and returns the
// path.
func benchImage(b *testing.B, sub string) string {
	pt, src := benchPattern()
	path := filepath.Join(b.TempDir(), sub+".vmdk")
	w, err := disk.NewRegistry(Format()).Create(b.Context(), path, "vmdk", pt.Size, &disk.CreateOptions{Options: map[string]string{"subformat": sub}})
	if err != nil {
		b.Fatal(err)
	}
	writeAll(b, w, pt, src)
	return path
}

// BenchmarkReadStream reads the data extents of a streamOptimized image in
// 2 MiB chunks from 4 goroutines, as Convert does.
func BenchmarkReadStream(b *testing.B) { benchRead(b, StreamOptimized) }

func BenchmarkReadSparse(b *testing.B) { benchRead(b, MonolithicSparse) }

func benchRead(b *testing.B, sub string) {
	pt, _ := benchPattern()
	path := benchImage(b, sub)
	img, err := disk.NewRegistry(Format()).Open(b.Context(), path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	var chunks []disk.Extent
	for e, err := range img.Extents(b.Context(), 0, img.Size()) {
		if err != nil {
			b.Fatal(err)
		}
		if e.Kind != disk.Data {
			continue
		}
		for off := e.Off; off < e.End(); off += 2 * disktest.MiB {
			chunks = append(chunks, disk.Extent{Off: off, Len: min(2*disktest.MiB, e.End()-off)})
		}
	}
	b.SetBytes(pt.DataBytes())
	for b.Loop() {
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				buf := make([]byte, 2*disktest.MiB)
				for i := g; i < len(chunks); i += 4 {
					c := chunks[i]
					if _, err := img.ReadAt(buf[:c.Len], c.Off); err != nil && err != io.EOF {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

// BenchmarkReadStreamPipe reads a streamOptimized image front to back with
// OpenStream.
func BenchmarkReadStreamPipe(b *testing.B) {
	pt, _ := benchPattern()
	path := benchImage(b, StreamOptimized)
	b.SetBytes(pt.DataBytes())
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		s, err := Format().OpenStream(b.Context(), struct{ io.Reader }{f}, nil)
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, _, err := s.Next(b.Context())
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		s.Close()
		f.Close()
	}
}
