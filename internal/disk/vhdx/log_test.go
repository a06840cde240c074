package vhdx

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// tDesc is a log descriptor to build: a zero range or one 4 KiB sector.
type tDesc struct {
	off, n int64
	sector []byte // 4 KiB to write, or nil to zero n bytes
}

// tEntry builds one log entry, independently of the reader's parser.
type tEntry struct {
	seq             uint64
	tail            int64
	flushed, last   int64
	guid            guid
	descs           []tDesc
	badCRC          bool
	descSeqMismatch bool
}

func (e tEntry) bytes() []byte {
	le := binary.LittleEndian
	descSectors := (64 + 32*int64(len(e.descs)) + 4095) / 4096
	var data [][]byte
	for _, d := range e.descs {
		if d.sector != nil {
			data = append(data, d.sector)
		}
	}
	b := make([]byte, (descSectors+int64(len(data)))*4096)
	copy(b, "loge")
	le.PutUint32(b[8:], uint32(len(b)))
	le.PutUint32(b[12:], uint32(e.tail))
	le.PutUint64(b[16:], e.seq)
	le.PutUint32(b[24:], uint32(len(e.descs)))
	copy(b[32:], e.guid[:])
	le.PutUint64(b[48:], uint64(e.flushed))
	le.PutUint64(b[56:], uint64(e.last))
	k := 0
	for i, d := range e.descs {
		x := b[64+32*i:]
		seq := e.seq
		if e.descSeqMismatch {
			seq++
		}
		if d.sector == nil {
			copy(x, "zero")
			le.PutUint64(x[8:], uint64(d.n))
		} else {
			copy(x, "desc")
			copy(x[4:8], d.sector[4092:])
			copy(x[8:16], d.sector[:8])
			s := b[(descSectors+int64(k))*4096:]
			copy(s, "data")
			le.PutUint32(s[4:], uint32(e.seq>>32))
			copy(s[8:4092], d.sector[8:4092])
			le.PutUint32(s[4092:], uint32(e.seq))
			k++
		}
		le.PutUint64(x[16:], uint64(d.off))
		le.PutUint64(x[24:], seq)
	}
	c := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
	if e.badCRC {
		c++
	}
	le.PutUint32(b[4:], c)
	return b
}

// putLog writes an entry into the log region of img at log offset off,
// wrapping at the end of the 1 MiB log.
func putLog(img []byte, off int64, e []byte) {
	for i, c := range e {
		img[tLogOff+(off+int64(i))%mib] = c
	}
}

// logFixture is a 1 MiB-block dynamic image with data in block 0, two
// unreferenced 1 MiB runs of data appended at X and Y, and a log whose
// active sequence (entries E2, E3) rewrites the BAT and block 0.
type logFixture struct {
	img, want []byte
	guid      guid
	b0, x, y  int64
	entries   map[string]tEntry
	offsets   map[string]int64
}

