package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// seedSpec describes a small hand-built dynamic or differencing VHD: tiny
// blocks make compact fuzz seeds.
type seedSpec struct {
	size, bs int64
	blocks   []int64 // allocated blocks, in file order
	bitmap   byte    // every bitmap byte
	diff     bool
}

var fuzzParentUUID = [16]byte{0xfe, 0x77, 0x01, 0x02, 0x03, 0x04, 0x45, 0x06, 0x87, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e}

func buildSeed(s seedSpec) []byte {
	nblocks := (s.size + s.bs - 1) / s.bs
	entries := max(nblocks, 1)
	bm := bitmapBytes(s.bs)
	off := int64(footerSize+headerSize) + roundUp(entries*4, sectorSize)
	h := dynHeader{dataOffset: ^uint64(0), tableOffset: footerSize + headerSize, version: headerVersion, maxEntries: uint32(entries), blockSize: uint32(s.bs)}
	typ := uint32(typeDynamic)
	var locs []locBlob
	if s.diff {
		typ = typeDiff
		h.parentUUID = fuzzParentUUID
		copy(h.parentName[:], encodeUTF16("parent.vhd", binary.BigEndian))
		_, locs = parentLocators("parent.vhd", "")
		for i := range locs {
			locs[i].off = off
			h.locators[i] = locator{code: locs[i].code, space: sectorSize, length: uint32(len(locs[i].data)), offset: uint64(off)}
			off += sectorSize
		}
	}
	bat := make([]uint32, entries)
	for i := range bat {
		bat[i] = unallocated
	}
	for i, b := range s.blocks {
		bat[b] = uint32((off + int64(i)*(bm+s.bs)) / sectorSize)
	}
	total := off + int64(len(s.blocks))*(bm+s.bs) + footerSize
	out := make([]byte, total)
	ft := newFooter(s.size, typ, footerSize)
	ft.uuid = [16]byte{1, 2, 3}
	ft.timestamp = 1
	raw := ft.marshal()
	copy(out, raw)
	copy(out[total-footerSize:], raw)
	copy(out[footerSize:], h.marshal())
	for i, e := range bat {
		binary.BigEndian.PutUint32(out[footerSize+headerSize+4*i:], e)
	}
	for _, l := range locs {
		copy(out[l.off:], l.data)
	}
	for i := range s.blocks {
		o := off + int64(i)*(bm+s.bs)
		for j := o; j < o+bm; j++ {
			out[j] = s.bitmap
		}
		for j := o + bm; j < o+bm+s.bs; j++ {
			out[j] = byte(i + 1)
		}
	}
	return out
}

// fuzzParent is a small fixed VHD whose UUID the differencing seeds name.
func fuzzParent() []byte {
	const size = 32 << 10
	b := make([]byte, size+footerSize)
	for i := range size {
		b[i] = byte(i*7 + 3)
	}
	ft := newFooter(size, typeFixed, ^uint64(0))
	ft.uuid = fuzzParentUUID
	copy(b[size:], ft.marshal())
	return b
}

