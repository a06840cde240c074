package qcow2

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// piece is a run of pattern data to write.
type piece struct {
	off  int64
	data []byte
}

// pieces cuts pt's data into ascending pieces of up to 2 MiB (as a
// converter would hand them over). Their content is generated once, for a
// window of at most 64 MiB that repeats over bigger disks, so that the
// benchmark measures the writer, not the pattern generator.
func pieces(pt *disktest.Pattern) []piece {
	const maxPiece, window = 2 << 20, 64 << 20
	var out []piece
	var pool []byte
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); {
			n := min(maxPiece, e.End()-off)
			var data []byte
			if len(pool) < window {
				data = make([]byte, n)
				pt.Fill(off, data)
				pool = append(pool, data...)
			} else {
				s := (off % (window - maxPiece)) &^ 4095
				data = pool[s : s+n]
			}
			out = append(out, piece{off, data})
			off += n
		}
	}
	return out
}

var benchVariants = []variant{
	{name: "plain"},
	{name: "zlib", opts: map[string]string{"compress": "on"}},
	{name: "zstd", opts: map[string]string{"compress": "on", "compression_type": "zstd"}},
}

func benchWrite(b *testing.B, pt *disktest.Pattern, opts map[string]string, parallel bool) {
	ps := pieces(pt)
	path := filepath.Join(b.TempDir(), "bench.qcow2")
	b.SetBytes(pt.DataBytes())
	b.ResetTimer()
	for b.Loop() {
		ctx := context.Background()
		w, err := registry().Create(ctx, path, "qcow2", pt.Size, &disk.CreateOptions{Options: opts})
		if err != nil {
			b.Fatal(err)
		}
		if parallel && !w.Sequential() {
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := g; i < len(ps); i += 4 {
						if _, err := w.WriteAt(ps[i].data, ps[i].off); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		} else {
			for _, p := range ps {
				if _, err := w.WriteAt(p.data, p.off); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := w.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWrite writes a 256 MiB disk, 40% data; MB/s is of data.
func BenchmarkWrite(b *testing.B) {
	pt := disktest.MakePattern("bench", 256*MiB, 0.4, 1)
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) { benchWrite(b, pt, v.opts, false) })
	}
	b.Run("plain-4writers", func(b *testing.B) { benchWrite(b, pt, nil, true) })
}

// BenchmarkWriteCompressed4GiB is the compression target: a 4 GiB disk,
// 40% mixed data.
func BenchmarkWriteCompressed4GiB(b *testing.B) {
	if testing.Short() {
		b.Skip("4 GiB")
	}
	pt := disktest.MakePattern("bench4g", 4*disktest.GiB, 0.4, 1)
	for _, v := range benchVariants[1:] {
		b.Run(v.name, func(b *testing.B) { benchWrite(b, pt, v.opts, false) })
	}
}

// BenchmarkRead reads every data extent of a 256 MiB disk (40% data) in
// 2 MiB reads, from one goroutine and from four.
func BenchmarkRead(b *testing.B) {
	pt := disktest.MakePattern("bench", 256*MiB, 0.4, 1)
	for _, v := range benchVariants {
		path := filepath.Join(b.TempDir(), "bench.qcow2")
		writeFerry(b, path, pt, &disk.CreateOptions{Options: v.opts})
		for _, readers := range []int{1, 4} {
			name := v.name
			if readers > 1 {
				name += "-4readers"
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(pt.DataBytes())
				for b.Loop() {
					benchRead(b, path, readers)
				}
			})
		}
	}
}

func benchRead(b *testing.B, path string, readers int) {
	ctx := context.Background()
	f, err := disk.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	img, err := Format().Open(ctx, f, &disk.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	var chunks []disk.Extent
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil {
			b.Fatal(err)
		}
		if e.Kind != disk.Data {
			continue
		}
		for off := e.Off; off < e.End(); off += 2 << 20 {
			chunks = append(chunks, disk.Extent{Off: off, Len: min(2<<20, e.End()-off)})
		}
	}
	var wg sync.WaitGroup
	for g := range readers {
		wg.Go(func() {
			buf := make([]byte, 2<<20)
			for i := g; i < len(chunks); i += readers {
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

// BenchmarkConvert runs disk.Convert raw→qcow2 and qcow2→raw over a
// 256 MiB disk, 40% data, as the CLI would.
func BenchmarkConvert(b *testing.B) {
	pt := disktest.MakePattern("bench", 256*MiB, 0.4, 1)
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(b, pt, src)
	conv := func(b *testing.B, in, inFmt, out, outFmt string, opts map[string]string) {
		// replacing a big output file costs the file system more than
		// the conversion: remove it untimed
		b.StopTimer()
		os.Remove(out)
		b.StartTimer()
		ctx := context.Background()
		img, err := registry().Open(ctx, in, &disk.RegistryOpenOptions{Format: inFmt})
		if err != nil {
			b.Fatal(err)
		}
		defer img.Close()
		w, err := registry().Create(ctx, out, outFmt, img.Size(), &disk.CreateOptions{Options: opts})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		if _, err := disk.Convert(ctx, w, img, nil); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	for _, v := range benchVariants {
		b.Run("raw-to-"+v.name, func(b *testing.B) {
			b.SetBytes(pt.DataBytes())
			for b.Loop() {
				conv(b, src, "raw", filepath.Join(dir, v.name+".qcow2"), "qcow2", v.opts)
			}
		})
		b.Run(v.name+"-to-raw", func(b *testing.B) {
			b.SetBytes(pt.DataBytes())
			for b.Loop() {
				conv(b, filepath.Join(dir, v.name+".qcow2"), "qcow2", filepath.Join(dir, "out.raw"), "raw", nil)
			}
		})
	}
}
