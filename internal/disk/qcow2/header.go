package qcow2

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// On-disk constants from qemu's docs/interop/qcow2.txt.
const (
	magic = 0x514649fb // "QFI\xfb"

	v2HeaderLen = 72
	v3HeaderLen = 104 // without the optional compression_type byte
	// writtenV3HeaderLen is the header ferry writes: 104 bytes, the
	// compression type byte, padding to a multiple of 8.
	writtenV3HeaderLen = 112

	minClusterBits = 9
	maxClusterBits = 21

	// L1 and L2 entries.
	offsetMask      = 0x00fffffffffffe00
	flagCopied      = uint64(1) << 63
	flagCompressed  = uint64(1) << 62
	flagZero        = uint64(1)
	reftOffsetMask  = 0xfffffffffffffe00
	compressedShift = 62 // compressed descriptors: offset bits below 62-(cluster_bits-8)

	// qemu's limits on table sizes, in bytes.
	maxL1Bytes       = 32 << 20
	maxReftableBytes = 8 << 20
	maxSnapshots     = 65536

	// maxVirtualSize refuses absurd disks: 64 PiB, as far as a qcow2 host
	// offset reaches.
	maxVirtualSize = int64(1) << 56

	maxBackingName = 1023

	// Incompatible feature bits.
	incDirty        = 0
	incCorrupt      = 1
	incExternalData = 2
	incCompression  = 3
	incExtendedL2   = 4
	// Compatible feature bits.
	compatLazyRefcounts = 0

	// Header extension types.
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441

	compressionZlib = 0
	compressionZstd = 1
)

// header is the parsed image header with its extensions.
type header struct {
	version       uint32
	backingOff    uint64
	backingLen    uint32
	clusterBits   uint32
	size          uint64
	cryptMethod   uint32
	l1Size        uint32
	l1Off         uint64
	refOff        uint64
	refClusters   uint32
	nbSnapshots   uint32
	snapOff       uint64
	incompat      uint64
	compat        uint64
	autoclear     uint64
	refcountOrder uint32
	headerLen     uint32
	compression   uint8

	backingFile   string
	backingFormat string
	// featureNames maps (type<<8 | bit) to the name in the feature name
	// table extension, for messages about unknown features.
	featureNames map[uint16]string
	// bitmaps extension, if present
	hasBitmaps bool
	nbBitmaps  uint32
	bmDirSize  uint64
	bmDirOff   uint64
}

func corrupt(name, format string, args ...any) error {
	return fmt.Errorf("qcow2 %s: %s: %w", name, fmt.Sprintf(format, args...), errs.ErrCorrupt)
}

func unsupported(name, format string, args ...any) error {
	return fmt.Errorf("qcow2 %s: %s is not supported: %w", name, fmt.Sprintf(format, args...), errs.ErrUnimplemented)
}

