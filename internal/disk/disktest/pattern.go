package disktest

import (
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
)

// Pattern is synth.Pattern: deterministic disk content.
type Pattern = synth.Pattern

// PatternImage is synth.Image: an in-memory Image over a Pattern.
type PatternImage = synth.Image

// Sizes.
const (
	KiB = synth.KiB
	MiB = synth.MiB
	GiB = synth.GiB
)

// MakePattern is synth.MakePattern.
func MakePattern(name string, size int64, frac float64, seed uint64) *Pattern {
	return synth.MakePattern(name, size, frac, seed)
}

// Patterns returns the standard cases: empty, tiny and unaligned, mixed
// with holes, fully allocated, and sparse over 4 GiB. short drops the ones
// that write much data.
func Patterns(short bool) []*Pattern {
	ps := []*Pattern{
		{Name: "empty", Size: 0},
		{Name: "no-data", Size: 3 * MiB},
		{Name: "unaligned", Size: 5*MiB + 3*512, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 4096}, {Off: 3*MiB - 512, Len: 1024}, {Off: 5*MiB + 512, Len: 1024}}},
		{Name: "mixed", Size: 37 * MiB, Seed: 2, Data: synth.Mixed(37*MiB, 2)},
		{Name: "full", Size: 8*MiB + 64*KiB, Seed: 3, Data: []disk.Extent{{Off: 0, Len: 8*MiB + 64*KiB}}},
		{Name: "sparse-5g", Size: 5*GiB + 512*KiB, Seed: 4, Data: []disk.Extent{
			{Off: 0, Len: 1 * MiB}, {Off: 2*GiB - 4096, Len: 8192}, {Off: 4*GiB + 12345*512, Len: 3 * MiB}, {Off: 5*GiB + 512*KiB - 1536, Len: 1536},
		}},
	}
	if short {
		ps = slices.DeleteFunc(ps, func(p *Pattern) bool { return p.Name == "mixed" })
	}
	return ps
}
