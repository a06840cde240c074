package vmdk

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// testImages are small valid images ferry writes: a monolithicSparse and a
// streamOptimized of 40 MiB (two grain tables) with data in both spans.
func testImages(t testing.TB) (sparse, stream []byte) {
	pt := &disktest.Pattern{Name: "small", Size: 40 * mib, Seed: 11, Data: []disk.Extent{
		{Off: 0, Len: 192 * kib}, {Off: 33 * mib, Len: 128 * kib},
	}}
	dir := t.TempDir()
	return mustRead(t, writeImage(t, dir, "m.vmdk", MonolithicSparse, pt)),
		mustRead(t, writeImage(t, dir, "s.vmdk", StreamOptimized, pt))
}

// editHeader returns a copy of b with the header at off changed by fn.
func editHeader(b []byte, off int, fn func(h *header)) []byte {
	b = bytes.Clone(b)
	h, _ := parseHeader(b[off:])
	fn(&h)
	copy(b[off:], h.marshal())
	return b
}

func put32(b []byte, off int64, v uint32) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint32(b[off:], v)
	return b
}

// TestCorruptSparse damages ferry's own images in every way the reader
// checks and expects a coded error naming the file, from Open or from
// reading, and never a panic.
func TestCorruptSparse(t *testing.T) {
	sparse, stream := testImages(t)
	h, _ := parseHeader(sparse)
	gd := int64(h.gdOffset) * sectorSize
	gt0 := int64(binary.LittleEndian.Uint32(sparse[gd:])) * sectorSize
	gt1 := int64(binary.LittleEndian.Uint32(sparse[gd+4:])) * sectorSize
	fh, _ := parseHeader(stream[len(stream)-1024:])
	sgd := int64(fh.gdOffset) * sectorSize
	sgt0 := int64(binary.LittleEndian.Uint32(stream[sgd:])) * sectorSize
	sgrain0 := int64(binary.LittleEndian.Uint32(stream[sgt0:])) * sectorSize

	for _, tc := range []struct {
		name   string
		b      []byte
		code   errs.Code
		text   string
		onRead bool // Open succeeds; reading fails
	}{
		{"too short", sparse[:100], errs.Corrupt, "too short", false},
		{"truncated before grains", sparse[:40*1024], errs.Corrupt, "truncated", false},
		{"truncated grains", sparse[:len(sparse)-64*1024], errs.Corrupt, "end of file", true},
		{"bad magic", append([]byte("XDMV"), sparse[4:]...), errs.Corrupt, "", false},
		{"version 4", editHeader(sparse, 0, func(h *header) { h.version = 4 }), errs.Unimplemented, "version 4", false},
		{"unknown incompatible flag", editHeader(sparse, 0, func(h *header) { h.flags |= 1 << 20 }), errs.Unimplemented, "flags", false},
		{"compression 2", editHeader(sparse, 0, func(h *header) { h.compression = 2 }), errs.Unimplemented, "compression algorithm 2", false},
		{"compressed flag without algorithm", editHeader(sparse, 0, func(h *header) { h.flags |= flagCompressed }), errs.Corrupt, "compress", false},
		{"newline damage", bytes.Replace(bytes.Clone(sparse), []byte("\n \r\n"), []byte("\n \n\n"), 1), errs.Corrupt, "newline", false},
		{"absurd capacity", editHeader(sparse, 0, func(h *header) { h.capacity = 1 << 53 }), errs.Corrupt, "capacity", false},
		{"grain size 3", editHeader(sparse, 0, func(h *header) { h.grainSize = 3 }), errs.Corrupt, "grain size", false},
		{"grain size 1 GiB", editHeader(sparse, 0, func(h *header) { h.grainSize = 1 << 21 }), errs.Corrupt, "grain size", false},
		{"100 entries per table", editHeader(sparse, 0, func(h *header) { h.numGTEs = 100 }), errs.Corrupt, "grain table", false},
		{"directory past end", editHeader(sparse, 0, func(h *header) { h.gdOffset = 1 << 40 }), errs.Corrupt, "grain directory", false},
		{"directory too large", editHeader(sparse, 0, func(h *header) { h.capacity = 1 << 37; h.grainSize = 8; h.numGTEs = 128 }), errs.Corrupt, "too large", false},
		{"descriptor past end", editHeader(sparse, 0, func(h *header) { h.descOffset = 1 << 30 }), errs.Corrupt, "descriptor", false},
		{"table past end", put32(sparse, gd, 1<<30), errs.Corrupt, "grain table 0", false},
		{"table on the descriptor", put32(sparse, gd, 1), errs.Corrupt, "overlaps", false},
		{"two entries, one table", put32(sparse, gd+4, uint32(gt0/sectorSize)), errs.Corrupt, "overlaps", false},
		{"table on the directory", put32(sparse, gd, uint32(gd/sectorSize)), errs.Corrupt, "overlaps", false},
		{"grain past end", put32(sparse, gt0, 1<<30), errs.Corrupt, "beyond end of file", true},
		{"grain on the directory", put32(sparse, gt0, uint32(gd/sectorSize)), errs.Corrupt, "overlaps", true},
		{"grain on a table", put32(sparse, gt1, uint32(gt0/sectorSize)), errs.Corrupt, "overlaps", true},
		{"grain on the header", put32(sparse, gt0, 0x1), errs.Corrupt, "overlaps", true},
		{"stream footer missing", stream[:len(stream)-512], errs.Corrupt, "footer", false},
		{"stream footer says end", editHeader(stream, len(stream)-1024, func(h *header) { h.gdOffset = gdAtEnd }), errs.Corrupt, "footer", false},
		{"stream grain marker LBA", put32(stream, sgrain0, 0x80), errs.Corrupt, "LBA", true},
		{"stream grain marker size", put32(stream, sgrain0+8, 1<<30), errs.Corrupt, "marker", true},
		{"stream zlib damage", func() []byte {
			b := bytes.Clone(stream)
			copy(b[sgrain0+12:], "this is not zlib")
			return b
		}(), errs.Corrupt, "zlib", true},
		{"stream zlib checksum", func() []byte {
			b := bytes.Clone(stream)
			n := int64(binary.LittleEndian.Uint32(b[sgrain0+8:]))
			b[sgrain0+12+n-1] ^= 0xff
			return b
		}(), errs.Corrupt, "grain", true},
		{"COWD", append([]byte("COWD"), make([]byte, 2048)...), errs.Unimplemented, "vmfsSparse", false},
		{"not a vmdk", bytes.Repeat([]byte{0xa5}, 4096), errs.Corrupt, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := openBytes(t, "bad.vmdk", tc.b)
			if tc.onRead {
				if err != nil {
					t.Fatalf("open: %v (want it to fail on reading)", err)
				}
				err = readAll(img)
			}
			wantErr(t, err, tc.code, "bad.vmdk")
			if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not mention %q", err, tc.text)
			}
		})
	}
}

