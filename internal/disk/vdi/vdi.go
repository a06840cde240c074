package vdi

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// On-disk constants. The layout is VirtualBox's VDIPREHEADER followed by
// VDIHEADER1PLUS (VDICore.h); qemu's block/vdi.c reads the same fields.
const (
	signature = 0xBEDA107F
	version11 = 0x00010001

	preHeaderSize = 0x48  // banner, signature, version
	headerV1Size  = 0x180 // VDIHEADER1, what qemu writes
	headerV1Plus  = 0x190 // VDIHEADER1PLUS (adds LCHS geometry), what VirtualBox and ferry write
	sectorSize    = 512

	defaultBlockSize = 1 << 20
	minBlockSize     = 512
	maxBlockSize     = 1 << 28

	// maxMapBytes bounds the block map ferry reads or writes: 2^26
	// entries, 64 TiB of disk with 1 MiB blocks.
	maxMapBytes = 256 << 20
	maxBlocks   = maxMapBytes / 4

	blockFree = 0xFFFFFFFF // never written: reads as zeros
	blockZero = 0xFFFFFFFE // discarded / recorded as zeros

	typeNormal = 1
	typeFixed  = 2
	typeUndo   = 3
	typeDiff   = 4

	banner    = "<<< Oracle VM VirtualBox Disk Image >>>\n"
	mapOffset = 0x200 // where ferry puts the block map: the sector after the header
)

// Field offsets from the start of the file.
const (
	offSignature   = 0x40
	offVersion     = 0x44
	offHeaderSize  = 0x48
	offImageType   = 0x4C
	offImageFlags  = 0x50
	offComment     = 0x54 // 256 bytes
	offBlocksMap   = 0x154
	offDataArea    = 0x158
	offCylinders   = 0x15C
	offHeads       = 0x160
	offSectors     = 0x164
	offSectorSize  = 0x168
	offDiskSize    = 0x170
	offBlockSize   = 0x178
	offBlockExtra  = 0x17C
	offBlocks      = 0x180
	offAllocated   = 0x184
	offUUIDImage   = 0x188
	offUUIDModify  = 0x198
	offUUIDLink    = 0x1A8
	offUUIDParent  = 0x1B8
	offLCHS        = 0x1C8 // 16 bytes, present when the header size is ≥ 0x190
	commentSize    = 256
	headerReadSize = 0x200
)

// Format returns the VDI (VirtualBox) format descriptor.
func Format() *disk.Format {
	return &disk.Format{
		Name:   "vdi",
		Probe:  probe,
		Open:   open,
		Create: create,
		Options: []disk.Option{{
			Key: "static",
			Help: "on: fixed image, every block allocated in order and the file sized at once (sparse); " +
				"off: dynamic image, blocks allocated as they are written",
			Default: "off",
		}},
	}
}

// probe claims files with the VDI signature and a version major VirtualBox
// ever wrote (0 or 1); Open refuses what ferry cannot read.
func probe(f disk.File) bool {
	var b [preHeaderSize]byte
	if f.Size() < preHeaderSize {
		return false
	}
	if n, _ := f.ReadAt(b[:], 0); n < preHeaderSize {
		return false
	}
	if binary.LittleEndian.Uint32(b[offSignature:]) != signature {
		return false
	}
	major := binary.LittleEndian.Uint32(b[offVersion:]) >> 16
	return major <= 1
}

// header is the parsed VDI header.
type header struct {
	text       string
	version    uint32
	headerSize uint32
	imageType  uint32
	flags      uint32
	comment    string
	offBlocks  uint32
	offData    uint32
	sectorSize uint32
	diskSize   uint64
	blockSize  uint32
	blockExtra uint32
	blocks     uint32
	allocated  uint32
	uuidImage  [16]byte
	uuidModify [16]byte
	uuidLink   [16]byte
	uuidParent [16]byte
}