func newLogFixture(t testing.TB) *logFixture {
	t.Helper()
	pt := &disktest.Pattern{Name: "log", Size: 8 * mib, Seed: 31, Data: []disk.Extent{{Off: 0, Len: mib}}}
	base := ferryBytes(t, pt, nil)
	fx := &logFixture{b0: tDataOff, x: 5 * mib, y: 6 * mib}
	if int64(len(base)) != 5*mib || getBAT(base, 0)>>batOffsetShift != uint64(fx.b0/mib) {
		t.Fatalf("unexpected base layout: %d bytes, BAT[0] %#x", len(base), getBAT(base, 0))
	}
	fx.img = make([]byte, 7*mib)
	copy(fx.img, base)
	for i := fx.x; i < fx.x+mib; i++ {
		fx.img[i] = byte(i*7 + 1)
	}
	for i := fx.y; i < fx.y+mib; i++ {
		fx.img[i] = 0x77
	}
	fx.guid = mustGUID("11111111-2222-3333-4444-555555555555")
	rewriteHeaders(fx.img, func(h *header) { h.logGUID = fx.guid })

	batSector := func(kv map[int]uint64) []byte {
		s := make([]byte, 4096)
		for i, v := range kv {
			binary.LittleEndian.PutUint64(s[8*i:], v)
		}
		return s
	}
	ab := bytes.Repeat([]byte{0xab}, 4096)
	copy(ab, "LEADING!")
	copy(ab[4092:], "TRL!")
	const L = mib
	z := int64(9 * mib) // beyond the end of the file, inside LastFileOffset
	fx.entries = map[string]tEntry{
		// A valid but older sequence: must not be replayed.
		"stale": {seq: 2, tail: 64 * kib, flushed: 5 * mib, last: 5 * mib, guid: fx.guid,
			descs: []tDesc{{off: tBATOff, sector: batSector(map[int]uint64{0: uint64(fx.b0) | stateFull, 4: uint64(fx.y) | stateFull})}}},
		// Before the tail of the active head: already flushed, not replayed.
		"e1": {seq: 5, tail: L - 4096, flushed: 7 * mib, last: 7 * mib, guid: fx.guid,
			descs: []tDesc{{off: tBATOff, sector: batSector(map[int]uint64{0: uint64(fx.b0) | stateFull, 1: uint64(fx.y) | stateFull})}}},
		"e2": {seq: 6, tail: L - 4096, flushed: 7 * mib, last: 7 * mib, guid: fx.guid,
			descs: []tDesc{{off: fx.b0 + 4096, n: 8192}}},
		"e3": {seq: 7, tail: 4096, flushed: 7 * mib, last: 10 * mib, guid: fx.guid,
			descs: []tDesc{
				{off: tBATOff, sector: batSector(map[int]uint64{0: uint64(fx.b0) | stateFull, 2: uint64(fx.x) | stateFull, 3: uint64(z) | stateFull})},
				{off: fx.b0 + 8192, n: 8192},
				{off: fx.b0 + 12288, sector: ab},
			}},
		// Would extend the chain but carries another log guid.
		"otherguid": {seq: 8, tail: 4096, flushed: 7 * mib, last: 10 * mib, guid: mustGUID("99999999-2222-3333-4444-555555555555"),
			descs: []tDesc{{off: fx.b0, n: mib}}},
		"badcrc": {seq: 9, tail: 4096, flushed: 7 * mib, last: 10 * mib, guid: fx.guid, badCRC: true,
			descs: []tDesc{{off: fx.b0, n: mib}}},
	}
	fx.offsets = map[string]int64{"stale": 64 * kib, "e1": L - 4096, "e2": 4096, "e3": 8192, "otherguid": 20480, "badcrc": 24576}
	for k, e := range fx.entries {
		putLog(fx.img, fx.offsets[k], e.bytes())
	}

	fx.want = make([]byte, pt.Size)
	pt.Fill(0, fx.want[:mib])
	clear(fx.want[4096:12288])
	copy(fx.want[12288:16384], ab)
	copy(fx.want[2*mib:3*mib], fx.img[fx.x:fx.x+mib])
	return fx
}

func (fx *logFixture) rebuild(name string, e tEntry) {
	fx.entries[name] = e
	putLog(fx.img, fx.offsets[name], e.bytes())
}

