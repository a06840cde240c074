package vhdx

import (
	"context"
	"fmt"
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
)

// maxProblems bounds the lines a check reports.
const maxProblems = 300

// Check re-reads the headers and region tables and checks every BAT entry:
// states, reserved bits, blocks and sector bitmaps beyond the end of the
// file or overlapping each other, the header section, the log, the BAT or
// the metadata region. Faults in copies the reader does not use (the
// non-current header, the second region table) are reported too. Every
// fault counts as a corruption.
func (im *image) Check(ctx context.Context) (disk.CheckResult, error) {
	res := disk.CheckResult{Filename: im.name, Format: "vhdx"}
	report := func(msg string) {
		res.Corruptions++
		if len(res.Problems) < maxProblems {
			res.Problems = append(res.Problems, msg)
		}
	}
	hs := make([]byte, region2Offset+regionTableSize)
	if err := im.v.readAt(hs, 0); err != nil {
		return res, fmt.Errorf("vhdx %s: check: read header section: %w", im.name, err)
	}
	for i, off := range []int64{header1Offset, header2Offset} {
		if i+1 == im.hdrIndex {
			continue
		}
		if _, ok := parseHeader(hs[off:]); !ok {
			report(fmt.Sprintf("header %d at %#x: bad signature or checksum (the current header is header %d)", i+1, off, im.hdrIndex))
		}
	}
	t1, ok1, err1 := parseRegionTable(hs[region1Offset:])
	t2, ok2, err2 := parseRegionTable(hs[region2Offset:])
	switch {
	case !ok1 || err1 != nil:
		report(fmt.Sprintf("region table 1 at %#x: bad signature, checksum or entry count", region1Offset))
	case !ok2 || err2 != nil:
		report(fmt.Sprintf("region table 2 at %#x: bad signature, checksum or entry count", region2Offset))
	case !slices.Equal(t1, t2):
		report("region tables 1 and 2 differ")
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	im.checkBAT(func(msg string, _ bool) bool {
		report(msg)
		return true
	})

	end := headerSectionSize
	if l := int64(im.hdr.logLength); l > 0 {
		end = max(end, int64(im.hdr.logOffset)+l)
	}
	for _, r := range im.regions {
		end = max(end, int64(r.off)+int64(r.length))
	}
	for i, e := range im.blocks {
		switch e & batStateMask {
		case stateFull, statePartial:
			res.AllocatedClusts++
			off := int64(e>>batOffsetShift) * mib
			end = max(end, off+min(im.bs, im.size-int64(i)*im.bs))
		}
	}
	for _, e := range im.bitmaps {
		if e&batStateMask == stateFull && im.diff {
			end = max(end, int64(e>>batOffsetShift)*mib+sectorBitmapSize)
		}
	}
	res.TotalClusters = im.nBlocks
	res.AllocatedBytes = res.AllocatedClusts * im.bs
	res.ImageEndOffset = end
	return res, nil
}

var _ disk.Checker = (*image)(nil)