// TestCheckFindsSharedGrain: two entries pointing at one grain read fine
// but Check reports them.
func TestCheckFindsSharedGrain(t *testing.T) {
	sparse, stream := testImages(t)
	for name, b := range map[string][]byte{"sparse": sparse, "stream": stream} {
		t.Run(name, func(t *testing.T) {
			img, err := openBytes(t, name+".vmdk", b)
			if err != nil {
				t.Fatal(err)
			}
			checkClean(t, img)
			h, _ := parseHeader(b)
			if h.gdOffset == gdAtEnd {
				h, _ = parseHeader(b[len(b)-1024:])
			}
			gt0 := int64(binary.LittleEndian.Uint32(b[h.gdOffset*sectorSize:])) * sectorSize
			bad := bytes.Clone(b)
			copy(bad[gt0+4:gt0+8], bad[gt0:gt0+4]) // grain 1 -> grain 0's data
			if !h.compressed() {
				img, err = openBytes(t, name+".vmdk", bad)
				if err != nil {
					t.Fatal(err)
				}
				res, err := img.(disk.Checker).Check(t.Context())
				if err != nil || res.Corruptions == 0 || !strings.Contains(strings.Join(res.Problems, "\n"), "overlap") {
					t.Fatalf("check of a shared grain: %+v, %v", res, err)
				}
			}
		})
	}
}

