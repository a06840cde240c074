package vhdx

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

// Sizes and offsets fixed by [MS-VHDX].
const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
	tib = int64(1) << 40

	headerSectionSize = mib
	identOffset       = 0
	header1Offset     = 64 * kib
	header2Offset     = 128 * kib
	region1Offset     = 192 * kib
	region2Offset     = 256 * kib
	headerSize        = 4 * kib  // the part of a header the checksum covers
	regionTableSize   = 64 * kib // a region table, checksummed whole
	metaTableSize     = 64 * kib // the metadata table at the start of the metadata region
	maxTableEntries   = 2047     // region and metadata tables
	maxMetaItemLen    = mib
	sectorBitmapSize  = mib // one sector bitmap block
	logSectorSize     = 4 * kib

	maxVirtualSize = 64 * tib
	minBlockSize   = mib
	maxBlockSize   = 256 * mib
	// maxBATBytes bounds the BAT ferry holds in memory, reading or writing.
	maxBATBytes = 256 * mib
	// maxLogReplay bounds the log ferry replays in memory.
	maxLogReplay = 64 * mib
	// maxFileSize bounds any file offset ferry accepts: a 64 TiB disk plus
	// its metadata fits with room to spare.
	maxFileSize = 128 * tib
)

// BAT entry states (bits 0-2).
const (
	stateNotPresent = 0 // payload: not present; sector bitmap: not present
	stateUndefined  = 1
	stateZero       = 2
	stateUnmapped   = 3
	stateFull       = 6 // payload: fully present; sector bitmap: present
	statePartial    = 7

	batStateMask    = 7
	batReservedMask = 0xffff8 // bits 3-19
	batOffsetShift  = 20
)

// Metadata table entry flags.
const (
	metaIsUser        = 1 << 0
	metaIsVirtualDisk = 1 << 1
	metaIsRequired    = 1 << 2
)

// File parameters flags.
const (
	paramLeaveBlocksAllocated = 1 << 0
	paramHasParent            = 1 << 1
)

// Signatures, as the little-endian integers they read as.
const (
	sigHead     = 0x64616568         // "head"
	sigRegi     = 0x69676572         // "regi"
	sigMetadata = 0x617461646174656d // "metadata"
	sigLoge     = 0x65676f6c         // "loge"
	sigZero     = 0x6f72657a         // "zero"
	sigDesc     = 0x63736564         // "desc"
	sigData     = 0x61746164         // "data"
)

const identSignature = "vhdxfile"

// guid is a GUID in its on-disk, mixed-endian byte order: the first three
// fields little-endian, the last eight bytes as written.
type guid [16]byte

// mustGUID parses the canonical text form "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
// of a constant; it panics on a malformed constant (a programmer error).
func mustGUID(s string) guid {
	g, ok := parseGUID(s)
	if !ok {
		panic("vhdx: bad GUID constant " + s)
	}
	return g
}

// parseGUID parses the canonical text form, with or without braces, in any
// case.
func parseGUID(s string) (guid, bool) {
	var g guid
	s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}")
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, false
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil {
		return g, false
	}
	// big-endian text order to mixed-endian disk order
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:])
	return g, true
}

// String returns the canonical lowercase text form without braces.
func (g guid) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

func (g guid) isZero() bool { return g == guid{} }

// Well-known GUIDs.
var (
	guidBATRegion      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	guidMetadataRegion = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

	guidFileParameters = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	guidVirtualSize    = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	guidPage83         = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	guidLogicalSector  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	guidPhysicalSector = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	guidParentLocator  = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

	guidVHDXLocatorType = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
)

// castagnoli is the CRC-32C table; read-only after package initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum returns the CRC-32C of b computed with the 4-byte checksum field
// at b[at:at+4] taken as zero.
func checksum(b []byte, at int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:at])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[at+4:])
}

// header is one of the two 4 KiB headers.
type header struct {
	seq       uint64
	fileWrite guid
	dataWrite guid
	logGUID   guid
	logVer    uint16
	version   uint16
	logLength uint32
	logOffset uint64
}

// parseHeader decodes a header; ok reports a valid signature and checksum.
func parseHeader(b []byte) (h header, ok bool) {
	if len(b) < int(headerSize) {
		return h, false
	}
	b = b[:headerSize]
	if binary.LittleEndian.Uint32(b[0:]) != sigHead || binary.LittleEndian.Uint32(b[4:]) != checksum(b, 4) {
		return h, false
	}
	h.seq = binary.LittleEndian.Uint64(b[8:])
	copy(h.fileWrite[:], b[16:32])
	copy(h.dataWrite[:], b[32:48])
	copy(h.logGUID[:], b[48:64])
	h.logVer = binary.LittleEndian.Uint16(b[64:])
	h.version = binary.LittleEndian.Uint16(b[66:])
	h.logLength = binary.LittleEndian.Uint32(b[68:])
	h.logOffset = binary.LittleEndian.Uint64(b[72:])
	return h, true
}

// encode writes h into b[:headerSize] with its checksum.
func (h *header) encode(b []byte) {
	b = b[:headerSize]
	clear(b)
	binary.LittleEndian.PutUint32(b[0:], sigHead)
	binary.LittleEndian.PutUint64(b[8:], h.seq)
	copy(b[16:], h.fileWrite[:])
	copy(b[32:], h.dataWrite[:])
	copy(b[48:], h.logGUID[:])
	binary.LittleEndian.PutUint16(b[64:], h.logVer)
	binary.LittleEndian.PutUint16(b[66:], h.version)
	binary.LittleEndian.PutUint32(b[68:], h.logLength)
	binary.LittleEndian.PutUint64(b[72:], h.logOffset)
	binary.LittleEndian.PutUint32(b[4:], checksum(b, 4))
}

