package vhdx

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// Test images are built in memory. Ferry's writer with log_size=1M puts the
// log at 1 MiB, the metadata region at 2 MiB, the BAT at 3 MiB and data
// from 4 MiB; the builders below use the same places.
const (
	tLogOff  = 1 * mib
	tMetaOff = 2 * mib
	tBATOff  = 3 * mib
	tDataOff = 4 * mib
)

// ferryBytes writes pt with ferry's writer (1 MiB blocks unless opts say
// otherwise) and returns the file's bytes.
func ferryBytes(t testing.TB, pt *disktest.Pattern, opts map[string]string) []byte {
	t.Helper()
	o := map[string]string{"block_size": "1M"}
	for k, v := range opts {
		o[k] = v
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "img.vhdx")
	reg := disk.NewRegistry(Format())
	ctx := t.Context()
	w, err := reg.Create(ctx, path, "vhdx", pt.Size, &disk.CreateOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := disktest.WritePattern(ctx, w, pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// smallPattern is a little disk with data in blocks 0, 2 and 5 (of 1 MiB).
func smallPattern() *disktest.Pattern {
	return &disktest.Pattern{Name: "small", Size: 8 * mib, Seed: 11, Data: []disk.Extent{
		{Off: 0, Len: 300 * kib}, {Off: 2*mib + 4096, Len: 8192}, {Off: 5*mib - 512, Len: 1024},
	}}
}

// rewriteHeaders re-encodes both headers of b after fn changes them.
func rewriteHeaders(b []byte, fn func(h *header)) {
	for _, off := range []int64{header1Offset, header2Offset} {
		h, _ := parseHeader(b[off:])
		fn(&h)
		h.encode(b[off:])
	}
}

// rewriteRegions re-encodes both region tables of b after fn changes them.
func rewriteRegions(b []byte, fn func([]regionEntry) []regionEntry) {
	ents, _, _ := parseRegionTable(b[region1Offset:])
	ents = fn(ents)
	encodeRegionTable(b[region1Offset:], ents)
	encodeRegionTable(b[region2Offset:], ents)
}

// metaItemOffset finds the offset in b of the system metadata item id.
func metaItemOffset(t testing.TB, b []byte, id guid) int64 {
	t.Helper()
	ents, err := parseMetaTable(b[tMetaOff:])
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.id == id && !e.user() {
			return tMetaOff + int64(e.off)
		}
	}
	t.Fatalf("no metadata item %s", id)
	return 0
}

// batEntry reads and writes BAT entry i of b (BAT at tBATOff).
func getBAT(b []byte, i int64) uint64 { return binary.LittleEndian.Uint64(b[tBATOff+8*i:]) }
func setBAT(b []byte, i int64, v uint64) {
	binary.LittleEndian.PutUint64(b[tBATOff+8*i:], v)
}

// fileOf wraps bytes as a File named name.
func fileOf(name string, b []byte) disk.File { return disk.BytesFile(name, b) }

// readAll reads a whole (small) image.
func readAll(t testing.TB, img disk.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if n, err := img.ReadAt(b, 0); n != len(b) || (err != nil && n != len(b)) {
		t.Fatalf("read: %d, %v", n, err)
	}
	return b
}

// locatorItem encodes a VHDX parent locator.
func locatorItem(typ guid, kv [][2]string) []byte {
	var strs bytes.Buffer
	type ent struct{ ko, vo, kl, vl int }
	var ents []ent
	base := 20 + 12*len(kv)
	for _, p := range kv {
		k, v := encodeUTF16(p[0]), encodeUTF16(p[1])
		e := ent{ko: base + strs.Len(), kl: len(k)}
		strs.Write(k)
		e.vo, e.vl = base+strs.Len(), len(v)
		strs.Write(v)
		ents = append(ents, e)
	}
	b := make([]byte, base, base+strs.Len())
	copy(b, typ[:])
	binary.LittleEndian.PutUint16(b[18:], uint16(len(kv)))
	for i, e := range ents {
		x := b[20+12*i:]
		binary.LittleEndian.PutUint32(x[0:], uint32(e.ko))
		binary.LittleEndian.PutUint32(x[4:], uint32(e.vo))
		binary.LittleEndian.PutUint16(x[8:], uint16(e.kl))
		binary.LittleEndian.PutUint16(x[10:], uint16(e.vl))
	}
	return append(b, strs.Bytes()...)
}

// skeleton builds the header section, metadata and an empty BAT region of
// an image with the given parameters, in a buffer of fileSize bytes.
type skeleton struct {
	size      int64
	bs        int64
	lss       int64
	flags     uint32 // file parameters flags
	locator   []byte // parent locator item, if any
	dataWrite guid
	logGUID   guid
	fileSize  int64
	batLen    int64 // BAT region length (1 MiB if 0)
}

func (s skeleton) build() []byte {
	b := make([]byte, s.fileSize)
	copy(b, identSignature)
	h := header{seq: 7, dataWrite: s.dataWrite, logGUID: s.logGUID, version: 1, logLength: uint32(mib), logOffset: uint64(tLogOff)}
	h.fileWrite[0] = 1
	h.encode(b[header1Offset:])
	h.seq++
	h.encode(b[header2Offset:])
	batLen := s.batLen
	if batLen == 0 {
		batLen = mib
	}
	regions := []regionEntry{
		{id: guidBATRegion, off: uint64(tBATOff), length: uint32(batLen), required: true},
		{id: guidMetadataRegion, off: uint64(tMetaOff), length: uint32(mib), required: true},
	}
	encodeRegionTable(b[region1Offset:], regions)
	encodeRegionTable(b[region2Offset:], regions)
	le := binary.LittleEndian
	params := make([]byte, 8)
	le.PutUint32(params, uint32(s.bs))
	le.PutUint32(params[4:], s.flags)
	vs := make([]byte, 8)
	le.PutUint64(vs, uint64(s.size))
	lss := make([]byte, 4)
	le.PutUint32(lss, uint32(s.lss))
	items := []metaItem{
		{guidFileParameters, metaIsRequired, params},
		{guidVirtualSize, metaIsRequired | metaIsVirtualDisk, vs},
		{guidPage83, metaIsRequired | metaIsVirtualDisk, make([]byte, 16)},
		{guidLogicalSector, metaIsRequired | metaIsVirtualDisk, lss},
		{guidPhysicalSector, metaIsRequired | metaIsVirtualDisk, lss},
	}
	if s.locator != nil {
		items = append(items, metaItem{guidParentLocator, metaIsRequired, s.locator})
	}
	copy(b[tMetaOff:], encodeMetadata(items))
	return b
}
