package vdi

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

// benchPattern is a 256 MiB disk about half data, in runs of 4 KiB to 2 MiB.
func benchPattern() *disktest.Pattern {
	return disktest.MakePattern("bench", 256*disktest.MiB, 0.5, 11)
}

// convertTo converts the image at src (format from) into a new image at dst.
func convertTo(b *testing.B, reg *disk.Registry, src, from, dst, to string, opts map[string]string) {
	b.Helper()
	ctx := context.Background()
	in, err := reg.Open(ctx, src, &disk.RegistryOpenOptions{Format: from})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	w, err := reg.Create(ctx, dst, to, in.Size(), &disk.CreateOptions{Options: opts})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	if _, err := disk.Convert(ctx, w, in, nil); err != nil {
		b.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		b.Fatal(err)
	}
}

// removeUntimed deletes a benchmark's output outside the timed part. Each
// iteration writes a new file: replacing an existing one makes ext4 flush
// the new file's data on rename, which would time the disk, not ferry.
func removeUntimed(b *testing.B, path string) {
	b.StopTimer()
	os.Remove(path)
	b.StartTimer()
}

// BenchmarkWrite converts a raw file into VDI (raw→vdi); bytes are the
// pattern's data bytes.
func BenchmarkWrite(b *testing.B) {
	pt := benchPattern()
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(b, pt, src)
	reg := disk.NewRegistry(Format(), raw.Format())
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			b.SetBytes(pt.DataBytes())
			for i := 0; b.Loop(); i++ {
				out := filepath.Join(dir, fmt.Sprintf("out%d.vdi", i))
				convertTo(b, reg, src, "raw", out, "vdi", v.opts)
				removeUntimed(b, out)
			}
		})
	}
}

// BenchmarkRead converts VDI into a raw file (vdi→raw).
func BenchmarkRead(b *testing.B) {
	pt := benchPattern()
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(b, pt, src)
	reg := disk.NewRegistry(Format(), raw.Format())
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			img := filepath.Join(dir, v.name+".vdi")
			convertTo(b, reg, src, "raw", img, "vdi", v.opts)
			b.SetBytes(pt.DataBytes())
			for i := 0; b.Loop(); i++ {
				out := filepath.Join(dir, fmt.Sprintf("out%d.raw", i))
				convertTo(b, reg, img, "vdi", out, "raw", nil)
				removeUntimed(b, out)
			}
		})
	}
}

// BenchmarkReadAt reads every data extent of a dynamic image with 4
// goroutines in 2 MiB pieces: the reader alone, no output.
func BenchmarkReadAt(b *testing.B) {
	pt := benchPattern()
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(b, pt, src)
	reg := disk.NewRegistry(Format(), raw.Format())
	path := filepath.Join(dir, "img.vdi")
	convertTo(b, reg, src, "raw", path, "vdi", nil)
	img, err := reg.Open(context.Background(), path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	var pieces []disk.Extent
	for e, err := range img.Extents(context.Background(), 0, img.Size()) {
		if err != nil {
			b.Fatal(err)
		}
		for off := e.Off; e.Kind == disk.Data && off < e.End(); off += 2 * disktest.MiB {
			pieces = append(pieces, disk.Extent{Off: off, Len: min(2*disktest.MiB, e.End()-off)})
		}
	}
	var n int64
	for _, p := range pieces {
		n += p.Len
	}
	b.SetBytes(n)
	for b.Loop() {
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				buf := make([]byte, 2*disktest.MiB)
				for i := g; i < len(pieces); i += 4 {
					if _, err := img.ReadAt(buf[:pieces[i].Len], pieces[i].Off); err != nil && err != io.EOF {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}