func TestLogReplay(t *testing.T) {
	fx := newLogFixture(t)
	orig := bytes.Clone(fx.img)
	img, err := Format().Open(t.Context(), fileOf("dirty.vhdx", fx.img), &disk.OpenOptions{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer img.Close()
	got := readAll(t, img)
	if !bytes.Equal(got, fx.want) {
		i := firstDiff(got, fx.want)
		t.Fatalf("content differs at %d: got %x want %x", i, got[i:i+8], fx.want[i:i+8])
	}
	if !bytes.Equal(fx.img, orig) {
		t.Fatal("opening wrote to the file")
	}
	if img.Info().Specific["log-replayed"] != true {
		t.Fatalf("info %+v", img.Info().Specific)
	}
	wantKinds := map[int64]disk.ExtentKind{0: disk.Data, 1: disk.Unallocated, 2: disk.Data, 3: disk.Data, 4: disk.Unallocated}
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		for blk := e.Off / mib; blk < (e.End()+mib-1)/mib; blk++ {
			if k, ok := wantKinds[blk]; ok && k != e.Kind {
				t.Fatalf("block %d: extent %+v, want %v", blk, e, k)
			}
		}
	}
	res, err := img.(disk.Checker).Check(t.Context())
	if err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
}

// TestLogReplayQemu lets qemu replay the same log (it does when it opens
// the image read-write) and checks that it reads what ferry reads.
func TestLogReplayQemu(t *testing.T) {
	disktest.QemuImg(t)
	fx := newLogFixture(t)
	// qemu 7.2 extends the file to LastFileOffset only when that is not a
	// multiple of 1 MiB, so leave out the block past the end of file.
	e3 := fx.entries["e3"]
	e3.descs = append([]tDesc(nil), e3.descs...)
	sec := bytes.Clone(e3.descs[0].sector)
	clear(sec[24:32])
	e3.descs[0].sector = sec
	fx.rebuild("e3", e3)
	dir := t.TempDir()
	path := filepath.Join(dir, "dirty.vhdx")
	if err := os.WriteFile(path, fx.img, 0o644); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "want.raw")
	if err := os.WriteFile(want, fx.want, 0o644); err != nil {
		t.Fatal(err)
	}
	disktest.Qemu(t, "check", "-r", "all", "-f", "vhdx", path)
	disktest.Qemu(t, "compare", "-f", "vhdx", "-F", "raw", path, want)
}

func TestLogReplayErrors(t *testing.T) {
	tests := []struct {
		name string
		fn   func(fx *logFixture)
		code errs.Code
		want string
	}{
		{"no-valid-sequence", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logGUID = mustGUID("abababab-2222-3333-4444-555555555555") })
		}, errs.Corrupt, "no valid sequence"},
		{"empty-log", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logLength = 0 })
		}, errs.Corrupt, "log"},
		{"truncated", func(fx *logFixture) {
			e := fx.entries["e3"]
			e.flushed = 64 * mib
			fx.rebuild("e3", e)
		}, errs.Corrupt, "truncated"},
		{"writes-header", func(fx *logFixture) {
			e := fx.entries["e2"]
			e.descs = []tDesc{{off: header1Offset, n: 4096}}
			fx.rebuild("e2", e)
		}, errs.Corrupt, "header"},
		{"writes-log", func(fx *logFixture) {
			e := fx.entries["e2"]
			e.descs = []tDesc{{off: tLogOff + 8192, n: 4096}}
			fx.rebuild("e2", e)
		}, errs.Corrupt, "log itself"},
		{"log-version", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logVer = 1 })
		}, errs.Unimplemented, "log version"},
		{"log-too-big", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logLength = uint32(128 * mib) })
		}, errs.Unimplemented, "vhdx log replay"},
		{"log-beyond-eof", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logOffset = uint64(64 * mib) })
		}, errs.Corrupt, "beyond end of file"},
		{"log-misaligned", func(fx *logFixture) {
			rewriteHeaders(fx.img, func(h *header) { h.logOffset = uint64(tLogOff + 4096) })
		}, errs.Corrupt, "aligned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newLogFixture(t)
			tt.fn(fx)
			img, err := Format().Open(t.Context(), fileOf("dirty.vhdx", fx.img), &disk.OpenOptions{})
			if err == nil {
				img.Close()
			}
			if !errs.Is(err, tt.code) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "dirty.vhdx") {
				t.Fatalf("open: %v; want %v naming dirty.vhdx and %q", err, tt.code, tt.want)
			}
		})
	}
}