// regionEntry is one region table entry.
type regionEntry struct {
	id       guid
	off      uint64
	length   uint32
	required bool
}

// parseRegionTable decodes a 64 KiB region table. ok reports a valid
// signature and checksum; a bad entry count is an error.
func parseRegionTable(b []byte) (ents []regionEntry, ok bool, err error) {
	if len(b) < int(regionTableSize) {
		return nil, false, nil
	}
	b = b[:regionTableSize]
	if binary.LittleEndian.Uint32(b[0:]) != sigRegi || binary.LittleEndian.Uint32(b[4:]) != checksum(b, 4) {
		return nil, false, nil
	}
	n := binary.LittleEndian.Uint32(b[8:])
	if n > maxTableEntries {
		return nil, true, fmt.Errorf("region table holds %d entries, more than %d", n, maxTableEntries)
	}
	for i := range int(n) {
		e := b[16+32*i:]
		var r regionEntry
		copy(r.id[:], e[:16])
		r.off = binary.LittleEndian.Uint64(e[16:])
		r.length = binary.LittleEndian.Uint32(e[24:])
		r.required = binary.LittleEndian.Uint32(e[28:])&1 != 0
		ents = append(ents, r)
	}
	return ents, true, nil
}

// encodeRegionTable writes a region table into b[:regionTableSize].
func encodeRegionTable(b []byte, ents []regionEntry) {
	b = b[:regionTableSize]
	clear(b)
	binary.LittleEndian.PutUint32(b[0:], sigRegi)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(ents)))
	for i, r := range ents {
		e := b[16+32*i:]
		copy(e, r.id[:])
		binary.LittleEndian.PutUint64(e[16:], r.off)
		binary.LittleEndian.PutUint32(e[24:], r.length)
		if r.required {
			binary.LittleEndian.PutUint32(e[28:], 1)
		}
	}
	binary.LittleEndian.PutUint32(b[4:], checksum(b, 4))
}

// metaEntry is one metadata table entry.
type metaEntry struct {
	id     guid
	off    uint32 // relative to the metadata region
	length uint32
	flags  uint32
}

func (m metaEntry) user() bool     { return m.flags&metaIsUser != 0 }
func (m metaEntry) required() bool { return m.flags&metaIsRequired != 0 }

// parseMetaTable decodes the 64 KiB metadata table.
func parseMetaTable(b []byte) ([]metaEntry, error) {
	if len(b) < int(metaTableSize) {
		return nil, fmt.Errorf("metadata table truncated")
	}
	if binary.LittleEndian.Uint64(b[0:]) != sigMetadata {
		return nil, fmt.Errorf("bad metadata table signature %q", b[:8])
	}
	n := binary.LittleEndian.Uint16(b[10:])
	if n > maxTableEntries {
		return nil, fmt.Errorf("metadata table holds %d entries, more than %d", n, maxTableEntries)
	}
	ents := make([]metaEntry, n)
	for i := range ents {
		e := b[32+32*i:]
		copy(ents[i].id[:], e[:16])
		ents[i].off = binary.LittleEndian.Uint32(e[16:])
		ents[i].length = binary.LittleEndian.Uint32(e[20:])
		ents[i].flags = binary.LittleEndian.Uint32(e[24:])
	}
	return ents, nil
}

// metaItem is a metadata item to write.
type metaItem struct {
	id    guid
	flags uint32
	data  []byte
}

// encodeMetadata lays out the metadata table and items into a buffer
// covering the start of the metadata region: table at 0, items packed from
// 64 KiB.
func encodeMetadata(items []metaItem) []byte {
	total := metaTableSize
	for _, it := range items {
		total += int64(len(it.data))
	}
	b := make([]byte, total)
	binary.LittleEndian.PutUint64(b[0:], sigMetadata)
	binary.LittleEndian.PutUint16(b[10:], uint16(len(items)))
	off := metaTableSize
	for i, it := range items {
		e := b[32+32*i:]
		copy(e, it.id[:])
		if len(it.data) > 0 {
			binary.LittleEndian.PutUint32(e[16:], uint32(off))
		}
		binary.LittleEndian.PutUint32(e[20:], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[24:], it.flags)
		copy(b[off:], it.data)
		off += int64(len(it.data))
	}
	return b
}

// decodeUTF16 decodes little-endian UTF-16 text.
func decodeUTF16(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}

// encodeUTF16 encodes s as little-endian UTF-16.
func encodeUTF16(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

// chunkRatio is the number of payload blocks one sector bitmap block covers.
func chunkRatio(logicalSector, blockSize int64) int64 {
	return (int64(1) << 23) * logicalSector / blockSize
}

// batEntries is how many BAT entries a disk of nBlocks payload blocks needs.
func batEntries(nBlocks, ratio int64, differencing bool) int64 {
	if nBlocks == 0 {
		return 0
	}
	if differencing {
		return (nBlocks + ratio - 1) / ratio * (ratio + 1)
	}
	return nBlocks + (nBlocks-1)/ratio
}

// payloadIndex is the BAT index of payload block i.
func payloadIndex(i, ratio int64) int64 { return i + i/ratio }

// bitmapIndex is the BAT index of the sector bitmap block of chunk c.
func bitmapIndex(c, ratio int64) int64 { return c*(ratio+1) + ratio }
