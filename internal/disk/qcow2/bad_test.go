package qcow2

import (
	"encoding/binary"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

var be = binary.BigEndian

// sample writes a small image with ferry and returns its bytes: 2 GiB,
// data in the first two clusters and at 1 GiB, so that L1 entries 0 and 2
// are used.
func sample(t testing.TB, opts map[string]string) []byte {
	t.Helper()
	pt := &disktest.Pattern{Name: "sample", Size: 2 * disktest.GiB, Seed: 3, Data: []disk.Extent{
		{Off: 0, Len: 128 * KiB}, {Off: disktest.GiB, Len: 64 * KiB},
	}}
	path := filepath.Join(t.TempDir(), "s.qcow2")
	writeFerry(t, path, pt, &disk.CreateOptions{Options: opts})
	return readFile(t, path)
}

// layout of a sample, read from its header
type layout struct{ l1, ref, l2, data, refblock int64 }

func layoutOf(b []byte) layout {
	l := layout{l1: int64(be.Uint64(b[40:])), ref: int64(be.Uint64(b[48:]))}
	l.l2 = int64(be.Uint64(b[l.l1:]) & offsetMask)
	l.data = int64(be.Uint64(b[l.l2:]) & offsetMask)
	l.refblock = int64(be.Uint64(b[l.ref:]))
	return l
}

func TestBadImages(t *testing.T) {
	plain := sample(t, nil)
	comp := sample(t, map[string]string{"compress": "on"})
	lp := layoutOf(plain)
	type tc struct {
		name   string
		base   []byte
		mutate func(b []byte) []byte
		code   errs.Code
		words  []string
		onRead bool // the fault shows on ReadAt, not Open
		inData bool // the fault is in compressed bytes, which Extents does not read
	}
	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { be.PutUint32(b[off:], v); return b }
	}
	put64 := func(off int64, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { be.PutUint64(b[off:], v); return b }
	}
	cases := []tc{
		{name: "empty", mutate: func(b []byte) []byte { return nil }, code: errs.Corrupt, words: []string{"too short"}},
		{name: "truncated-header", mutate: func(b []byte) []byte { return b[:40] }, code: errs.Corrupt},
		{name: "truncated-v3-header", mutate: func(b []byte) []byte { return b[:90] }, code: errs.Corrupt},
		{name: "truncated-tables", mutate: func(b []byte) []byte { return b[:lp.l1+8] }, code: errs.Corrupt, words: []string{"beyond the end"}},
		{name: "truncated-l2", mutate: func(b []byte) []byte { return b[:lp.l2+100] }, code: errs.Corrupt},
		{name: "bad-magic", mutate: put32(0, 0x514649fa), code: errs.Corrupt, words: []string{"magic"}},
		{name: "version-1", mutate: put32(4, 1), code: errs.Corrupt, words: []string{"version"}},
		{name: "version-4", mutate: put32(4, 4), code: errs.Unimplemented, words: []string{"version 4"}},
		{name: "cluster-bits-8", mutate: put32(20, 8), code: errs.Corrupt, words: []string{"cluster_bits"}},
		{name: "cluster-bits-22", mutate: put32(20, 22), code: errs.Unimplemented, words: []string{"cluster size"}},
		{name: "cluster-bits-200", mutate: put32(20, 200), code: errs.Corrupt},
		{name: "size-2^62", mutate: put64(24, 1<<62), code: errs.Corrupt, words: []string{"absurd"}},
		{name: "size-max", mutate: put64(24, 1<<64-1), code: errs.Corrupt},
		{name: "l1-huge", mutate: put32(36, 0xffffffff), code: errs.Corrupt, words: []string{"too large"}},
		{name: "l1-too-small", mutate: put32(36, 1), code: errs.Corrupt, words: []string{"too small"}},
		{name: "l1-unaligned", mutate: put64(40, uint64(lp.l1+8)), code: errs.Corrupt, words: []string{"aligned"}},
		{name: "l1-beyond-eof", mutate: put64(40, 1<<40), code: errs.Corrupt, words: []string{"beyond the end"}},
		{name: "l1-offset-huge", mutate: put64(40, 1<<63), code: errs.Corrupt},
		{name: "l1-in-header", mutate: put64(40, 0), code: errs.Corrupt, words: []string{"header"}},
		{name: "reftable-none", mutate: put32(56, 0), code: errs.Corrupt, words: []string{"refcount"}},
		{name: "reftable-huge", mutate: put32(56, 0xffffffff), code: errs.Corrupt, words: []string{"too large"}},
		{name: "reftable-unaligned", mutate: put64(48, uint64(lp.ref+512)), code: errs.Corrupt, words: []string{"aligned"}},
		{name: "reftable-over-l1", mutate: put64(48, uint64(lp.l1)), code: errs.Corrupt, words: []string{"overlaps"}},
		{name: "snapshots-too-many", mutate: put32(60, 1<<20), code: errs.Corrupt, words: []string{"snapshots"}},
		{name: "l1-entry-unaligned", mutate: put64(lp.l1, uint64(lp.l2+512)), code: errs.Corrupt, words: []string{"L1 entry 0", "aligned"}},
		{name: "l1-entry-beyond-eof", mutate: put64(lp.l1, 1<<50), code: errs.Corrupt, words: []string{"L1 entry 0", "beyond the end"}},
		{name: "l1-entry-on-l1", mutate: put64(lp.l1, uint64(lp.l1)), code: errs.Corrupt, words: []string{"overlaps"}},
		{name: "l1-entry-twice", mutate: func(b []byte) []byte { copy(b[lp.l1+16:], b[lp.l1:lp.l1+8]); return b }, code: errs.Corrupt, words: []string{"two L1 entries"}},
		{name: "l2-entry-unaligned", mutate: put64(lp.l2, uint64(lp.data+512)|flagCopied), code: errs.Corrupt, words: []string{"aligned"}, onRead: true},
		{name: "l2-entry-beyond-eof", mutate: put64(lp.l2, 1<<45|flagCopied), code: errs.Corrupt, words: []string{"beyond the end"}, onRead: true},
		{name: "l2-entry-on-l1", mutate: put64(lp.l2, uint64(lp.l1)|flagCopied), code: errs.Corrupt, words: []string{"overlaps"}, onRead: true},
		{name: "l2-compressed-in-header", mutate: put64(lp.l2, flagCompressed|100), code: errs.Corrupt, words: []string{"compressed"}, onRead: true},
		{name: "l2-compressed-garbage", mutate: put64(lp.l2, flagCompressed|uint64(lp.data)|3<<(compressedShift-8)), code: errs.Corrupt, words: []string{"compressed cluster"}, onRead: true, inData: true},
		{name: "compressed-data-damaged", base: comp, mutate: func(b []byte) []byte {
			l := layoutOf(b)
			e := be.Uint64(b[l.l2:])
			off := e & (1<<(compressedShift-8) - 1)
			for i := range 64 {
				b[int(off)+i] ^= 0x5a
			}
			return b
		}, code: errs.Corrupt, words: []string{"compressed cluster"}, onRead: true, inData: true},
		{name: "encrypted", mutate: put32(32, 1), code: errs.Unimplemented, words: []string{"encryption"}},
		{name: "external-data-file", mutate: put64(72, 1<<incExternalData), code: errs.Unimplemented, words: []string{"external data file", "bit 2"}},
		{name: "extended-l2", mutate: put64(72, 1<<incExtendedL2), code: errs.Unimplemented, words: []string{"extended L2", "bit 4"}},
		{name: "unknown-incompat", mutate: put64(72, 1<<9), code: errs.Unimplemented, words: []string{"bit 9"}},
		{name: "compression-type-2", mutate: func(b []byte) []byte { be.PutUint64(b[72:], 1<<incCompression); b[104] = 2; return b }, code: errs.Unimplemented, words: []string{"compression type 2"}},
		{name: "compression-bit-with-zlib", mutate: put64(72, 1<<incCompression), code: errs.Corrupt, words: []string{"compression type"}},
		{name: "zstd-without-bit", mutate: func(b []byte) []byte { b[104] = 1; return b }, code: errs.Corrupt, words: []string{"zstd"}},
		{name: "header-length-small", mutate: put32(100, 96), code: errs.Corrupt, words: []string{"header length"}},
		{name: "header-length-huge", mutate: put32(100, 1<<20), code: errs.Corrupt, words: []string{"header length"}},
		{name: "extension-too-long", mutate: func(b []byte) []byte {
			be.PutUint32(b[112:], extBackingFormat)
			be.PutUint32(b[116:], 1<<20)
			return b
		}, code: errs.Corrupt, words: []string{"extension"}},
		{name: "backing-name-too-long", mutate: func(b []byte) []byte {
			be.PutUint64(b[8:], 200)
			be.PutUint32(b[16:], 2000)
			return b
		}, code: errs.Corrupt, words: []string{"backing file name"}},
		{name: "backing-name-outside-cluster", mutate: func(b []byte) []byte {
			be.PutUint64(b[8:], 65530)
			be.PutUint32(b[16:], 100)
			return b
		}, code: errs.Corrupt, words: []string{"backing file name"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := c.base
			if base == nil {
				base = plain
			}
			b := c.mutate(append([]byte(nil), base...))
			img, err := openBytes(b)
			if !c.onRead {
				if err == nil {
					img.Close()
				}
				wantCode(t, err, c.code, "mem.qcow2", c.words...)
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			_, err = img.ReadAt(make([]byte, 256*KiB), 0)
			wantCode(t, err, c.code, "mem.qcow2", c.words...)
			if c.inData {
				return
			}
			// Extents walks the same entries
			for _, err := range img.Extents(t.Context(), 0, img.Size()) {
				if err != nil {
					wantCode(t, err, c.code, "mem.qcow2")
					return
				}
			}
			t.Fatal("extents saw no fault")
		})
	}
}

// TestFlags: the dirty bit reads fine; the corrupt bit opens and says so.
func TestFlags(t *testing.T) {
	b := sample(t, nil)
	be.PutUint64(b[72:], 1<<incDirty|1<<incCorrupt)
	img, err := openBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	sp := img.Info().Specific
	if sp["corrupt"] != true || sp["dirty-flag"] != true {
		t.Fatalf("info %v", sp)
	}
	if _, err := img.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// TestZeroAllocated: a zero cluster that keeps its host offset (v3 "zero
// + allocated") reads as zeros and reports Zero.
func TestZeroAllocated(t *testing.T) {
	b := sample(t, nil)
	l := layoutOf(b)
	be.PutUint64(b[l.l2:], be.Uint64(b[l.l2:])|flagZero)
	img, err := openBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := make([]byte, 128*KiB)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !isZero(got[:64*KiB]) || isZero(got[64*KiB:]) {
		t.Fatal("zero+allocated cluster does not read as zeros, or its neighbour does")
	}
	var kinds []disk.ExtentKind
	for e, err := range img.Extents(t.Context(), 0, 128*KiB) {
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, e.Kind)
	}
	if len(kinds) != 2 || kinds[0] != disk.Zero || kinds[1] != disk.Data {
		t.Fatalf("extents %v", kinds)
	}
	res, err := img.(disk.Checker).Check(t.Context())
	if err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
}

// TestCheckFaults damages refcounts and tables; ferry's Check finds what
// qemu-img check finds.
func TestCheckFaults(t *testing.T) {
	disktest.QemuImg(t)
	plain := sample(t, nil)
	l := layoutOf(plain)
	refOf := func(host int64) int64 { return l.refblock + host/65536*2 }
	cases := []struct {
		name    string
		mutate  func(b []byte)
		words   string
		vsQemu  bool
		corrupt bool
	}{
		{"leak", func(b []byte) { be.PutUint16(b[refOf(l.data):], 2) }, "Leaked", true, true},
		{"leak-unused", func(b []byte) { be.PutUint16(b[refOf(int64(len(b))-65536):], 1) }, "Leaked", true, false},
		{"refcount-low", func(b []byte) { be.PutUint16(b[refOf(l.data):], 0) }, "lower", true, true},
		{"copied-cleared", func(b []byte) { be.PutUint64(b[l.l2:], be.Uint64(b[l.l2:])&^flagCopied) }, "COPIED", true, true},
		{"l1-copied-cleared", func(b []byte) { be.PutUint64(b[l.l1:], be.Uint64(b[l.l1:])&^flagCopied) }, "COPIED", true, true},
		{"data-unaligned", func(b []byte) { be.PutUint64(b[l.l2:], be.Uint64(b[l.l2:])+512) }, "aligned", true, true},
		{"l2-reserved-bits", func(b []byte) { be.PutUint64(b[l.l2:], be.Uint64(b[l.l2:])|1<<57) }, "reserved", true, true},
		{"l1-reserved-bits", func(b []byte) { be.PutUint64(b[l.l1:], be.Uint64(b[l.l1:])|1<<60) }, "reserved", true, true},
		{"data-beyond-eof", func(b []byte) { be.PutUint64(b[l.l2:], 1<<40|flagCopied) }, "end of the file", true, true},
		{"data-on-metadata", func(b []byte) { be.PutUint64(b[l.l2:], uint64(l.l1)|flagCopied) }, "metadata", false, true},
		{"reftable-reserved-bits", func(b []byte) { be.PutUint64(b[l.ref:], uint64(l.refblock+8)) }, "refcount table entry 0", true, true},
		{"refblock-unaligned", func(b []byte) { be.PutUint64(b[l.ref:], uint64(l.refblock+4096)) }, "refcount block 0", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append(append([]byte(nil), plain...), make([]byte, 65536)...) // one unused cluster at the end
			c.mutate(b)
			path := writeFile(t, t.TempDir(), "bad.qcow2", b)
			img := openPath(t, path)
			res, err := img.(disk.Checker).Check(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if res.Clean() || (res.Corruptions > 0) != c.corrupt || !strings.Contains(strings.Join(res.Problems, "\n"), c.words) {
				t.Fatalf("check: %+v", res)
			}
			code, out := disktest.QemuExit(t, "check", "-f", "qcow2", path)
			if code == 0 {
				t.Fatalf("qemu-img check finds nothing:\n%s", out)
			}
			if c.vsQemu {
				compareCheck(t, res, path)
			}
		})
	}
}

// TestReadPastEnd follows io.ReaderAt at and across the end.
func TestReadPastEnd(t *testing.T) {
	img, err := openBytes(sample(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, 100)
	if n, err := img.ReadAt(b, img.Size()-10); n != 10 || err != io.EOF {
		t.Fatalf("across the end: %d, %v", n, err)
	}
	if n, err := img.ReadAt(b, img.Size()+10); n != 0 || err != io.EOF {
		t.Fatalf("past the end: %d, %v", n, err)
	}
	if _, err := img.ReadAt(b, -1); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("negative offset: %v", err)
	}
}