// TestCorruptDescriptor covers descriptor files: refused disk and extent
// types, paths, missing or short extent files, parents.
func TestCorruptDescriptor(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "short-flat.vmdk"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	desc := func(createType, extents string, more ...string) []byte {
		return []byte("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"" + createType +
			"\"\n\n# Extent description\n" + extents + "\n" + strings.Join(more, "\n") + "\n")
	}
	flat := `RW 8 FLAT "short-flat.vmdk" 0`
	for _, tc := range []struct {
		name string
		b    []byte
		code errs.Code
		text string
	}{
		{"encrypted", desc("monolithicFlat", flat, `encryption.keySafe = "vmware:key/list/..."`), errs.Unimplemented, "encrypted"},
		{"seSparse", desc("seSparse", `RW 8 SESPARSE "x.vmdk"`), errs.Unimplemented, "seSparse"},
		{"vmfsSparse", desc("vmfsSparse", `RW 8 VMFSSPARSE "x.vmdk"`), errs.Unimplemented, "vmfsSparse"},
		{"raw device", desc("vmfsRawDeviceMap", `RW 8 VMFSRDM "x.vmdk"`), errs.Unimplemented, "raw device"},
		{"unknown createType", desc("fancyNew", flat), errs.Unimplemented, "fancyNew"},
		{"no createType", []byte("# Disk DescriptorFile\nversion=1\nCID=1\n" + flat + "\n"), errs.Corrupt, "createType"},
		{"SESPARSE extent", desc("custom", `RW 8 SESPARSE "x.vmdk"`), errs.Unimplemented, "seSparse"},
		{"VMFSSPARSE extent", desc("custom", `RW 8 VMFSSPARSE "x.vmdk"`), errs.Unimplemented, "vmfsSparse"},
		{"unknown extent type", desc("custom", `RW 8 WHATEVER "x.vmdk"`), errs.Unimplemented, "WHATEVER"},
		{"absolute extent path", desc("monolithicFlat", `RW 8 FLAT "/etc/passwd" 0`), errs.Unimplemented, "outside"},
		{"extent path up", desc("monolithicFlat", `RW 8 FLAT "../x-flat.vmdk" 0`), errs.Unimplemented, "outside"},
		{"missing extent", desc("monolithicFlat", `RW 8 FLAT "gone-flat.vmdk" 0`), errs.NotFound, "gone-flat.vmdk"},
		{"short flat extent", desc("monolithicFlat", `RW 16 FLAT "short-flat.vmdk" 0`), errs.Corrupt, "short-flat.vmdk"},
		{"flat offset past end", desc("monolithicFlat", `RW 8 FLAT "short-flat.vmdk" 4`), errs.Corrupt, "short-flat.vmdk"},
		{"sparse extent not sparse", desc("twoGbMaxExtentSparse", `RW 8 SPARSE "short-flat.vmdk"`), errs.Corrupt, "short-flat.vmdk"},
		{"no extents", desc("monolithicFlat", ""), errs.Corrupt, "no extents"},
		{"bad extent size", desc("monolithicFlat", `RW 8x FLAT "short-flat.vmdk" 0`), errs.Corrupt, "extent size"},
		{"absurd extent size", desc("monolithicFlat", `RW 1152921504606846976 FLAT "short-flat.vmdk" 0`), errs.Corrupt, "extent size"},
		{"extents add up", desc("monolithicFlat", strings.Repeat("RW 137438953472 ZERO\n", 2)), errs.Corrupt, "add up"},
		{"unquoted file", desc("monolithicFlat", `RW 8 FLAT short-flat.vmdk 0`), errs.Corrupt, "quoted"},
		{"bad CID", []byte("# Disk DescriptorFile\nCID=xyz\ncreateType=\"monolithicFlat\"\n" + flat + "\n"), errs.Corrupt, "CID"},
		{"parent without hint", []byte("# Disk DescriptorFile\nCID=1\nparentCID=12345678\ncreateType=\"monolithicFlat\"\n" + flat + "\n"), errs.Corrupt, "parent"},
		{"parent refused", []byte("# Disk DescriptorFile\nCID=1\nparentCID=12345678\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicFlat\"\n" + flat + "\n"), errs.FailedPrecondition, "base.vmdk"},
		{"too large", append(desc("monolithicFlat", flat), bytes.Repeat([]byte("#\n"), 600000)...), errs.Corrupt, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openBytes(t, filepath.Join(dir, "bad.vmdk"), tc.b)
			wantErr(t, err, tc.code, "bad.vmdk")
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not mention %q", err, tc.text)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		img, err := openBytes(t, filepath.Join(dir, "good.vmdk"), desc("custom", flat+"\nRDONLY 8 ZERO\nNOACCESS 8 ZERO"))
		if err != nil {
			t.Fatal(err)
		}
		if img.Size() != 24*512 {
			t.Fatalf("size %d", img.Size())
		}
		var kinds []disk.ExtentKind
		for e, err := range img.Extents(t.Context(), 0, img.Size()) {
			if err != nil {
				t.Fatal(err)
			}
			kinds = append(kinds, e.Kind)
		}
		if kinds[len(kinds)-1] != disk.Zero {
			t.Fatalf("extent kinds %v: ZERO extents should report zero", kinds)
		}
	})
}