// parseHeader parses the fixed header from b, which holds the start of
// the file (at least v2HeaderLen bytes, more when the file has them).
func parseHeader(name string, b []byte) (*header, error) {
	if len(b) < v2HeaderLen {
		return nil, corrupt(name, "file of %d bytes is too short for a header", len(b))
	}
	be := binary.BigEndian
	if be.Uint32(b) != magic {
		return nil, corrupt(name, "bad magic %#08x", be.Uint32(b))
	}
	h := &header{
		version:     be.Uint32(b[4:]),
		backingOff:  be.Uint64(b[8:]),
		backingLen:  be.Uint32(b[16:]),
		clusterBits: be.Uint32(b[20:]),
		size:        be.Uint64(b[24:]),
		cryptMethod: be.Uint32(b[32:]),
		l1Size:      be.Uint32(b[36:]),
		l1Off:       be.Uint64(b[40:]),
		refOff:      be.Uint64(b[48:]),
		refClusters: be.Uint32(b[56:]),
		nbSnapshots: be.Uint32(b[60:]),
		snapOff:     be.Uint64(b[64:]),
	}
	switch h.version {
	case 2:
		h.refcountOrder = 4
		h.headerLen = v2HeaderLen
	case 3:
		if len(b) < v3HeaderLen {
			return nil, corrupt(name, "file of %d bytes is too short for a version 3 header", len(b))
		}
		h.incompat = be.Uint64(b[72:])
		h.compat = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLen = be.Uint32(b[100:])
		if h.headerLen < v3HeaderLen {
			return nil, corrupt(name, "header length %d is below %d", h.headerLen, v3HeaderLen)
		}
		if h.headerLen > v3HeaderLen {
			if len(b) <= v3HeaderLen {
				return nil, corrupt(name, "file ends inside the header")
			}
			h.compression = b[v3HeaderLen]
		}
	default:
		if h.version < 2 {
			return nil, corrupt(name, "version %d is not qcow2", h.version)
		}
		return nil, unsupported(name, "qcow2 version %d", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > 63 {
		return nil, corrupt(name, "cluster_bits %d out of range", h.clusterBits)
	}
	if h.clusterBits > maxClusterBits {
		return nil, unsupported(name, "cluster size 2^%d (over 2 MiB)", h.clusterBits)
	}
	if h.refcountOrder > 6 {
		return nil, corrupt(name, "refcount_order %d out of range", h.refcountOrder)
	}
	return h, nil
}

// checkFeatures refuses what ferry cannot read.
func (h *header) checkFeatures(name string) error {
	if h.cryptMethod != 0 {
		return unsupported(name, "encryption (crypt_method %d)", h.cryptMethod)
	}
	known := uint64(1)<<incDirty | 1<<incCorrupt | 1<<incCompression
	if h.incompat&(1<<incExternalData) != 0 {
		return unsupported(name, "external data file (incompatible feature bit %d)", incExternalData)
	}
	if h.incompat&(1<<incExtendedL2) != 0 {
		return unsupported(name, "extended L2 entries (incompatible feature bit %d)", incExtendedL2)
	}
	if unknown := h.incompat &^ known; unknown != 0 {
		for bit := range 64 {
			if unknown&(1<<bit) == 0 {
				continue
			}
			if n, ok := h.featureNames[uint16(bit)]; ok && n != "" {
				return unsupported(name, "incompatible feature bit %d (%q)", bit, n)
			}
			return unsupported(name, "unknown incompatible feature bit %d", bit)
		}
	}
	switch h.compression {
	case compressionZlib:
		if h.incompat&(1<<incCompression) != 0 {
			return corrupt(name, "compression type feature bit set for zlib")
		}
	case compressionZstd:
		if h.incompat&(1<<incCompression) == 0 {
			return corrupt(name, "compression type zstd without its incompatible feature bit")
		}
	default:
		return unsupported(name, "compression type %d", h.compression)
	}
	return nil
}

// parseExtensions reads the header extensions and the backing file name
// from the first cluster, given as b (the whole cluster, or the whole file
// when it is shorter).
func (h *header) parseExtensions(name string, b []byte) error {
	cs := uint64(1) << h.clusterBits
	if uint64(h.headerLen) > cs {
		return corrupt(name, "header length %d exceeds the cluster size", h.headerLen)
	}
	if uint64(len(b)) < uint64(h.headerLen) {
		return corrupt(name, "file ends inside the header")
	}
	end := uint64(len(b))
	if h.backingOff != 0 && h.backingOff < end {
		// extensions end where the backing file name begins
		end = h.backingOff
	}
	be := binary.BigEndian
	for off := uint64(h.headerLen); ; {
		if off+8 > end {
			// qemu accepts a header without an end marker when the
			// cluster ends; so do we.
			break
		}
		typ := be.Uint32(b[off:])
		ln := uint64(be.Uint32(b[off+4:]))
		off += 8
		if typ == extEnd {
			break
		}
		if ln > end-off {
			return corrupt(name, "header extension %#x of %d bytes runs past the header cluster", typ, ln)
		}
		data := b[off : off+ln]
		switch typ {
		case extBackingFormat:
			if ln > 1023 {
				return corrupt(name, "backing format name of %d bytes", ln)
			}
			h.backingFormat = strings.TrimRight(string(data), "\x00")
		case extFeatureNames:
			h.featureNames = map[uint16]string{}
			for i := 0; i+48 <= len(data); i += 48 {
				n := strings.TrimRight(string(data[i+2:i+48]), "\x00")
				h.featureNames[uint16(data[i])<<8|uint16(data[i+1])] = n
			}
		case extBitmaps:
			if ln < 24 {
				return corrupt(name, "bitmaps extension of %d bytes", ln)
			}
			h.hasBitmaps = true
			h.nbBitmaps = be.Uint32(data)
			h.bmDirSize = be.Uint64(data[8:])
			h.bmDirOff = be.Uint64(data[16:])
		}
		off += (ln + 7) &^ 7
	}
	if h.backingOff != 0 || h.backingLen != 0 {
		if h.backingLen == 0 {
			// qemu ignores an offset without a name
			return nil
		}
		if h.backingLen > maxBackingName {
			return corrupt(name, "backing file name of %d bytes is too long", h.backingLen)
		}
		if h.backingOff < uint64(h.headerLen) || h.backingOff+uint64(h.backingLen) > cs {
			return corrupt(name, "backing file name at %#x (%d bytes) is outside the header cluster", h.backingOff, h.backingLen)
		}
		if h.backingOff+uint64(h.backingLen) > uint64(len(b)) {
			return corrupt(name, "backing file name runs past the end of the file")
		}
		h.backingFile = string(b[h.backingOff : h.backingOff+uint64(h.backingLen)])
	}
	return nil
}

// headerParams is what the writer records in the header.
type headerParams struct {
	v3            bool
	clusterBits   uint
	size          int64
	l1Size        int64
	l1Off         int64
	refOff        int64
	refClusters   int64
	zstd          bool
	backingFile   string
	backingFormat string
}

// encodeHeader returns the header cluster's contents up to the end of the
// backing file name. It fails when they do not fit in one cluster.
func encodeHeader(p headerParams) ([]byte, error) {
	be := binary.BigEndian
	hlen := v2HeaderLen
	if p.v3 {
		hlen = writtenV3HeaderLen
	}
	b := make([]byte, hlen, 512)
	be.PutUint32(b[0:], magic)
	if p.v3 {
		be.PutUint32(b[4:], 3)
	} else {
		be.PutUint32(b[4:], 2)
	}
	be.PutUint32(b[20:], uint32(p.clusterBits))
	be.PutUint64(b[24:], uint64(p.size))
	be.PutUint32(b[36:], uint32(p.l1Size))
	be.PutUint64(b[40:], uint64(p.l1Off))
	be.PutUint64(b[48:], uint64(p.refOff))
	be.PutUint32(b[56:], uint32(p.refClusters))
	if p.v3 {
		if p.zstd {
			be.PutUint64(b[72:], 1<<incCompression)
			b[104] = compressionZstd
		}
		be.PutUint32(b[96:], 4) // refcount_order: 16-bit refcounts
		be.PutUint32(b[100:], uint32(hlen))
	}
	if p.backingFormat != "" {
		ext := make([]byte, 8, 8+len(p.backingFormat)+7)
		be.PutUint32(ext, extBackingFormat)
		be.PutUint32(ext[4:], uint32(len(p.backingFormat)))
		ext = append(ext, p.backingFormat...)
		for len(ext)%8 != 0 {
			ext = append(ext, 0)
		}
		b = append(b, ext...)
	}
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0) // end of extensions
	if p.backingFile != "" {
		be.PutUint64(b[8:], uint64(len(b)))
		be.PutUint32(b[16:], uint32(len(p.backingFile)))
		b = append(b, p.backingFile...)
	}
	if len(b) > 1<<p.clusterBits {
		return nil, fmt.Errorf("header, extensions and backing file name take %d bytes, more than the %d-byte cluster: %w", len(b), 1<<p.clusterBits, errs.ErrInvalidArgument)
	}
	return b, nil
}