// parseHeader decodes and checks the header fields that do not depend on the
// file's size. b holds the start of the file (up to headerReadSize bytes).
func parseHeader(name string, b []byte) (*header, error) {
	le := binary.LittleEndian
	if len(b) < preHeaderSize {
		return nil, fmt.Errorf("vdi %s: file of %d bytes is too short for a vdi header: %w", name, len(b), errs.ErrCorrupt)
	}
	if sig := le.Uint32(b[offSignature:]); sig != signature {
		return nil, fmt.Errorf("vdi %s: bad signature %#08x, want %#08x: %w", name, sig, uint32(signature), errs.ErrCorrupt)
	}
	h := &header{version: le.Uint32(b[offVersion:])}
	if h.version != version11 {
		return nil, fmt.Errorf("vdi %s: header version %d.%d is not supported (only 1.1): %w", name, h.version>>16, h.version&0xffff, errs.ErrUnimplemented)
	}
	if len(b) < preHeaderSize+headerV1Size {
		return nil, fmt.Errorf("vdi %s: header truncated at %d bytes: %w", name, len(b), errs.ErrCorrupt)
	}
	h.text = cString(b[:preHeaderSize-8])
	h.headerSize = le.Uint32(b[offHeaderSize:])
	h.imageType = le.Uint32(b[offImageType:])
	h.flags = le.Uint32(b[offImageFlags:])
	h.comment = cString(b[offComment : offComment+commentSize])
	h.offBlocks = le.Uint32(b[offBlocksMap:])
	h.offData = le.Uint32(b[offDataArea:])
	h.sectorSize = le.Uint32(b[offSectorSize:])
	h.diskSize = le.Uint64(b[offDiskSize:])
	h.blockSize = le.Uint32(b[offBlockSize:])
	h.blockExtra = le.Uint32(b[offBlockExtra:])
	h.blocks = le.Uint32(b[offBlocks:])
	h.allocated = le.Uint32(b[offAllocated:])
	copy(h.uuidImage[:], b[offUUIDImage:])
	copy(h.uuidModify[:], b[offUUIDModify:])
	copy(h.uuidLink[:], b[offUUIDLink:])
	copy(h.uuidParent[:], b[offUUIDParent:])

	if h.headerSize < headerV1Size {
		return nil, fmt.Errorf("vdi %s: header size %#x is smaller than %#x: %w", name, h.headerSize, headerV1Size, errs.ErrCorrupt)
	}
	switch h.imageType {
	case typeNormal, typeFixed:
	case typeUndo:
		return nil, fmt.Errorf("vdi %s: undo images are not supported: %w", name, errs.ErrUnimplemented)
	case typeDiff:
		return nil, fmt.Errorf("vdi %s: differencing images are not supported: %w", name, errs.ErrUnimplemented)
	default:
		return nil, fmt.Errorf("vdi %s: unknown image type %d: %w", name, h.imageType, errs.ErrCorrupt)
	}
	if h.uuidLink != ([16]byte{}) || h.uuidParent != ([16]byte{}) {
		return nil, fmt.Errorf("vdi %s: image links to a parent image %s (differencing images are not supported): %w", name, uuidString(h.uuidLink), errs.ErrUnimplemented)
	}
	if h.sectorSize != sectorSize {
		return nil, fmt.Errorf("vdi %s: sector size %d is not supported (only 512): %w", name, h.sectorSize, errs.ErrUnimplemented)
	}
	if h.blockExtra != 0 {
		return nil, fmt.Errorf("vdi %s: per-block extra data (%d bytes) is not supported: %w", name, h.blockExtra, errs.ErrUnimplemented)
	}
	if h.blockSize == 0 || h.blockSize&(h.blockSize-1) != 0 {
		return nil, fmt.Errorf("vdi %s: block size %d is not a power of two: %w", name, h.blockSize, errs.ErrCorrupt)
	}
	if h.blockSize < minBlockSize || h.blockSize > maxBlockSize {
		return nil, fmt.Errorf("vdi %s: block size %d is not supported (512 B to 256 MiB): %w", name, h.blockSize, errs.ErrUnimplemented)
	}
	// qemu rounds odd sizes up to a sector; so does ferry.
	if h.diskSize > 1<<62 {
		return nil, fmt.Errorf("vdi %s: absurd disk size %d: %w", name, h.diskSize, errs.ErrCorrupt)
	}
	size := (h.diskSize + sectorSize - 1) &^ (sectorSize - 1)
	if want := (size + uint64(h.blockSize) - 1) / uint64(h.blockSize); uint64(h.blocks) != want {
		return nil, fmt.Errorf("vdi %s: %d blocks of %d bytes do not match disk size %d (want %d blocks): %w", name, h.blocks, h.blockSize, h.diskSize, want, errs.ErrCorrupt)
	}
	if h.allocated > h.blocks {
		return nil, fmt.Errorf("vdi %s: %d blocks allocated out of %d: %w", name, h.allocated, h.blocks, errs.ErrCorrupt)
	}
	if uint64(h.offBlocks) < preHeaderSize+uint64(h.headerSize) {
		return nil, fmt.Errorf("vdi %s: block map at %#x overlaps the %#x-byte header: %w", name, h.offBlocks, h.headerSize, errs.ErrCorrupt)
	}
	if uint64(h.offData) < h.mapEnd() {
		return nil, fmt.Errorf("vdi %s: data area at %#x overlaps the block map [%#x, %#x): %w", name, h.offData, h.offBlocks, h.mapEnd(), errs.ErrCorrupt)
	}
	return h, nil
}