// TestCreateRefusals: options and sizes the writers refuse.
func TestCreateRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		t    disk.Target
		size int64
		o    map[string]string
		code errs.Code
	}{
		{"unknown subformat", &discard{}, mib, map[string]string{"subformat": "bogus"}, errs.InvalidArgument},
		{"twoGbMaxExtentSparse", &discard{}, mib, map[string]string{"subformat": "twoGbMaxExtentSparse"}, errs.Unimplemented},
		{"unknown option", &discard{}, mib, map[string]string{"compat6": "on"}, errs.InvalidArgument},
		{"adapter", &discard{}, mib, map[string]string{"subformat": StreamOptimized, "adapter_type": "scsi"}, errs.InvalidArgument},
		{"hwversion", &discard{}, mib, map[string]string{"subformat": StreamOptimized, "hwversion": "x"}, errs.InvalidArgument},
		{"toolsversion", &discard{}, mib, map[string]string{"subformat": StreamOptimized, "toolsversion": "1\"2"}, errs.InvalidArgument},
		{"sparse to a stream", &discard{}, mib, nil, errs.InvalidArgument},
		{"flat to a stream", &discard{}, mib, map[string]string{"subformat": MonolithicFlat}, errs.InvalidArgument},
		{"negative size", &discard{}, -1, map[string]string{"subformat": StreamOptimized}, errs.InvalidArgument},
		{"too large", &discard{}, 65 << 40, map[string]string{"subformat": StreamOptimized}, errs.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Format().Create(t.Context(), tc.t, tc.size, &disk.CreateOptions{Options: tc.o})
			wantErr(t, err, tc.code, "")
		})
	}
	t.Run("sparse over 2 TiB", func(t *testing.T) {
		_, err := disk.NewRegistry(Format()).Create(t.Context(), filepath.Join(t.TempDir(), "big.vmdk"), "vmdk", 2<<40, nil)
		wantErr(t, err, errs.InvalidArgument, "32-bit")
	})
	t.Run("parent", func(t *testing.T) {
		_, err := Format().Create(t.Context(), &discard{}, mib, &disk.CreateOptions{BackingFile: "base.vmdk", Options: map[string]string{"subformat": StreamOptimized}})
		wantErr(t, err, errs.Unimplemented, "base.vmdk")
	})
}
