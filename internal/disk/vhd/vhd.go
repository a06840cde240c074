package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/ferry-project/ferry/internal/disk"
)

// On-disk constants, from the VHD specification v1.0.
const (
	sectorSize = 512
	footerSize = 512
	headerSize = 1024

	typeFixed   = 2
	typeDynamic = 3
	typeDiff    = 4

	unallocated = 0xFFFFFFFF

	footerCookie = "conectix"
	headerCookie = "cxsparse"

	footerFeatures = 0x00000002 // the reserved bit, always set
	formatVersion  = 0x00010000
	headerVersion  = 0x00010000

	// What ferry writes: XenServer's creator, which every current reader
	// (qemu, XenServer, Hyper-V, Azure, EC2) sizes by current_size.
	creatorApp     = "tap\x00"
	creatorVersion = 0x00010003
	creatorOS      = "Wi2k"

	// maxWriteSize is the largest disk the format allows (the spec's CHS
	// ceiling, and what Hyper-V and qemu accept).
	maxWriteSize = 2040 << 30
	// maxReadSize bounds a claimed size before anything is allocated; it
	// is far above what any VHD writer produces.
	maxReadSize = 64 << 40
	// maxBATBytes bounds the BAT ferry reads into memory.
	maxBATBytes = 256 << 20
	// maxBlockSize bounds a dynamic disk's block size when reading.
	maxBlockSize = 256 << 20
	// defaultBlockSize is the spec's, Hyper-V's and XenServer's.
	defaultBlockSize = 2 << 20

	// maxLocatorBytes bounds one parent locator's data.
	maxLocatorBytes = 64 << 10
)

// vhdEpoch is the zero of VHD timestamps: 2000-01-01 00:00:00 UTC.
var vhdEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Parent locator platform codes.
const (
	platW2ru = 0x57327275 // "W2ru": Windows relative path, UTF-16LE
	platW2ku = 0x57326b75 // "W2ku": Windows absolute path, UTF-16LE
	platMacX = 0x4d616358 // "MacX": file:// URL, UTF-8
)

// Format returns the VHD format descriptor: fixed, dynamic and differencing
// VHDs are read; fixed and dynamic are written, and differencing when
// CreateOptions.Backing is a VHD.
func Format() *disk.Format {
	f := &disk.Format{
		Name:       "vhd",
		Aliases:    []string{"vpc"},
		Probe:      probe,
		Open:       open,
		OpenStream: openStream,
		Options: []disk.Option{
			{Key: "subformat", Default: "dynamic", Help: "dynamic: sparse, written in one sequential pass (footer copy, header, BAT, blocks in LBA order, footer), streamable; fixed: the raw data followed by a 512-byte footer (what Azure requires). A differencing VHD is written when a VHD backing image is given"},
			{Key: "block_size", Default: "2M", Help: "dynamic and differencing block size: 512K or 2M, the two sizes Hyper-V accepts"},
			{Key: "force_size", Default: "on", Help: "accepted for qemu-img compatibility (on or off) and has no effect: ferry always records the exact size (rounded up to 512 bytes) with creator \"tap\", which every reader takes as the size"},
		},
	}
	f.Create = func(ctx context.Context, t disk.Target, size int64, opts *disk.CreateOptions) (disk.Writer, error) {
		if err := f.CheckOptions(opts); err != nil {
			return nil, err
		}
		return create(ctx, t, size, opts)
	}
	return f
}

// footer is the 512-byte VHD footer (the "hard disk footer").
type footer struct {
	features       uint32
	version        uint32
	dataOffset     uint64
	timestamp      uint32
	creatorApp     [4]byte
	creatorVersion uint32
	creatorOS      [4]byte
	origSize       uint64
	curSize        uint64
	cylinders      uint16
	heads          uint8
	sectors        uint8
	diskType       uint32
	checksum       uint32
	uuid           [16]byte
	savedState     uint8
}

// checksumOf is the one's complement of the byte sum of b, skipping the
// four checksum bytes at skip.
func checksumOf(b []byte, skip int) uint32 {
	var s uint32
	for _, c := range b {
		s += uint32(c)
	}
	for _, c := range b[skip : skip+4] {
		s -= uint32(c)
	}
	return ^s
}

// parseFooter decodes b (512 bytes, or 511 for the old Virtual PC footer,
// padded by the caller). ok reports the cookie; sumOK the checksum.
func parseFooter(b []byte) (ft footer, ok, sumOK bool) {
	if len(b) < footerSize || string(b[:8]) != footerCookie {
		return ft, false, false
	}
	be := binary.BigEndian
	ft.features = be.Uint32(b[8:])
	ft.version = be.Uint32(b[12:])
	ft.dataOffset = be.Uint64(b[16:])
	ft.timestamp = be.Uint32(b[24:])
	copy(ft.creatorApp[:], b[28:32])
	ft.creatorVersion = be.Uint32(b[32:])
	copy(ft.creatorOS[:], b[36:40])
	ft.origSize = be.Uint64(b[40:])
	ft.curSize = be.Uint64(b[48:])
	ft.cylinders = be.Uint16(b[56:])
	ft.heads = b[58]
	ft.sectors = b[59]
	ft.diskType = be.Uint32(b[60:])
	ft.checksum = be.Uint32(b[64:])
	copy(ft.uuid[:], b[68:84])
	ft.savedState = b[84]
	return ft, true, checksumOf(b[:footerSize], 64) == ft.checksum
}

