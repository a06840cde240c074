package qcow2

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// fuzzSeeds are small images ferry writes, plus damaged copies.
func fuzzSeeds(t testing.TB) [][]byte {
	pt := &disktest.Pattern{Name: "seed", Size: 20 * KiB, Seed: 7, Data: []disk.Extent{
		{Off: 0, Len: 1 * KiB}, {Off: 9*KiB + 512, Len: 1 * KiB}, {Off: 19 * KiB, Len: 1 * KiB},
	}}
	var seeds [][]byte
	for _, opts := range []map[string]string{
		{"cluster_size": "512"},
		{"cluster_size": "512", "compat": "0.10"},
		{"cluster_size": "512", "compress": "on"},
		{"cluster_size": "1024", "compress": "on", "compression_type": "zstd"},
	} {
		path := filepath.Join(t.TempDir(), "seed.qcow2")
		writeFerry(t, path, pt, &disk.CreateOptions{Options: opts})
		b := readFile(t, path)
		seeds = append(seeds, b)
		damaged := append([]byte(nil), b...)
		for i := 0; i < len(damaged); i += 97 {
			damaged[i] ^= 0x40
		}
		seeds = append(seeds, damaged, b[:len(b)/2])
	}
	return seeds
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		img, err := openBytes(b)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 256*KiB)
		budget, extents := int64(64<<20), 0
		next := int64(0)
		for e, err := range img.Extents(ctx, 0, img.Size()) {
			if err != nil {
				break
			}
			if e.Off != next || e.Len <= 0 {
				t.Fatalf("extent %+v does not follow %d", e, next)
			}
			next = e.End()
			if extents++; extents > 10000 {
				break
			}
			if e.Kind != disk.Data {
				continue
			}
			for off := e.Off; off < e.End() && budget > 0; {
				n := min(int64(len(buf)), e.End()-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil {
					break
				}
				budget -= n
				off += n
			}
		}
		if _, err := img.(disk.Checker).Check(ctx); err != nil {
			t.Logf("check: %v", err)
		}
	})
}
