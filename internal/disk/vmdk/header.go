package vmdk

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/ferry-project/ferry/internal/errs"
)

const (
	sectorSize = 512

	// magicKDMV is "KDMV" read as a little-endian uint32: the hosted
	// sparse extent header.
	magicKDMV = 0x564d444b
	// magicCOWD is "COWD" read likewise: the ESX vmfsSparse (version 1
	// "COW disk") header, which ferry does not read.
	magicCOWD = 0x44574f43

	// gdAtEnd in the header's gdOffset says the grain directory is found
	// through the footer at the end of a stream.
	gdAtEnd = ^uint64(0)

	flagValidNL    = 1 << 0  // the newline detection characters are valid
	flagRGD        = 1 << 1  // a redundant grain directory is kept
	flagZeroGrain  = 1 << 2  // grain table entry 1 means "zeroed grain"
	flagCompressed = 1 << 16 // grains are compressed
	flagMarkers    = 1 << 17 // grains and metadata are preceded by markers
	// Flags 16 and up are incompatible: a reader that does not know one
	// must refuse the file.
	flagsIncompat = 0xffff0000
	flagsKnown    = flagValidNL | flagRGD | flagZeroGrain | flagCompressed | flagMarkers

	compressNone    = 0
	compressDeflate = 1

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	// grainMarkerSize is the {lba uint64, size uint32} in front of a
	// compressed grain.
	grainMarkerSize = 12

	// Limits on what a header may claim before ferry refuses it as
	// corrupt. VMware's largest disk is 62 TB.
	maxCapacity     = int64(64) << 40 // bytes
	maxGrainSectors = 1 << 15         // 16 MiB grains
	minGrainSectors = 8               // 4 KiB, the spec's minimum
	maxGTEs         = 1 << 16
	minGTEs         = sectorSize / 4 // one sector
	maxTableBytes   = 256 << 20      // grain directory
	maxDescBytes    = 1 << 20        // descriptor, embedded or a file

	// What ferry writes.
	writeGrainSectors = 128 // 64 KiB grains
	writeGTEs         = 512
	writeDescOffset   = 1
	writeDescSectors  = 20
	streamOverhead    = 128 // sectors before the first grain of a stream
)

// header is the 512-byte hosted sparse extent header (SparseExtentHeader
// of VMware's Virtual Disk Format 1.1), numbers in sectors.
type header struct {
	version     uint32
	flags       uint32
	capacity    uint64
	grainSize   uint64
	descOffset  uint64
	descSize    uint64
	numGTEs     uint32
	rgdOffset   uint64
	gdOffset    uint64
	overhead    uint64
	unclean     uint8
	nl          [4]byte // '\n', ' ', '\r', '\n' when intact
	compression uint16
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < sectorSize || binary.LittleEndian.Uint32(b) != magicKDMV {
		return header{}, false
	}
	le := binary.LittleEndian
	h := header{
		version:     le.Uint32(b[4:]),
		flags:       le.Uint32(b[8:]),
		capacity:    le.Uint64(b[12:]),
		grainSize:   le.Uint64(b[20:]),
		descOffset:  le.Uint64(b[28:]),
		descSize:    le.Uint64(b[36:]),
		numGTEs:     le.Uint32(b[44:]),
		rgdOffset:   le.Uint64(b[48:]),
		gdOffset:    le.Uint64(b[56:]),
		overhead:    le.Uint64(b[64:]),
		unclean:     b[72],
		compression: le.Uint16(b[77:]),
	}
	copy(h.nl[:], b[73:77])
	return h, true
}

func (h *header) marshal() []byte {
	b := make([]byte, sectorSize)
	le := binary.LittleEndian
	le.PutUint32(b, magicKDMV)
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.flags)
	le.PutUint64(b[12:], h.capacity)
	le.PutUint64(b[20:], h.grainSize)
	le.PutUint64(b[28:], h.descOffset)
	le.PutUint64(b[36:], h.descSize)
	le.PutUint32(b[44:], h.numGTEs)
	le.PutUint64(b[48:], h.rgdOffset)
	le.PutUint64(b[56:], h.gdOffset)
	le.PutUint64(b[64:], h.overhead)
	b[72] = h.unclean
	copy(b[73:77], "\n \r\n")
	le.PutUint16(b[77:], h.compression)
	return b
}

