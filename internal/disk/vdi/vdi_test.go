package vdi

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

const kib = 1024

// TestLayout checks the header ferry writes and that dynamic blocks are
// stored in write order.
func TestLayout(t *testing.T) {
	ws := []write{{off: 5 * 4096, len: 100, fill: 1}, {off: 0, len: 4096, fill: 2}, {off: 9*4096 + 10, len: 8182, fill: 3}}
	b := makeImage(t, 64*kib+1, 4096, false, ws...)
	le := binary.LittleEndian
	if !bytes.HasPrefix(b, []byte(banner)) {
		t.Errorf("banner %q", b[:64])
	}
	for _, c := range []struct {
		name      string
		off, want int
	}{
		{"signature", offSignature, signature},
		{"version", offVersion, version11},
		{"header size", offHeaderSize, headerV1Plus},
		{"type", offImageType, typeNormal},
		{"map offset", offBlocksMap, mapOffset},
		{"data offset", offDataArea, 4096},
		{"sector size", offSectorSize, 512},
		{"block size", offBlockSize, 4096},
		{"blocks", offBlocks, 17},
		{"allocated", offAllocated, 4},
		{"lchs sector size", offLCHS + 12, 512},
	} {
		if got := le.Uint32(b[c.off:]); got != uint32(c.want) {
			t.Errorf("%s = %#x, want %#x", c.name, got, c.want)
		}
	}
	if got := le.Uint64(b[offDiskSize:]); got != 64*kib+512 {
		t.Errorf("disk size %d, want %d", got, 64*kib+512)
	}
	var img, mod [16]byte
	copy(img[:], b[offUUIDImage:])
	copy(mod[:], b[offUUIDModify:])
	if img == ([16]byte{}) || mod == ([16]byte{}) || img == mod {
		t.Errorf("uuids %x %x: want two distinct random ones", img, mod)
	}
	if s := uuidString(img); s[14] != '4' {
		t.Errorf("uuid %s is not version 4", s)
	}
	if !bytes.Equal(b[offUUIDLink:offUUIDLink+32], make([]byte, 32)) {
		t.Error("link/parent uuids set")
	}
	// Blocks 5, 0, 9, 10 were written in that order.
	want := map[int]uint32{5: 0, 0: 1, 9: 2, 10: 3}
	for i := range 17 {
		e := le.Uint32(b[mapOffset+4*i:])
		w, ok := want[i]
		if !ok {
			w = blockFree
		}
		if e != w {
			t.Errorf("map[%d] = %#x, want %#x", i, e, w)
		}
	}
	if len(b) != 4096+4*4096 {
		t.Errorf("file size %d, want %d", len(b), 5*4096)
	}
	im := mustOpenBytes(t, b)
	if got := readAll(t, im); !bytes.Equal(got, expect(64*kib+512, ws...)) {
		t.Error("content differs")
	}
	info := im.Info()
	if info.Specific["subformat"] != "dynamic" || info.Specific["uuid"] != uuidString(img) || info.Specific["block-size"] != int64(4096) || info.ClusterSize != 4096 {
		t.Errorf("info %+v", info)
	}
}

func TestStaticLayout(t *testing.T) {
	ws := []write{{off: 3*4096 + 7, len: 5000, fill: 9}}
	b := makeImage(t, 10*4096, 4096, true, ws...)
	le := binary.LittleEndian
	if le.Uint32(b[offImageType:]) != typeFixed || le.Uint32(b[offAllocated:]) != 10 {
		t.Fatalf("type %d allocated %d", le.Uint32(b[offImageType:]), le.Uint32(b[offAllocated:]))
	}
	for i := range 10 {
		if e := le.Uint32(b[mapOffset+4*i:]); e != uint32(i) {
			t.Errorf("map[%d] = %d", i, e)
		}
	}
	if len(b) != 4096+10*4096 {
		t.Errorf("file size %d", len(b))
	}
	im := mustOpenBytes(t, b)
	if !bytes.Equal(readAll(t, im), expect(10*4096, ws...)) {
		t.Error("content differs")
	}
	if im.Info().Specific["subformat"] != "fixed" {
		t.Error("subformat not fixed")
	}
}

