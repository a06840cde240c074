package vmdk

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"slices"
	"testing"

	"github.com/klauspost/compress/zlib"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// fuzzReadLimit bounds the bytes one input may make the target read.
const fuzzReadLimit = 8 << 20

// fuzzSeeds are small images of each kind ferry reads, some damaged.
func fuzzSeeds(t testing.TB) [][]byte {
	pt := &disktest.Pattern{Name: "seed", Size: 192*kib + 512, Seed: 7, Data: []disk.Extent{{Off: 0, Len: 70 * kib}}}
	dir := t.TempDir()
	writeImage(t, dir, "f.vmdk", MonolithicFlat, pt)
	desc := mustRead(t, dir+"/f.vmdk")
	sparse, tinyStream, vmware := tinyImage(false), tinyImage(true), tinyVMwareStream()
	return [][]byte{
		sparse, tinyStream, vmware, desc, outOfOrderStream(t),
		editHeader(sparse, 0, func(h *header) { h.capacity = 1 << 40 }),
		put32(sparse, 3*sectorSize+4, 2),
		put32(tinyStream, 3*sectorSize, 5),
		vmware[:len(vmware)-700],
		[]byte("# Disk DescriptorFile\ncreateType=\"custom\"\nRW 100 ZERO\nRDONLY 8 FLAT \"x-flat.vmdk\" 2\nparentCID=1\n"),
	}
}

// tinyVMwareStream is tinyImage(true) in VMware's stream layout: GD_AT_END
// in the header, the table and directory behind markers after the grains,
// footer and end-of-stream marker.
func tinyVMwareStream() []byte {
	b := tinyImage(true)
	h, _ := parseHeader(b)
	gt := bytes.Clone(b[3*sectorSize : 4*sectorSize])
	h.gdOffset = gdAtEnd
	copy(b, h.marshal())
	clear(b[2*sectorSize : 4*sectorSize])
	b = append(b, metaMarker(markerGT, 1)...)
	gtSector := len(b) / sectorSize
	b = append(b, gt...)
	b = append(b, metaMarker(markerGD, 1)...)
	gdSector := len(b) / sectorSize
	gd := make([]byte, sectorSize)
	binary.LittleEndian.PutUint32(gd, uint32(gtSector))
	b = append(b, gd...)
	b = append(b, metaMarker(markerFooter, 1)...)
	h.gdOffset = uint64(gdSector)
	b = append(b, h.marshal()...)
	return append(b, metaMarker(markerEOS, 0)...)
}

// tinyImage builds a sparse extent with 4 KiB grains and 128-entry tables,
// small enough for the fuzzer: 8 grains, grains 0 and 5 stored, grain 2 a
// zeroed-grain entry; compressed with markers when asked.
func tinyImage(compressed bool) []byte {
	h := header{version: 1, flags: flagValidNL | flagZeroGrain, capacity: 64, grainSize: 8,
		descOffset: 1, descSize: 1, numGTEs: 128, gdOffset: 2, overhead: 4}
	if compressed {
		h.version, h.flags, h.compression = 3, h.flags|flagCompressed|flagMarkers, compressDeflate
	}
	b := make([]byte, 4*sectorSize)
	copy(b, h.marshal())
	copy(b[sectorSize:], "# Disk DescriptorFile\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n")
	binary.LittleEndian.PutUint32(b[2*sectorSize:], 3)
	binary.LittleEndian.PutUint32(b[3*sectorSize+8:], 1)
	for _, g := range []int{0, 5} {
		binary.LittleEndian.PutUint32(b[3*sectorSize+g*4:], uint32(len(b)/sectorSize))
		data := bytes.Repeat([]byte{byte(g + 1), 'x', 'y', 'z'}, 1024)
		if !compressed {
			b = append(b, data...)
			continue
		}
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write(data)
		zw.Close()
		m := make([]byte, sectorsFor(12+int64(z.Len()))*sectorSize)
		binary.LittleEndian.PutUint64(m, uint64(g*8))
		binary.LittleEndian.PutUint32(m[8:], uint32(z.Len()))
		copy(m[12:], z.Bytes())
		b = append(b, m...)
	}
	return b
}

// FuzzOpen opens arbitrary bytes as a VMDK, walks the extents, reads every
// data extent (up to a limit), checks the image and reads it as a stream.
// Nothing may panic, hang or allocate without bound.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		// A directory that does not exist: descriptor extents resolve
		// to nothing on this machine.
		img, err := Format().Open(ctx, disk.BytesFile("/nonexistent-ferry-fuzz/fuzz.vmdk", b), &disk.OpenOptions{})
		if err == nil {
			read := int64(0)
			buf := make([]byte, 64*kib)
			for e, err := range img.Extents(ctx, 0, img.Size()) {
				if err != nil || read > fuzzReadLimit {
					break
				}
				if e.Kind != disk.Data {
					continue
				}
				for off := e.Off; off < e.End() && read <= fuzzReadLimit; off += int64(len(buf)) {
					n := min(int64(len(buf)), e.End()-off)
					if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
						break
					}
					read += n
				}
			}
			if img.Size() > 0 {
				img.ReadAt(buf[:min(int64(len(buf)), img.Size())], 0)
			}
			if c, ok := img.(disk.Checker); ok {
				c.Check(ctx)
			}
			img.Close()
		}
		s, err := Format().OpenStream(ctx, bytes.NewReader(b), nil)
		if err == nil {
			for n := 0; n < 100000; n++ {
				if _, _, err := s.Next(ctx); err != nil {
					break
				}
			}
			s.Close()
		}
	})
}

// TestFuzzSeedsValid makes sure the undamaged seeds open and read as
// built, so the fuzzer starts from images that reach deep.
func TestFuzzSeedsValid(t *testing.T) {
	seeds := fuzzSeeds(t)
	for i, b := range seeds[:3] {
		if i > 0 {
			s, err := Format().OpenStream(t.Context(), bytes.NewReader(b), nil)
			if err != nil {
				t.Fatal(err)
			}
			var offs []int64
			for {
				off, _, err := s.Next(t.Context())
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("seed %d: stream: %v", i, err)
				}
				offs = append(offs, off)
			}
			if !slices.Equal(offs, []int64{0, 5 * 4096}) {
				t.Fatalf("seed %d: stream runs at %v", i, offs)
			}
		}
		img, err := openBytes(t, "seed.vmdk", b)
		if err != nil {
			t.Fatal(err)
		}
		if err := readAll(img); err != nil {
			t.Fatal(err)
		}
		var kinds []disk.ExtentKind
		for e, err := range img.Extents(t.Context(), 0, img.Size()) {
			if err != nil {
				t.Fatal(err)
			}
			kinds = append(kinds, e.Kind)
		}
		want := []disk.ExtentKind{disk.Data, disk.Unallocated, disk.Zero, disk.Unallocated, disk.Data, disk.Unallocated}
		if !slices.Equal(kinds, want) {
			t.Fatalf("seed %d: extents %v, want %v", i, kinds, want)
		}
		got := make([]byte, 4096)
		if _, err := img.ReadAt(got, 5*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{6, 'x', 'y', 'z'}, 1024)) {
			t.Fatalf("seed %d: grain 5 reads wrong", i)
		}
	}
}