func fuzzSeeds(t testing.TB) [][]byte {
	seeds := [][]byte{
		buildSeed(seedSpec{size: 8 << 10, bs: 2048, blocks: []int64{0, 2, 3}, bitmap: 0xFF}),
		buildSeed(seedSpec{size: 8<<10 + 512, bs: 2048, blocks: []int64{1, 4}, bitmap: 0xA5}),
		buildSeed(seedSpec{size: 8 << 10, bs: 512, blocks: []int64{3, 1}, bitmap: 0x80}),
		buildSeed(seedSpec{size: 32 << 10, bs: 4096, blocks: []int64{0, 3}, bitmap: 0xF0, diff: true}),
		buildSeed(seedSpec{size: 0, bs: 4096, diff: false}),
		fuzzParent(),
	}
	// What ferry's writer produces: a small fixed disk, an empty dynamic
	// disk, and corrupted variants.
	fixed := smallImage(t, "fixed")
	small := append(bytes.Clone(fixed[:2048]), fixed[len(fixed)-footerSize:]...)
	refooter(small, func(f *footer) { f.curSize, f.origSize = 2048, 2048 })
	seeds = append(seeds, small)
	var buf bytes.Buffer
	w, err := Format().Create(context.Background(), &buf, 1<<20, &disk.CreateOptions{Options: map[string]string{"block_size": "512K"}, Source: &listImage{size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	seeds = append(seeds, buf.Bytes())
	for _, s := range seeds[:4] {
		c := bytes.Clone(s)
		setBAT(c, 1, batEntry(c, 0)) // overlap
		seeds = append(seeds, c)
		seeds = append(seeds, s[:len(s)-300]) // truncated footer
	}
	return seeds
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	parent := fuzzParent()
	f.Fuzz(func(t *testing.T, b []byte) {
		opts := &disk.OpenOptions{OpenBacking: func(ctx context.Context, path, format string) (disk.Image, error) {
			if !strings.Contains(path, "parent") {
				return nil, fmt.Errorf("open %s: %w", path, errs.ErrNotFound)
			}
			return Format().Open(ctx, disk.BytesFile(path, parent), nil)
		}}
		fuzzOne(t, b, opts)
		// Mutations rarely keep the checksums valid: also try the input
		// with its checksums repaired, to reach the structure behind them.
		if c := fixChecksums(b); c != nil {
			fuzzOne(t, c, opts)
		}
	})
}

// fixChecksums returns a copy of b with the footer, footer copy and
// dynamic header checksums recomputed, or nil if there is nothing to fix.
func fixChecksums(b []byte) []byte {
	if len(b) < footerSize {
		return nil
	}
	c := bytes.Clone(b)
	fixed := false
	fix := func(p []byte, at int) {
		if want := checksumOf(p, at); binary.BigEndian.Uint32(p[at:]) != want {
			binary.BigEndian.PutUint32(p[at:], want)
			fixed = true
		}
	}
	var hdrOff uint64
	for _, off := range []int{0, len(c) - footerSize} {
		p := c[off : off+footerSize]
		if string(p[:8]) == footerCookie {
			fix(p, 64)
			hdrOff = binary.BigEndian.Uint64(p[16:])
		}
	}
	if hdrOff > 0 && hdrOff < uint64(len(c)) && uint64(len(c))-hdrOff >= headerSize {
		p := c[hdrOff : hdrOff+headerSize]
		if string(p[:8]) == headerCookie {
			fix(p, 36)
		}
	}
	if !fixed {
		return nil
	}
	return c
}

func fuzzOne(t *testing.T, b []byte, opts *disk.OpenOptions) {
	ctx := context.Background()
	Format().Probe(disk.BytesFile("fuzz.vhd", b))
	img, err := Format().Open(ctx, disk.BytesFile("fuzz.vhd", b), opts)
	if err != nil {
		switch errs.CodeOf(err) {
		case errs.Corrupt, errs.Unimplemented, errs.FailedPrecondition, errs.NotFound:
		default:
			t.Fatalf("open: error without a code: %v", err)
		}
		if !strings.Contains(err.Error(), "fuzz.vhd") {
			t.Fatalf("error does not name the file: %v", err)
		}
	} else {
		exerciseImage(t, img)
		img.Close()
	}
	for _, size := range []int64{0, int64(len(b))} {
		s, err := Format().OpenStream(ctx, bytes.NewReader(b), &disk.OpenOptions{Size: size})
		if err != nil {
			switch errs.CodeOf(err) {
			case errs.Corrupt, errs.Unimplemented:
			default:
				t.Fatalf("open stream: error without a code: %v", err)
			}
			continue
		}
		last := int64(0)
		for {
			off, p, err := s.Next(ctx)
			if err != nil {
				if err != io.EOF && errs.CodeOf(err) != errs.Corrupt {
					t.Fatalf("stream: %v", err)
				}
				break
			}
			if off < last || off+int64(len(p)) > s.Size() {
				t.Fatalf("stream run [%d, %d) after %d, size %d", off, off+int64(len(p)), last, s.Size())
			}
			last = off + int64(len(p))
		}
		s.Close()
	}
}

// exerciseImage reads every extent (bounded), checks their order, reads
// across the end, and runs Check.
func exerciseImage(t *testing.T, img disk.Image) {
	ctx := context.Background()
	next, budget := int64(0), int64(64<<20)
	buf := make([]byte, min(64<<10, max(img.Size(), 1)))
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil {
			t.Fatalf("extents: %v", err)
		}
		if e.Off != next || e.Len <= 0 {
			t.Fatalf("extent %+v does not follow %d", e, next)
		}
		next = e.End()
		for off := e.Off; e.Kind == disk.Data && off < e.End() && budget > 0; off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("read %d at %d: %v", n, off, err)
			}
			budget -= n
		}
	}
	if next != img.Size() {
		t.Fatalf("extents end at %d, size %d", next, img.Size())
	}
	if img.Size() > 0 {
		if _, err := img.ReadAt(buf[:min(4096, img.Size())], max(0, img.Size()-100)); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("read at the end: %v", err)
		}
	}
	img.Info()
	if _, err := img.(disk.Checker).Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
}

// TestSeeds opens the hand-built seeds: they must be valid.
func TestSeeds(t *testing.T) {
	parent := fuzzParent()
	opts := &disk.OpenOptions{OpenBacking: func(ctx context.Context, path, format string) (disk.Image, error) {
		return Format().Open(ctx, disk.BytesFile(path, parent), nil)
	}}
	for i, s := range fuzzSeeds(t)[:8] {
		img, err := Format().Open(t.Context(), disk.BytesFile(fmt.Sprintf("seed%d", i), s), opts)
		if err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		exerciseImage(t, img)
		checkClean(t, img)
		img.Close()
	}
}
