package vdi

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// badBase is a small valid image: 16 blocks of 4 KiB, blocks 3, 0 and 7
// written in that order (data blocks 0, 1, 2), data area at 0x1000.
func badBase(t testing.TB) []byte {
	return makeImage(t, 16*4096, 4096, false,
		write{3 * 4096, 4096, 1}, write{0, 4096, 2}, write{7 * 4096, 4096, 3})
}

func set32(off int, v uint32) func([]byte) []byte {
	return func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
}

func set64(off int, v uint64) func([]byte) []byte {
	return func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
}

func entry(i int, v uint32) func([]byte) []byte { return set32(mapOffset+4*i, v) }

func cut(n int) func([]byte) []byte { return func(b []byte) []byte { return b[:n] } }

func both(fs ...func([]byte) []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		for _, f := range fs {
			b = f(b)
		}
		return b
	}
}

func TestBadInput(t *testing.T) {
	base := badBase(t)
	for _, c := range []struct {
		name   string
		mutate func([]byte) []byte
		code   errs.Code
		msg    string // in the error, besides the file name
	}{
		{"empty file", cut(0), errs.Corrupt, "too short"},
		{"pre-header only", cut(0x40), errs.Corrupt, "too short"},
		{"header truncated", cut(0x100), errs.Corrupt, "header truncated"},
		{"bad signature", set32(offSignature, 0xBEDA1070), errs.Corrupt, "signature"},
		{"version 0", set32(offVersion, 0x00000002), errs.Unimplemented, "version 0.2"},
		{"version 1.2", set32(offVersion, 0x00010002), errs.Unimplemented, "version 1.2"},
		{"header size too small", set32(offHeaderSize, 0x100), errs.Corrupt, "header size"},
		{"header size absurd", set32(offHeaderSize, 0xFFFFFFF0), errs.Corrupt, "overlaps the"},
		{"undo image", set32(offImageType, typeUndo), errs.Unimplemented, "undo"},
		{"differencing image", set32(offImageType, typeDiff), errs.Unimplemented, "differencing"},
		{"unknown type", set32(offImageType, 77), errs.Corrupt, "image type 77"},
		{"link uuid", set32(offUUIDLink, 1), errs.Unimplemented, "parent"},
		{"parent uuid", set32(offUUIDParent+12, 1), errs.Unimplemented, "parent"},
		{"sector size", set32(offSectorSize, 4096), errs.Unimplemented, "sector size 4096"},
		{"block extra", set32(offBlockExtra, 512), errs.Unimplemented, "extra data"},
		{"block size zero", set32(offBlockSize, 0), errs.Corrupt, "power of two"},
		{"block size not a power of two", set32(offBlockSize, 3000), errs.Corrupt, "power of two"},
		{"block size too large", set32(offBlockSize, 1<<30), errs.Unimplemented, "block size"},
		{"block size too small", set32(offBlockSize, 256), errs.Unimplemented, "block size"},
		{"too many blocks", set32(offBlocks, 17), errs.Corrupt, "do not match disk size"},
		{"too few blocks", set32(offBlocks, 15), errs.Corrupt, "do not match disk size"},
		{"disk size 2^62", set64(offDiskSize, 1<<62), errs.Corrupt, "do not match"},
		{"disk size 2^64-1", set64(offDiskSize, 1<<64-1), errs.Corrupt, "absurd"},
		{"huge disk, map beyond file", both(set64(offDiskSize, 1<<40), set32(offBlocks, 1<<28), set32(offDataArea, 1<<31)), errs.Corrupt, "block map"},
		{"allocated beyond blocks", set32(offAllocated, 17), errs.Corrupt, "allocated out of"},
		{"map inside header", set32(offBlocksMap, 0x100), errs.Corrupt, "overlaps the"},
		{"data inside map", set32(offDataArea, mapOffset+8), errs.Corrupt, "overlaps the block map"},
		{"map beyond end of file", both(set32(offBlocksMap, 0x10000), set32(offDataArea, 0x10040)), errs.Corrupt, "block map [0x10000, 0x10040) beyond end of file"},
		{"map truncated", cut(mapOffset + 10), errs.Corrupt, "beyond end of file"},
		{"entry at allocated count", entry(5, 3), errs.Corrupt, "block 5: data block 3 out of range"},
		{"entry huge", entry(9, 0x7FFFFFFF), errs.Corrupt, "block 9: data block 2147483647 out of range"},
		{"entry shared", entry(12, 1), errs.Corrupt, "block 12: data block 1 is also used"},
		{"data truncated", cut(4*4096 - 1), errs.Corrupt, "block 7: data block 2"},
		{"data area moved past end", set32(offDataArea, 0x2000), errs.Corrupt, "block 7: data block 2 at 0x4000 beyond end of file"},
		{"odd disk size", set64(offDiskSize, 16*4096-100), errs.Unknown, ""},
		{"zero blocks", both(entry(1, blockZero), entry(15, blockZero)), errs.Unknown, ""},
		{"banner from qemu", func(b []byte) []byte { copy(b, "<<< QEMU VM Virtual Disk Image >>>\n\x00\x00\x00\x00\x00"); return b }, errs.Unknown, ""},
		{"qemu header size", set32(offHeaderSize, headerV1Size), errs.Unknown, ""},
		{"leaked block", set32(offAllocated, 4), errs.Unknown, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(bytes.Clone(base))
			name := "bad-" + strings.ReplaceAll(c.name, " ", "-") + ".vdi"
			img, err := openBytes(t, name, b)
			if c.code == errs.Unknown {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				readEverything(t, img)
				return
			}
			if err == nil {
				t.Fatalf("open succeeded, want %v", c.code)
			}
			if got := errs.CodeOf(err); got != c.code {
				t.Fatalf("open: %v: code %v, want %v", err, got, c.code)
			}
			if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("open: %q should name %s and say %q", err, name, c.msg)
			}
		})
	}
}

// readEverything reads every extent of img and runs its check; nothing may
// panic.
func readEverything(t testing.TB, img disk.Image) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatalf("extents: %v", err)
		}
		if e.Kind != disk.Data {
			continue
		}
		for off := e.Off; off < e.End(); off += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), e.End()-off)]
			if _, err := img.ReadAt(p, off); err != nil && err != io.EOF {
				t.Fatalf("read %d at %d: %v", len(p), off, err)
			}
		}
	}
	if _, err := img.(disk.Checker).Check(t.Context()); err != nil {
		t.Fatalf("check: %v", err)
	}
}

// sparseFile is a file of the given size that holds head and then zeros,
// like a sparse file claiming a huge block map.
type sparseFile struct {
	head []byte
	size int64
}

func (f *sparseFile) Name() string { return "sparse.vdi" }
func (f *sparseFile) Size() int64  { return f.size }
func (f *sparseFile) Close() error { return nil }
func (f *sparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	clear(p[:n])
	if off < int64(len(f.head)) {
		copy(p[:n], f.head[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestHugeMap: a block map over 256 MiB is refused before it is read, even
// when the file is big enough to hold it.
func TestHugeMap(t *testing.T) {
	h := both(set64(offDiskSize, 1<<39), set32(offBlocks, 1<<27), set32(offDataArea, mapOffset+4<<27))(badBase(t)[:4096])
	f := &sparseFile{head: h, size: 1 << 40}
	_, err := Format().Open(t.Context(), f, nil)
	if !errs.Is(err, errs.Unimplemented) || !strings.Contains(err.Error(), "sparse.vdi") || !strings.Contains(err.Error(), "256 MiB") {
		t.Fatalf("open: %v", err)
	}
}
