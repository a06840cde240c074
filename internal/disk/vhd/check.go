package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/ferry-project/ferry/internal/disk"
)

// maxProblems bounds CheckResult.Problems.
const maxProblems = 300

// Check re-reads the footers, the dynamic header and the BAT and reports:
// a missing or damaged footer at the end, a footer copy that differs from
// it, BAT entries beyond the file or overlapping each other or the
// metadata, allocated BAT entries past the disk's end, parent locators
// out of range or overlapping, and a data area that does not end on a
// sector boundary. (Blocks cannot be misaligned: the BAT stores sector
// numbers.)
func (im *image) Check(ctx context.Context) (disk.CheckResult, error) {
	res := disk.CheckResult{Filename: im.name, Format: "vhd", ImageEndOffset: im.f.Size()}
	problem := func(count *int, format string, a ...any) {
		*count++
		if len(res.Problems) < maxProblems {
			res.Problems = append(res.Problems, fmt.Sprintf(format, a...))
		}
	}
	fi, err := findFooter(im.f)
	if err != nil {
		problem(&res.Corruptions, "%v", err)
		return res, nil
	}
	if !fi.atEnd {
		problem(&res.Corruptions, "footer at the end of the file is missing or damaged (the copy at offset 0 is used)")
	}
	if im.ft.diskType == typeFixed {
		if fi.fileEnd < im.size {
			problem(&res.Corruptions, "fixed disk of %d bytes but the file holds only %d bytes before its footer", im.size, fi.fileEnd)
		}
		res.AllocatedBytes = im.size
		return res, nil
	}
	if fi.atEnd {
		c := make([]byte, footerSize)
		if err := readAtFull(im.f, c, 0, "footer copy"); err != nil {
			problem(&res.CheckErrors, "%v", err)
		} else if _, ok, sumOK := parseFooter(c); !ok {
			problem(&res.Corruptions, "no footer copy at offset 0")
		} else if !sumOK {
			problem(&res.Corruptions, "footer copy at offset 0: checksum mismatch")
		} else if !bytes.Equal(c, fi.raw) {
			problem(&res.Corruptions, "footer copy at offset 0 differs from the footer at %#x", fi.fileEnd)
		}
		if fi.fileEnd%sectorSize != 0 {
			problem(&res.Corruptions, "data area ends at %#x, not on a sector boundary", fi.fileEnd)
		}
	}
	hb := make([]byte, headerSize)
	if err := readAtFull(im.f, hb, im.hdrOff, "dynamic header"); err != nil {
		problem(&res.CheckErrors, "%v", err)
		return res, nil
	}
	if _, ok, sumOK := parseHeader(hb); !ok || !sumOK {
		problem(&res.Corruptions, "dynamic header at %#x is damaged", im.hdrOff)
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	// The whole BAT, entries past the disk's end included.
	entries := int64(im.hdr.maxEntries)
	raw := make([]byte, entries*4)
	if err := readAtFull(im.f, raw, int64(im.hdr.tableOffset), "BAT"); err != nil {
		problem(&res.CheckErrors, "%v", err)
		return res, nil
	}
	bat := make([]uint32, entries)
	for i := range bat {
		bat[i] = binary.BigEndian.Uint32(raw[4*i:])
	}
	nblocks := int64(len(im.bat))
	for i := nblocks; i < entries; i++ {
		if bat[i] != unallocated {
			problem(&res.Leaks, "BAT entry %d, past the disk's %d blocks, points to %#x", i, nblocks, int64(bat[i])*sectorSize)
		}
	}
	for _, p := range im.layoutProblems(bat, maxProblems) {
		problem(&res.Corruptions, "%s", p)
	}
	for _, e := range bat[:nblocks] {
		if e != unallocated {
			res.AllocatedClusts++
		}
	}
	res.TotalClusters = nblocks
	res.AllocatedBytes = res.AllocatedClusts * im.bs

	// Parent locators.
	if im.ft.diskType == typeDiff {
		meta := im.metadataSpans()
		span := im.bmSize + im.bs
		for i, l := range im.hdr.locators {
			if l.code == 0 {
				continue
			}
			off, end := int64(l.offset), int64(l.offset)+int64(l.length)
			if l.offset > uint64(im.fileEnd) || end > im.fileEnd {
				problem(&res.Corruptions, "parent locator %d at %#x (%d bytes) beyond the end of the file data", i, l.offset, l.length)
				continue
			}
			for _, m := range meta {
				if off < m.end && m.off < end {
					problem(&res.Corruptions, "parent locator %d at %#x overlaps %s at %#x", i, off, m.what, m.off)
				}
			}
			for b, e := range bat[:nblocks] {
				if e == unallocated {
					continue
				}
				if bo := int64(e) * sectorSize; off < bo+span && bo < end {
					problem(&res.Corruptions, "parent locator %d at %#x overlaps block %d at %#x", i, off, b, bo)
				}
			}
		}
	}
	return res, nil
}
