package vmdk

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
)

// maxProblems bounds CheckResult.Problems.
const maxProblems = 200

// Check reads every grain table of every sparse extent and reports grains
// beyond the end of their file, grains overlapping metadata or each other
// (two entries pointing at the same grain) and compressed grains whose
// marker is wrong. Flat and zero extents have nothing to check.
func (img *image) Check(ctx context.Context) (disk.CheckResult, error) {
	res := disk.CheckResult{Filename: img.name, Format: "vmdk"}
	for _, x := range img.exts {
		if x.sp == nil {
			continue
		}
		if err := x.sp.check(ctx, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (e *sparseExtent) check(ctx context.Context, res *disk.CheckResult) error {
	report := func(format string, a ...any) {
		res.Corruptions++
		if len(res.Problems) < maxProblems {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: ", e.name)+fmt.Sprintf(format, a...))
		}
	}
	res.TotalClusters += e.nGrains
	res.ImageEndOffset = max(res.ImageEndOffset, e.fileSize)
	// Each grain's footprint in the file: start sector << 32 | sectors.
	var grains []uint64
	raw := make([]byte, e.gtBytes)
	var m [grainMarkerSize]byte
	for ti, gv := range e.gd {
		if gv == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := readFull(e.f, raw, int64(gv)*sectorSize); err != nil {
			return fmt.Errorf("vmdk %s: read grain table %d: %w", e.name, ti, err)
		}
		for j := range e.numGTEs {
			g := int64(ti)*e.numGTEs + j
			if g >= e.nGrains {
				break
			}
			v := binary.LittleEndian.Uint32(raw[j*4:])
			if e.grainKind(v) != disk.Data {
				continue
			}
			res.AllocatedClusts++
			res.AllocatedBytes += min(e.grain, e.size-g*e.grain)
			off := int64(v) * sectorSize
			if off >= e.fileSize {
				report("grain %d at sector %d is beyond the end of the file", g, v)
				continue
			}
			fp := e.grainFootprint(g, v)
			if e.compressed && e.markers {
				if off+grainMarkerSize > e.fileSize {
					report("grain %d at sector %d: marker runs past the end of the file", g, v)
					continue
				}
				if err := readFull(e.f, m[:], off); err != nil {
					return fmt.Errorf("vmdk %s: read grain marker at %d: %w", e.name, off, err)
				}
				mk := parseMarker(m[:])
				if mk.size == 0 || mk.val != uint64(g)*e.h.grainSize {
					report("grain %d at sector %d: bad grain marker (LBA %d, %d bytes)", g, v, mk.val, mk.size)
					continue
				}
				fp.end = off + sectorsFor(grainMarkerSize+int64(mk.size))*sectorSize
			}
			if fp.end > e.fileSize {
				report("grain %d at sector %d runs past the end of the file", g, v)
				continue
			}
			if e.overlapsMeta(fp) {
				report("grain %d at sector %d overlaps the extent's metadata", g, v)
				continue
			}
			grains = append(grains, uint64(v)<<32|uint64(sectorsFor(fp.end-fp.off)))
		}
	}
	slices.Sort(grains)
	for i := 1; i < len(grains); i++ {
		prev, cur := grains[i-1], grains[i]
		if cur>>32 < prev>>32+prev&0xffffffff {
			report("grains at sectors %d and %d overlap", prev>>32, cur>>32)
		}
	}
	return nil
}