// TestZeroWrites: zeros written where nothing was are not stored.
func TestZeroWrites(t *testing.T) {
	b := makeImage(t, 16*4096, 4096, false,
		write{off: 0, len: 3 * 4096, fill: 0},    // nothing stored
		write{off: 4096, len: 10, fill: 4},       // block 1 allocated
		write{off: 4096 + 100, len: 50, fill: 0}, // into an allocated block: written
	)
	if got := binary.LittleEndian.Uint32(b[offAllocated:]); got != 1 {
		t.Fatalf("allocated %d, want 1", got)
	}
	im := mustOpenBytes(t, b)
	want := []disk.Extent{ext(0, 4096, disk.Unallocated), ext(4096, 4096, disk.Data), ext(8192, 14*4096, disk.Unallocated)}
	if got := extents(t, im, 0, im.Size()); !equalExtents(got, want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
}

// TestZero: Zero over written data reads back as zeros, over unwritten data
// allocates nothing; both with hole punching (a real file) and without.
func TestZero(t *testing.T) {
	const bs = 4096
	run := func(t *testing.T, tgt disk.FileTarget, reopen func() []byte) {
		w, err := newWriter(tgt, 32*bs, false, bs)
		if err != nil {
			t.Fatal(err)
		}
		full := bytes.Repeat([]byte{7}, 8*bs)
		if _, err := w.WriteAt(full, 2*bs); err != nil { // blocks 2-9
			t.Fatal(err)
		}
		for _, z := range []struct{ off, n int64 }{
			{0, 2 * bs},           // unwritten
			{2*bs + 100, 200},     // inside block 2
			{4 * bs, 2 * bs},      // blocks 4 and 5 whole
			{9*bs + 1, 20*bs - 1}, // end of block 9 and unwritten blocks
			{31 * bs, bs},         // unwritten
		} {
			if err := w.Zero(z.off, z.n); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Zero(0, 33*bs); !errs.Is(err, errs.InvalidArgument) {
			t.Fatalf("zero beyond size: %v", err)
		}
		if err := w.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte{1}, 0); !errs.Is(err, errs.FailedPrecondition) {
			t.Fatalf("write after commit: %v", err)
		}
		if err := w.Zero(0, 1); !errs.Is(err, errs.FailedPrecondition) {
			t.Fatalf("zero after commit: %v", err)
		}
		b := reopen()
		if got := binary.LittleEndian.Uint32(b[offAllocated:]); got != 8 {
			t.Fatalf("allocated %d, want 8", got)
		}
		want := make([]byte, 32*bs)
		copy(want[2*bs:], full)
		clear(want[2*bs+100 : 2*bs+300])
		clear(want[4*bs : 6*bs])
		clear(want[9*bs+1:])
		im := mustOpenBytes(t, b)
		if got := readAll(t, im); !bytes.Equal(got, want) {
			t.Fatalf("content differs at %d", firstDiff(got, want))
		}
	}
	t.Run("memory", func(t *testing.T) {
		mt := &memTarget{name: "m"}
		run(t, mt, func() []byte { return mt.b })
	})
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "z.vdi")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		run(t, fileTarget{f}, func() []byte {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			return b
		})
	})
}