// TestLogSequenceChoice checks the choice of the active sequence in
// isolation: the newest valid sequence wins, a broken link ends a
// sequence, a head whose tail is outside its sequence is not valid.
func TestLogSequenceChoice(t *testing.T) {
	g := mustGUID("11111111-2222-3333-4444-555555555555")
	sector := func(v byte) []byte { return bytes.Repeat([]byte{v}, 4096) }
	type placed struct {
		off int64
		e   tEntry
	}
	tests := []struct {
		name    string
		entries []placed
		want    []uint64 // sequence numbers replayed, in order
	}{
		{"single", []placed{{0, tEntry{seq: 1, tail: 0}}}, []uint64{1}},
		{"newest-wins", []placed{{0, tEntry{seq: 1, tail: 0}}, {40960, tEntry{seq: 9, tail: 40960}}}, []uint64{9}},
		{"chain", []placed{{0, tEntry{seq: 3, tail: 0}}, {4096, tEntry{seq: 4, tail: 0}}, {8192, tEntry{seq: 5, tail: 4096}}}, []uint64{4, 5}},
		{"broken-link", []placed{{0, tEntry{seq: 3, tail: 0}}, {4096, tEntry{seq: 5, tail: 0}}}, []uint64{3}},
		// The sequence from 0 extends to the entry at 4 KiB, whose tail
		// is outside it, so it is not valid; the spec never considers
		// the entry at 0 alone.
		{"tail-outside", []placed{{0, tEntry{seq: 3, tail: 0}}, {4096, tEntry{seq: 4, tail: 81920}}}, nil},
		{"tail-outside-later", []placed{{0, tEntry{seq: 3, tail: 0}}, {8192, tEntry{seq: 4, tail: 81920}}}, []uint64{3}},
		{"wraps", []placed{{mib - 4096, tEntry{seq: 10, tail: mib - 4096, descs: []tDesc{{off: 4 * mib, sector: sector(1)}}}}, {4096, tEntry{seq: 11, tail: mib - 4096}}}, []uint64{10, 11}},
		{"desc-seq-mismatch", []placed{{0, tEntry{seq: 3, tail: 0}}, {4096, tEntry{seq: 4, tail: 0, descSeqMismatch: true, descs: []tDesc{{off: 4 * mib, n: 4096}}}}}, []uint64{3}},
		{"none", []placed{{0, tEntry{seq: 3, tail: 0, badCRC: true}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := make([]byte, mib)
			for _, p := range tt.entries {
				p.e.guid = g
				for i, c := range p.e.bytes() {
					lb[(p.off+int64(i))%mib] = c
				}
			}
			r := &logReplay{lb: lb, guid: g, entries: map[int64]*logEntry{}}
			var got []uint64
			for _, e := range r.active() {
				got = append(got, e.seq)
			}
			if !slicesEqual(got, tt.want) {
				t.Fatalf("replayed %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildPatches(t *testing.T) {
	s := func(v byte) []byte { return bytes.Repeat([]byte{v}, 4096) }
	ops := []logDesc{
		{fileOff: 8192, n: 4096, data: s(1)},
		{fileOff: 0, n: 5 * 4096},             // zeros 0-20K, hides the data at 8K
		{fileOff: 4096, n: 4096, data: s(2)},  // newer than the zeros
		{fileOff: 16384, n: 8192, data: nil},  // zeros 16K-24K
		{fileOff: 20480, n: 4096, data: s(3)}, // inside the zeros, newer
		{fileOff: 40960, n: 4096, data: s(4)},
		{fileOff: 40960, n: 4096, data: s(5)}, // same sector, later wins
	}
	got := buildPatches(ops)
	type p struct {
		off, n int64
		v      int // -1 zeros
	}
	want := []p{{0, 4096, -1}, {4096, 4096, 2}, {8192, 12288, -1}, {20480, 4096, 3}, {24576 - 4096, 0, 0}, {40960, 4096, 5}}
	want = append(want[:4], want[5:]...)
	if len(got) != len(want) {
		t.Fatalf("patches %+v", got)
	}
	for i, w := range want {
		g := got[i]
		v := -1
		if g.data != nil {
			v = int(g.data[0])
		}
		if g.off != w.off || g.n != w.n || v != w.v {
			t.Fatalf("patch %d = {%d %d %d}, want %+v", i, g.off, g.n, v, w)
		}
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
