package vhdx

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// benchPattern is a 256 MiB disk about half full.
func benchPattern() *disktest.Pattern {
	return disktest.MakePattern("bench", 256*mib, 0.5, 1)
}

type chunk struct {
	off int64
	b   []byte
}

// benchChunks cuts pt's data into pieces of up to 4 MiB, filled.
func benchChunks(pt *disktest.Pattern) []chunk {
	var cs []chunk
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); off += 4 * mib {
			b := make([]byte, min(4*mib, e.End()-off))
			pt.Fill(off, b)
			cs = append(cs, chunk{off, b})
		}
	}
	return cs
}

// writeChunks writes cs into a new image with two workers, as a
// conversion would.
func writeChunks(tb testing.TB, path string, size int64, cs []chunk, opts map[string]string) {
	ctx := tb.Context()
	w, err := disk.NewRegistry(Format()).Create(ctx, path, "vhdx", size, &disk.CreateOptions{Options: opts})
	if err != nil {
		tb.Fatal(err)
	}
	defer w.Close()
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := g; i < len(cs); i += 2 {
				if _, err := w.WriteAt(cs[i].b, cs[i].off); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := w.Commit(ctx); err != nil {
		tb.Fatal(err)
	}
}

func BenchmarkWrite(b *testing.B) {
	pt := benchPattern()
	cs := benchChunks(pt)
	for _, v := range []struct {
		name string
		opts map[string]string
	}{{"dynamic", nil}, {"fixed", map[string]string{"subformat": "fixed"}}} {
		b.Run(v.name, func(b *testing.B) {
			dir := b.TempDir()
			b.SetBytes(pt.DataBytes())
			for b.Loop() {
				path := filepath.Join(dir, "bench.vhdx")
				writeChunks(b, path, pt.Size, cs, v.opts)
				os.Remove(path)
			}
		})
	}
}

func BenchmarkRead(b *testing.B) {
	pt := benchPattern()
	cs := benchChunks(pt)
	for _, v := range []struct {
		name string
		opts map[string]string
	}{{"dynamic", nil}, {"fixed", map[string]string{"subformat": "fixed"}}} {
		b.Run(v.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "bench.vhdx")
			writeChunks(b, path, pt.Size, cs, v.opts)
			buf := make([]byte, 4*mib)
			b.SetBytes(pt.DataBytes())
			for b.Loop() {
				f, err := disk.OpenFile(path)
				if err != nil {
					b.Fatal(err)
				}
				img, err := Format().Open(b.Context(), f, nil)
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
					for off := e.Off; off < e.End(); off += int64(len(buf)) {
						p := buf[:min(int64(len(buf)), e.End()-off)]
						if _, err := img.ReadAt(p, off); err != nil && err != io.EOF {
							b.Fatal(err)
						}
					}
				}
				img.Close()
			}
		})
	}
}