// fileTarget is an *os.File as a disk.FileTarget (with Fd, so holes are
// punched).
type fileTarget struct{ *os.File }

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func equalExtents(a, b []disk.Extent) bool {
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

// TestExtents: zero blocks, unallocated blocks and data merge into runs;
// partial ranges are clipped.
func TestExtents(t *testing.T) {
	b := makeImage(t, 12*4096, 4096, false,
		write{off: 0, len: 2 * 4096, fill: 1},
		write{off: 5 * 4096, len: 4096, fill: 2},
		write{off: 4 * 4096, len: 4096, fill: 3}, // stored after block 5
	)
	m := b[mapOffset:]
	binary.LittleEndian.PutUint32(m[2*4:], blockZero)
	binary.LittleEndian.PutUint32(m[3*4:], blockZero)
	binary.LittleEndian.PutUint32(m[7*4:], blockZero)
	im := mustOpenBytes(t, b)
	for _, c := range []struct {
		off, n int64
		want   []disk.Extent
	}{
		{0, 12 * 4096, []disk.Extent{
			ext(0, 2*4096, disk.Data), ext(2*4096, 2*4096, disk.Zero), ext(4*4096, 2*4096, disk.Data),
			ext(6*4096, 4096, disk.Unallocated), ext(7*4096, 4096, disk.Zero), ext(8*4096, 4*4096, disk.Unallocated),
		}},
		{100, 4096, []disk.Extent{ext(100, 4096, disk.Data)}},
		{3*4096 + 1, 4096, []disk.Extent{ext(3*4096+1, 4095, disk.Zero), ext(4*4096, 1, disk.Data)}},
		{11 * 4096, 10 * 4096, []disk.Extent{ext(11*4096, 4096, disk.Unallocated)}},
		{12 * 4096, 10, nil},
		{-5, 10, []disk.Extent{ext(0, 5, disk.Data)}},
		{4096, 1<<63 - 1, []disk.Extent{ext(4096, 4096, disk.Data), ext(2*4096, 2*4096, disk.Zero), ext(4*4096, 2*4096, disk.Data),
			ext(6*4096, 4096, disk.Unallocated), ext(7*4096, 4096, disk.Zero), ext(8*4096, 4*4096, disk.Unallocated)}},
		{-1 << 63, 1<<63 - 1, nil},
		{5, -1, nil},
	} {
		if got := extents(t, im, c.off, c.n); !equalExtents(got, c.want) {
			t.Errorf("extents(%d, %d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
	want := expect(12*4096, write{0, 2 * 4096, 1}, write{5 * 4096, 4096, 2}, write{4 * 4096, 4096, 3})
	if got := readAll(t, im); !bytes.Equal(got, want) {
		t.Fatalf("content differs at %d", firstDiff(got, want))
	}
}

// TestFixedHoles: blocks of a fixed image that were never written are
// reported as Zero on a real file.
func TestFixedHoles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.vdi")
	pt := &disktest.Pattern{Name: "holes", Size: 64 * disktest.MiB, Seed: 3, Data: []disk.Extent{
		{Off: 3 * disktest.MiB, Len: 2*disktest.MiB + 512}, {Off: 40*disktest.MiB + 4096, Len: 64 * 4096},
	}}
	writeFerry(t, pt, path, map[string]string{"static": "on"})
	img, err := disk.NewRegistry(Format()).Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := extents(t, img, 0, img.Size())
	want := []disk.Extent{
		ext(0, 3*disktest.MiB, disk.Zero), ext(3*disktest.MiB, 3*disktest.MiB, disk.Data),
		ext(6*disktest.MiB, 34*disktest.MiB, disk.Zero), ext(40*disktest.MiB, disktest.MiB, disk.Data),
		ext(41*disktest.MiB, 23*disktest.MiB, disk.Zero),
	}
	if !equalExtents(got, want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
	disktest.VerifyImage(t, img, pt)
}

func TestReadAt(t *testing.T) {
	ws := []write{{0, 3 * 4096, 1}, {5 * 4096, 2 * 4096, 2}}
	b := makeImage(t, 8*4096-512, 4096, false, ws...)
	im := mustOpenBytes(t, b)
	want := expect(8*4096-512, ws...)
	for _, c := range []struct {
		off, n  int64
		wantN   int
		wantErr error
	}{
		{0, 100, 100, nil},
		{4095, 2, 2, nil},
		{2*4096 + 5, 4 * 4096, 4 * 4096, nil},
		{8*4096 - 600, 200, 88, io.EOF},
		{8*4096 - 512, 1, 0, io.EOF},
		{1 << 40, 1, 0, io.EOF},
	} {
		p := make([]byte, c.n)
		n, err := im.ReadAt(p, c.off)
		if n != c.wantN || err != c.wantErr {
			t.Errorf("ReadAt(%d, %d) = %d, %v; want %d, %v", c.n, c.off, n, err, c.wantN, c.wantErr)
			continue
		}
		if n > 0 && !bytes.Equal(p[:n], want[c.off:c.off+int64(n)]) {
			t.Errorf("ReadAt(%d, %d): content differs", c.n, c.off)
		}
	}
	if _, err := im.ReadAt(make([]byte, 1), -1); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("negative offset: %v", err)
	}
}

// shrunkFile claims a size its bytes do not have: a file truncated after it
// was opened.
type shrunkFile struct {
	disk.File
	size int64
}

func (f shrunkFile) Size() int64 { return f.size }

func TestReadTruncatedAfterOpen(t *testing.T) {
	b := makeImage(t, 8*4096, 4096, false, write{0, 8 * 4096, 5})
	f := shrunkFile{disk.BytesFile("gone.vdi", b[:len(b)-4096]), int64(len(b))}
	im, err := Format().Open(t.Context(), f, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = im.ReadAt(make([]byte, 8*4096), 0)
	if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "gone.vdi") || !strings.Contains(err.Error(), "block 7") {
		t.Fatalf("read: %v", err)
	}
}

func TestCheck(t *testing.T) {
	base := makeImage(t, 8*4096, 4096, false, write{0, 4096, 1}, write{3 * 4096, 4096, 2}, write{5 * 4096, 4096, 3})
	le := binary.LittleEndian
	for _, c := range []struct {
		name          string
		mutate        func(b []byte) []byte
		corrupt, leak int
	}{
		{"clean", func(b []byte) []byte { return b }, 0, 0},
		{"count too high", func(b []byte) []byte {
			le.PutUint32(b[offAllocated:], 4)
			return append(b, make([]byte, 4096)...)
		}, 1, 1},
		{"unused block", func(b []byte) []byte { // block 5's data block 2 dropped from the map
			le.PutUint32(b[mapOffset+5*4:], blockFree)
			return b
		}, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(bytes.Clone(base))
			im := mustOpenBytes(t, b)
			res, err := im.(disk.Checker).Check(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if res.Corruptions != c.corrupt || res.Leaks != c.leak || res.Format != "vdi" || res.TotalClusters != 8 {
				t.Fatalf("check %+v: want %d corruptions, %d leaks", res, c.corrupt, c.leak)
			}
			if res.Clean() != (c.corrupt == 0 && c.leak == 0) || len(res.Problems) != c.corrupt+c.leak {
				t.Fatalf("check %+v", res)
			}
		})
	}
	// Damage done to the file after it was opened is found too.
	b := bytes.Clone(base)
	im := mustOpenBytes(t, b)
	le.PutUint32(b[mapOffset+4:], 0) // block 1 shares block 0's data
	le.PutUint32(b[mapOffset+2*4:], 9)
	res, err := im.(disk.Checker).Check(t.Context())
	if err != nil || res.Corruptions != 3 || len(res.Problems) != 3 {
		t.Fatalf("check after damage: %+v, %v", res, err)
	}
	b[offSignature] = 0
	if res, err := im.(disk.Checker).Check(t.Context()); err != nil || res.Corruptions != 1 {
		t.Fatalf("check after header damage: %+v, %v", res, err)
	}
}

func TestCreateOptions(t *testing.T) {
	reg := disk.NewRegistry(Format())
	dir := t.TempDir()
	for _, c := range []struct {
		opts map[string]string
		code errs.Code
	}{
		{map[string]string{"static": "maybe"}, errs.InvalidArgument},
		{map[string]string{"cluster_size": "65536"}, errs.InvalidArgument},
		{map[string]string{"static": "off"}, errs.Unknown},
		{map[string]string{"static": "true"}, errs.Unknown},
	} {
		w, err := reg.Create(t.Context(), filepath.Join(dir, "o.vdi"), "vdi", disktest.MiB, &disk.CreateOptions{Options: c.opts})
		if errs.CodeOf(err) != c.code {
			t.Errorf("options %v: %v, want code %v", c.opts, err, c.code)
		}
		if w != nil {
			w.Close()
		}
	}
	if _, err := Format().Create(t.Context(), &bytes.Buffer{}, disktest.MiB, nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("stream target: %v", err)
	}
	for _, size := range []int64{-1, maxBlocks*defaultBlockSize + 1} {
		if _, err := Format().Create(t.Context(), &memTarget{name: "m"}, size, nil); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("size %d: %v", size, err)
		}
	}
	w, err := Format().Create(t.Context(), &memTarget{name: "m"}, 4*disktest.MiB, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Sequential() || w.Size() != 4*disktest.MiB {
		t.Fatal("writer properties")
	}
	for _, r := range []struct{ off, n int64 }{{-1, 1}, {4 * disktest.MiB, 1}, {4*disktest.MiB - 1, 2}} {
		if _, err := w.WriteAt(make([]byte, r.n), r.off); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("write %d at %d: %v", r.n, r.off, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := w.WriteAt([]byte{1}, 0); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("write after close: %v", err)
	}
	if err := w.Commit(t.Context()); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("commit after close: %v", err)
	}
}

func TestProbe(t *testing.T) {
	good := makeImage(t, 4096, 4096, false)
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"vdi", good, true},
		{"empty", nil, false},
		{"short", good[:0x40], false},
		{"raw zeros", make([]byte, 4096), false},
		{"version 0", withU32(good, offVersion, 2), true},
		{"version 2", withU32(good, offVersion, 0x00020000), false},
	} {
		if got := Format().Probe(disk.BytesFile(c.name, c.b)); got != c.want {
			t.Errorf("%s: probe %v, want %v", c.name, got, c.want)
		}
	}
}

func withU32(b []byte, off int, v uint32) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint32(b[off:], v)
	return b
}

func ext(off, n int64, k disk.ExtentKind) disk.Extent { return disk.Extent{Off: off, Len: n, Kind: k} }

// TestShortRead: a file shorter than it claims, in the header or the map, is
// corrupt.
func TestShortRead(t *testing.T) {
	b := makeImage(t, 8*4096, 4096, false, write{0, 4096, 5})
	for _, n := range []int{100, mapOffset + 8} {
		f := shrunkFile{disk.BytesFile("short.vdi", b[:n]), int64(len(b))}
		if _, err := Format().Open(t.Context(), f, nil); !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "short.vdi") {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}