func (h *header) compressed() bool { return h.compression == compressDeflate }

// validate checks the fields that do not depend on the file's size.
func (h *header) validate(name string) error {
	if h.version < 1 || h.version > 3 {
		return fmt.Errorf("vmdk %s: sparse extent version %d: %w", name, h.version, errs.ErrUnimplemented)
	}
	if h.flags&flagValidNL != 0 && h.nl != [4]byte{'\n', ' ', '\r', '\n'} {
		return fmt.Errorf("vmdk %s: header newline check failed (file damaged by a text-mode transfer?): %w", name, errs.ErrCorrupt)
	}
	if u := h.flags & flagsIncompat &^ flagsKnown; u != 0 {
		return fmt.Errorf("vmdk %s: unknown incompatible header flags %#x: %w", name, u, errs.ErrUnimplemented)
	}
	switch h.compression {
	case compressNone:
		if h.flags&flagCompressed != 0 {
			return fmt.Errorf("vmdk %s: header says grains are compressed but names no compression algorithm: %w", name, errs.ErrCorrupt)
		}
	case compressDeflate:
	default:
		return fmt.Errorf("vmdk %s: compression algorithm %d: %w", name, h.compression, errs.ErrUnimplemented)
	}
	if h.capacity > uint64(maxCapacity/sectorSize) {
		return fmt.Errorf("vmdk %s: absurd capacity of %d sectors (limit %d bytes): %w", name, h.capacity, maxCapacity, errs.ErrCorrupt)
	}
	if h.grainSize < minGrainSectors || h.grainSize > maxGrainSectors || bits.OnesCount64(h.grainSize) != 1 {
		return fmt.Errorf("vmdk %s: grain size of %d sectors is not a power of two between %d and %d: %w", name, h.grainSize, minGrainSectors, maxGrainSectors, errs.ErrCorrupt)
	}
	if h.numGTEs < minGTEs || h.numGTEs > maxGTEs || bits.OnesCount32(h.numGTEs) != 1 {
		return fmt.Errorf("vmdk %s: %d entries per grain table is not a power of two between %d and %d: %w", name, h.numGTEs, minGTEs, maxGTEs, errs.ErrCorrupt)
	}
	if h.descSize > maxDescBytes/sectorSize {
		return fmt.Errorf("vmdk %s: embedded descriptor of %d sectors is too large: %w", name, h.descSize, errs.ErrCorrupt)
	}
	return nil
}

// numGrains and numGTs derive the table sizes from the capacity.
func (h *header) numGrains() int64 {
	return int64((h.capacity + h.grainSize - 1) / h.grainSize)
}

func (h *header) numGTs() int64 {
	return (h.numGrains() + int64(h.numGTEs) - 1) / int64(h.numGTEs)
}

// marker is the 512-byte metadata marker of a stream, or the 12-byte head
// of a grain marker (size != 0).
type marker struct {
	val  uint64 // grain: LBA in sectors; metadata: sectors that follow
	size uint32 // grain: compressed bytes; metadata: 0
	typ  uint32 // metadata only
}

func parseMarker(b []byte) marker {
	le := binary.LittleEndian
	m := marker{val: le.Uint64(b), size: le.Uint32(b[8:])}
	if m.size == 0 && len(b) >= 16 {
		m.typ = le.Uint32(b[12:])
	}
	return m
}

// metaMarker returns a 512-byte metadata marker sector.
func metaMarker(typ uint32, sectors uint64) []byte {
	b := make([]byte, sectorSize)
	binary.LittleEndian.PutUint64(b, sectors)
	binary.LittleEndian.PutUint32(b[12:], typ)
	return b
}

func sectorsFor(n int64) int64 { return (n + sectorSize - 1) / sectorSize }
