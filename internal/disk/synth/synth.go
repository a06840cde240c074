// Package synth makes synthetic disks with deterministic content: a mix of
// incompressible random blocks, compressible text and written zeros at
// chosen ranges, the rest holes. Demos, benchmarks and tests use it; the
// same seed always gives the same bytes.
package synth

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
)

// Pattern is deterministic disk content: a virtual size and the ranges that
// hold data; everything else reads as zeros. Data ranges mix random
// (incompressible) bytes, text-like (compressible) bytes and written zeros,
// chosen per 4 KiB block from the seed.
type Pattern struct {
	Name string
	Size int64
	Seed uint64
	// Data lists the written ranges in ascending order, non-overlapping.
	Data []disk.Extent
}

// Fill writes the content of [off, off+len(p)) into p.
func (pt *Pattern) Fill(off int64, p []byte) {
	clear(p)
	end := off + int64(len(p))
	i, _ := slices.BinarySearchFunc(pt.Data, off, func(e disk.Extent, o int64) int {
		if e.End() <= o {
			return -1
		}
		if e.Off > o {
			return 1
		}
		return 0
	})
	for ; i < len(pt.Data) && pt.Data[i].Off < end; i++ {
		e := pt.Data[i]
		s, t := max(e.Off, off), min(e.End(), end)
		for s < t {
			blk := s / 4096
			bend := min((blk+1)*4096, t)
			pt.fillBlock(blk, s, p[s-off:bend-off])
			s = bend
		}
	}
}

var words = []string{"ferry ", "disk ", "block ", "xen ", "cluster ", "the ", "migrate ", "extent ", "\n", "0000 "}

func (pt *Pattern) fillBlock(blk, off int64, p []byte) {
	r := rand.New(rand.NewPCG(pt.Seed, uint64(blk)))
	kind := r.IntN(10)
	within := off - blk*4096
	var buf [4096]byte
	switch {
	case kind < 4: // random
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
	case kind < 8: // text
		for i := 0; i < len(buf); {
			i += copy(buf[i:], words[r.IntN(len(words))])
		}
	default: // written zeros
	}
	copy(p, buf[within:])
}

// Bytes returns the whole content; only for small patterns.
func (pt *Pattern) Bytes() []byte {
	b := make([]byte, pt.Size)
	pt.Fill(0, b)
	return b
}

// DataBytes is the total length of the data ranges.
func (pt *Pattern) DataBytes() int64 {
	var n int64
	for _, e := range pt.Data {
		n += e.Len
	}
	return n
}

const (
	KiB = int64(1) << 10
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// Mixed places data runs of 4 KiB to 3 MiB at random points, roughly 40%
// of the disk.
func Mixed(size int64, seed uint64) []disk.Extent {
	r := rand.New(rand.NewPCG(seed, 99))
	var out []disk.Extent
	for off := int64(0); off < size; {
		n := (1 + r.Int64N(768)) * 4096
		if off+n > size {
			n = size - off
		}
		if r.IntN(10) < 4 {
			out = append(out, disk.Extent{Off: off, Len: n, Kind: disk.Data})
		}
		off += n + r.Int64N(4)*512*int64(r.IntN(2))
	}
	// merge touching runs
	var m []disk.Extent
	for _, e := range out {
		if e.End() > size {
			e.Len = size - e.Off
		}
		if e.Len <= 0 {
			continue
		}
		if len(m) > 0 && m[len(m)-1].End() >= e.Off {
			m[len(m)-1].Len = e.End() - m[len(m)-1].Off
			continue
		}
		m = append(m, e)
	}
	return m
}

// MakePattern builds a pattern of the given size with data at about the
// given fraction (0..1), for benchmarks.
func MakePattern(name string, size int64, frac float64, seed uint64) *Pattern {
	r := rand.New(rand.NewPCG(seed, 7))
	var out []disk.Extent
	for off := int64(0); off < size; {
		n := min((1+r.Int64N(512))*4096, size-off)
		if r.Float64() < frac {
			if len(out) > 0 && out[len(out)-1].End() == off {
				out[len(out)-1].Len += n
			} else {
				out = append(out, disk.Extent{Off: off, Len: n})
			}
		}
		off += n
	}
	return &Pattern{Name: name, Size: size, Seed: seed, Data: out}
}

func (pt *Pattern) String() string { return fmt.Sprintf("%s(%d bytes)", pt.Name, pt.Size) }
