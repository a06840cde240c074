package vhd

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

// The benchmarks are conversions as the CLI runs them (disk.Convert with
// its defaults) over a 256 MiB disk about half data; MB/s is of data.

const benchSize = 256 << 20

func benchRegistry() *disk.Registry { return disk.NewRegistry(Format(), raw.Format()) }

// benchRaw writes the benchmark pattern as a sparse raw file.
func benchRaw(b *testing.B) (*disktest.Pattern, string) {
	b.Helper()
	pt := disktest.MakePattern("bench", benchSize, 0.5, 1)
	path := filepath.Join(b.TempDir(), "src.raw")
	disktest.WriteRaw(b, pt, path)
	return pt, path
}

// convertFile converts the image at src into a new image at dst.
func convertFile(b *testing.B, src, srcFormat, dst, dstFormat string, opts map[string]string) {
	ctx := context.Background()
	reg := benchRegistry()
	in, err := reg.Open(ctx, src, &disk.RegistryOpenOptions{Format: srcFormat})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	w, err := reg.Create(ctx, dst, dstFormat, in.Size(), &disk.CreateOptions{Options: opts, Source: in})
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

func benchWrite(b *testing.B, opts map[string]string) {
	pt, src := benchRaw(b)
	dst := filepath.Join(b.TempDir(), "out.vhd")
	b.SetBytes(pt.DataBytes())
	b.ResetTimer()
	for range b.N {
		convertFile(b, src, "raw", dst, "vhd", opts)
	}
}

// BenchmarkWriteDynamic is raw → dynamic VHD (qemu-img convert -O vpc).
func BenchmarkWriteDynamic(b *testing.B) { benchWrite(b, nil) }

// BenchmarkWriteFixed is raw → fixed VHD.
func BenchmarkWriteFixed(b *testing.B) { benchWrite(b, map[string]string{"subformat": "fixed"}) }

// BenchmarkWriteDynamicStream is raw → dynamic VHD on a pipe drained to
// io.Discard.
func BenchmarkWriteDynamicStream(b *testing.B) {
	pt, src := benchRaw(b)
	ctx := context.Background()
	b.SetBytes(pt.DataBytes())
	b.ResetTimer()
	for range b.N {
		in, err := benchRegistry().Open(ctx, src, &disk.RegistryOpenOptions{Format: "raw"})
		if err != nil {
			b.Fatal(err)
		}
		pr, pw := io.Pipe()
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, pr); close(done) }()
		w, err := Format().Create(ctx, pw, pt.Size, &disk.CreateOptions{Source: in})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := disk.Convert(ctx, w, in, nil); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		pw.Close()
		<-done
		in.Close()
	}
}

func benchRead(b *testing.B, opts map[string]string) {
	pt, src := benchRaw(b)
	dir := b.TempDir()
	img := filepath.Join(dir, "img.vhd")
	convertFile(b, src, "raw", img, "vhd", opts)
	os.Remove(src)
	dst := filepath.Join(dir, "out.raw")
	b.SetBytes(pt.DataBytes())
	b.ResetTimer()
	for range b.N {
		convertFile(b, img, "vhd", dst, "raw", nil)
	}
}

// BenchmarkReadDynamic is dynamic VHD → raw.
func BenchmarkReadDynamic(b *testing.B) { benchRead(b, nil) }

// BenchmarkReadFixed is fixed VHD → raw.
func BenchmarkReadFixed(b *testing.B) { benchRead(b, map[string]string{"subformat": "fixed"}) }

// BenchmarkReadDynamicStream reads a dynamic VHD with OpenStream.
func BenchmarkReadDynamicStream(b *testing.B) {
	pt, src := benchRaw(b)
	img := filepath.Join(b.TempDir(), "img.vhd")
	convertFile(b, src, "raw", img, "vhd", nil)
	ctx := context.Background()
	b.SetBytes(pt.DataBytes())
	b.ResetTimer()
	for range b.N {
		f, err := os.Open(img)
		if err != nil {
			b.Fatal(err)
		}
		s, err := Format().OpenStream(ctx, f, nil)
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, _, err := s.Next(ctx)
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
