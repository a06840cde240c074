package xapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// CBTBlockSize is the granularity of changed block tracking: one bit of a
// list_changed_blocks bitmap per 64 KiB of the disk.
const CBTBlockSize = 64 << 10

// maxCBTBitmap bounds a decoded bitmap (one byte covers 512 KiB: 32 MiB
// covers 16 TiB, far beyond VHD's 2 TiB).
const maxCBTBitmap = 32 << 20

// DecodeChangedBlocks decodes VDI.list_changed_blocks' result, a base64
// bitmap with one bit per 64 KiB block, most significant bit first in each
// byte, into the changed ranges of a disk of the given virtual size:
// extents of kind Data, ascending, adjacent blocks merged, the last one
// clipped to the size. A bitmap too short for the size (it would hide
// changes) is an error wrapping errs.ErrCorrupt; bits past the end of the
// disk are ignored.
func DecodeChangedBlocks(b64 string, size int64) ([]disk.Extent, error) {
	if size < 0 {
		return nil, fmt.Errorf("changed blocks: negative disk size %d: %w", size, errs.ErrInvalidArgument)
	}
	s := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\n', '\r', '\t':
			return -1
		}
		return r
	}, b64)
	if base64.StdEncoding.DecodedLen(len(s)) > maxCBTBitmap+3 {
		return nil, fmt.Errorf("changed blocks: bitmap of %d base64 characters is too large: %w", len(s), errs.ErrCorrupt)
	}
	bm, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		var err2 error
		if bm, err2 = base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "=")); err2 != nil {
			return nil, fmt.Errorf("changed blocks: bitmap is not base64: %v: %w", err, errs.ErrCorrupt)
		}
	}
	nblocks := (size + CBTBlockSize - 1) / CBTBlockSize
	if int64(len(bm))*8 < nblocks {
		return nil, fmt.Errorf("changed blocks: bitmap of %d bytes covers %d blocks, but the %d-byte disk has %d: %w",
			len(bm), len(bm)*8, size, nblocks, errs.ErrCorrupt)
	}
	var out []disk.Extent
	for b := int64(0); b < nblocks; {
		byt := bm[b>>3]
		if byt == 0 && b&7 == 0 {
			b += 8
			continue
		}
		if byt&(0x80>>(b&7)) == 0 {
			b++
			continue
		}
		start := b
		for b < nblocks && bm[b>>3]&(0x80>>(b&7)) != 0 {
			b++
		}
		off := start * CBTBlockSize
		end := min(b*CBTBlockSize, size)
		out = append(out, disk.Extent{Off: off, Len: end - off, Kind: disk.Data})
	}
	return out, nil
}

// EncodeChangedBlocks is DecodeChangedBlocks' inverse, for tests and
// servers: the base64 bitmap of a disk of the given size in which the
// blocks touched by exts are set.
func EncodeChangedBlocks(exts []disk.Extent, size int64) string {
	nblocks := (size + CBTBlockSize - 1) / CBTBlockSize
	bm := make([]byte, (nblocks+7)/8)
	for _, e := range exts {
		if e.Len <= 0 {
			continue
		}
		for b := e.Off / CBTBlockSize; b <= (e.End()-1)/CBTBlockSize && b < nblocks; b++ {
			bm[b>>3] |= 0x80 >> (b & 7)
		}
	}
	return base64.StdEncoding.EncodeToString(bm)
}

// ChangedBlocks returns the ranges of vdi to that changed since vdi from
// (an earlier snapshot of the same disk, possibly with its data destroyed),
// as DecodeChangedBlocks reads VDI.list_changed_blocks(from, to).
func (c *Client) ChangedBlocks(ctx context.Context, from, to VDIRef) ([]disk.Extent, error) {
	if err := checkRef("VDI", string(from)); err != nil {
		return nil, err
	}
	if err := checkRef("VDI", string(to)); err != nil {
		return nil, err
	}
	size, err := c.VDI().GetVirtualSize(ctx, to)
	if err != nil {
		return nil, err
	}
	bm, err := c.VDI().ListChangedBlocks(ctx, from, to)
	if err != nil {
		return nil, err
	}
	exts, err := DecodeChangedBlocks(bm, size)
	if err != nil {
		return nil, fmt.Errorf("xapi VDI.list_changed_blocks(%s, %s): %w", from, to, err)
	}
	return exts, nil
}