// marshal encodes the footer with its checksum.
func (ft *footer) marshal() []byte {
	b := make([]byte, footerSize)
	be := binary.BigEndian
	copy(b, footerCookie)
	be.PutUint32(b[8:], ft.features)
	be.PutUint32(b[12:], ft.version)
	be.PutUint64(b[16:], ft.dataOffset)
	be.PutUint32(b[24:], ft.timestamp)
	copy(b[28:32], ft.creatorApp[:])
	be.PutUint32(b[32:], ft.creatorVersion)
	copy(b[36:40], ft.creatorOS[:])
	be.PutUint64(b[40:], ft.origSize)
	be.PutUint64(b[48:], ft.curSize)
	be.PutUint16(b[56:], ft.cylinders)
	b[58] = ft.heads
	b[59] = ft.sectors
	be.PutUint32(b[60:], ft.diskType)
	copy(b[68:84], ft.uuid[:])
	b[84] = ft.savedState
	ft.checksum = checksumOf(b, 64)
	be.PutUint32(b[64:], ft.checksum)
	return b
}

// locator is one of the dynamic header's eight parent locator entries.
type locator struct {
	code   uint32
	space  uint32 // bytes or sectors, depending on the writer: not used
	length uint32
	offset uint64
}

// dynHeader is the 1024-byte dynamic disk header ("cxsparse").
type dynHeader struct {
	dataOffset      uint64
	tableOffset     uint64
	version         uint32
	maxEntries      uint32
	blockSize       uint32
	checksum        uint32
	parentUUID      [16]byte
	parentTimestamp uint32
	parentName      [512]byte // UTF-16BE, NUL padded
	locators        [8]locator
}

func parseHeader(b []byte) (h dynHeader, ok, sumOK bool) {
	if len(b) < headerSize || string(b[:8]) != headerCookie {
		return h, false, false
	}
	be := binary.BigEndian
	h.dataOffset = be.Uint64(b[8:])
	h.tableOffset = be.Uint64(b[16:])
	h.version = be.Uint32(b[24:])
	h.maxEntries = be.Uint32(b[28:])
	h.blockSize = be.Uint32(b[32:])
	h.checksum = be.Uint32(b[36:])
	copy(h.parentUUID[:], b[40:56])
	h.parentTimestamp = be.Uint32(b[56:])
	copy(h.parentName[:], b[64:576])
	for i := range h.locators {
		e := b[576+24*i:]
		h.locators[i] = locator{
			code:   be.Uint32(e[0:]),
			space:  be.Uint32(e[4:]),
			length: be.Uint32(e[8:]),
			offset: be.Uint64(e[16:]),
		}
	}
	return h, true, checksumOf(b[:headerSize], 36) == h.checksum
}

func (h *dynHeader) marshal() []byte {
	b := make([]byte, headerSize)
	be := binary.BigEndian
	copy(b, headerCookie)
	be.PutUint64(b[8:], h.dataOffset)
	be.PutUint64(b[16:], h.tableOffset)
	be.PutUint32(b[24:], h.version)
	be.PutUint32(b[28:], h.maxEntries)
	be.PutUint32(b[32:], h.blockSize)
	copy(b[40:56], h.parentUUID[:])
	be.PutUint32(b[56:], h.parentTimestamp)
	copy(b[64:576], h.parentName[:])
	for i, l := range h.locators {
		e := b[576+24*i:]
		be.PutUint32(e[0:], l.code)
		be.PutUint32(e[4:], l.space)
		be.PutUint32(e[8:], l.length)
		be.PutUint64(e[16:], l.offset)
	}
	h.checksum = checksumOf(b, 36)
	be.PutUint32(b[36:], h.checksum)
	return b
}

// geometry computes the CHS geometry of a disk of size bytes with the
// algorithm of the VHD specification (appendix "CHS calculation"). ferry
// records it because the format has the field; it never uses it for the
// size.
func geometry(size int64) (cyl uint16, heads, spt uint8) {
	total := size / sectorSize
	if total > 65535*16*255 {
		total = 65535 * 16 * 255
	}
	var cth int64
	var h, s int64
	if total >= 65535*16*63 {
		s = 255
		h = 16
		cth = total / s
	} else {
		s = 17
		cth = total / s
		h = (cth + 1023) / 1024
		if h < 4 {
			h = 4
		}
		if cth >= h*1024 || h > 16 {
			s = 31
			h = 16
			cth = total / s
		}
		if cth >= h*1024 {
			s = 63
			h = 16
			cth = total / s
		}
	}
	return uint16(cth / h), uint8(h), uint8(s)
}

// bitmapBytes is the size of a block's sector bitmap, padded to a sector.
func bitmapBytes(blockSize int64) int64 {
	n := (blockSize/sectorSize + 7) / 8
	return (n + sectorSize - 1) / sectorSize * sectorSize
}

func isPow2(n int64) bool { return n > 0 && bits.OnesCount64(uint64(n)) == 1 }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return u, fmt.Errorf("invalid uuid %q", s)
	}
	copy(u[:], b)
	return u, nil
}

// printable returns a creator field as text: NULs and spaces trimmed.
func printable(b []byte) string {
	return strings.TrimRight(string(bytes.TrimRight(b, "\x00")), " \x00")
}

func vhdTime(ts uint32) time.Time { return vhdEpoch.Add(time.Duration(ts) * time.Second) }

func toVHDTime(t time.Time) uint32 {
	d := t.Sub(vhdEpoch) / time.Second
	if d < 0 {
		return 0
	}
	if d > 0xFFFFFFFF {
		return 0xFFFFFFFF
	}
	return uint32(d)
}

// decodeUTF16 decodes NUL-terminated UTF-16 text in the given byte order.
func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func encodeUTF16(s string, order binary.ByteOrder) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		order.PutUint16(b[2*i:], c)
	}
	return b
}

func subformatName(t uint32) string {
	switch t {
	case typeFixed:
		return "fixed"
	case typeDynamic:
		return "dynamic"
	case typeDiff:
		return "differencing"
	}
	return fmt.Sprintf("type %d", t)
}