// size is the virtual size: the disk size rounded up to a sector.
func (h *header) size() int64 {
	return int64((h.diskSize + sectorSize - 1) &^ (sectorSize - 1))
}

func (h *header) mapEnd() uint64 { return uint64(h.offBlocks) + 4*uint64(h.blocks) }

func (h *header) subformat() string {
	if h.imageType == typeFixed {
		return "fixed"
	}
	return "dynamic"
}

// marshal encodes the header as the file's first sector.
func (h *header) marshal() []byte {
	le := binary.LittleEndian
	b := make([]byte, headerReadSize)
	copy(b[:preHeaderSize-8], h.text)
	le.PutUint32(b[offSignature:], signature)
	le.PutUint32(b[offVersion:], h.version)
	le.PutUint32(b[offHeaderSize:], h.headerSize)
	le.PutUint32(b[offImageType:], h.imageType)
	le.PutUint32(b[offImageFlags:], h.flags)
	copy(b[offComment:offComment+commentSize-1], h.comment)
	le.PutUint32(b[offBlocksMap:], h.offBlocks)
	le.PutUint32(b[offDataArea:], h.offData)
	// Legacy geometry: "not calculated" (zero C/H/S) with 512-byte
	// sectors, as VirtualBox writes it.
	le.PutUint32(b[offSectorSize:], h.sectorSize)
	le.PutUint64(b[offDiskSize:], h.diskSize)
	le.PutUint32(b[offBlockSize:], h.blockSize)
	le.PutUint32(b[offBlockExtra:], h.blockExtra)
	le.PutUint32(b[offBlocks:], h.blocks)
	le.PutUint32(b[offAllocated:], h.allocated)
	copy(b[offUUIDImage:], h.uuidImage[:])
	copy(b[offUUIDModify:], h.uuidModify[:])
	copy(b[offUUIDLink:], h.uuidLink[:])
	copy(b[offUUIDParent:], h.uuidParent[:])
	if h.headerSize >= headerV1Plus {
		le.PutUint32(b[offLCHS+12:], sectorSize) // LCHS geometry not calculated
	}
	return b
}

func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// newUUID returns a random (version 4) UUID in VDI's on-disk byte order.
func newUUID() [16]byte {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return swapUUID(u)
}

// swapUUID converts between RFC 4122 byte order and VirtualBox's, which
// stores the first three fields little-endian.
func swapUUID(u [16]byte) [16]byte {
	u[0], u[1], u[2], u[3] = u[3], u[2], u[1], u[0]
	u[4], u[5] = u[5], u[4]
	u[6], u[7] = u[7], u[6]
	return u
}

// uuidString formats an on-disk UUID the way VirtualBox prints it.
func uuidString(disk [16]byte) string {
	u := swapUUID(disk)
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
