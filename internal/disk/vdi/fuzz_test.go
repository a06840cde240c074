package vdi

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// fuzzSeeds are small images ferry's writer produces, with 512-byte and
// 4 KiB blocks so that they stay small, and damaged copies of them.
func fuzzSeeds(t testing.TB) [][]byte {
	dyn := makeImage(t, 8*512, 512, false, write{3 * 512, 700, 1}, write{0, 100, 2}, write{7*512 + 1, 511, 3})
	fixed := makeImage(t, 6*512, 512, true, write{512 + 10, 600, 4})
	k4 := makeImage(t, 5*4096-512, 4096, false, write{4096, 8192, 5})
	empty := makeImage(t, 0, 512, false)
	seeds := [][]byte{dyn, fixed, k4, empty}
	for _, m := range []func([]byte) []byte{
		entry(1, 1), entry(2, 9), entry(4, blockZero), set32(offAllocated, 2), set32(offBlocks, 9),
		set32(offDataArea, 0x100), set64(offDiskSize, 1<<50), set32(offImageType, typeDiff), cut(len(dyn) - 1),
	} {
		seeds = append(seeds, m(bytes.Clone(dyn)))
	}
	return seeds
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		file := disk.BytesFile("fuzz.vdi", b)
		probed := Format().Probe(file)
		img, err := Format().Open(ctx, file, nil)
		if err != nil {
			if c := errs.CodeOf(err); c != errs.Corrupt && c != errs.Unimplemented {
				t.Fatalf("open: %v: code %v", err, c)
			}
			if !strings.Contains(err.Error(), "fuzz.vdi") {
				t.Fatalf("open: %v does not name the file", err)
			}
			return
		}
		if !probed {
			t.Fatal("opened an image probe refuses")
		}
		defer img.Close()
		// Every extent, in order; every data byte reads without error,
		// since Open checked every data block lies in the file.
		var next int64
		buf := make([]byte, 64<<10)
		for e, err := range img.Extents(ctx, 0, img.Size()) {
			if err != nil {
				t.Fatal(err)
			}
			if e.Off != next || e.Len <= 0 {
				t.Fatalf("extent %+v does not follow %d", e, next)
			}
			next = e.End()
			if e.Kind != disk.Data {
				if e.Len <= int64(len(buf)) { // small holes: they read as zeros
					p := buf[:e.Len]
					if _, err := img.ReadAt(p, e.Off); err != nil && err != io.EOF {
						t.Fatal(err)
					}
					if !allZero(p) {
						t.Fatalf("%v extent %+v does not read as zeros", e.Kind, e)
					}
				}
				continue
			}
			for off := e.Off; off < e.End(); off += int64(len(buf)) {
				p := buf[:min(int64(len(buf)), e.End()-off)]
				if n, err := img.ReadAt(p, off); n != len(p) || (err != nil && err != io.EOF) {
					t.Fatalf("read %d at %d: %d, %v", len(p), off, n, err)
				}
			}
		}
		if next != img.Size() {
			t.Fatalf("extents end at %d, size %d", next, img.Size())
		}
		if _, err := img.(disk.Checker).Check(ctx); err != nil {
			t.Fatal(err)
		}
		_ = img.Info()
	})
}
