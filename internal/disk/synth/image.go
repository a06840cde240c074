package synth

import (
	"context"
	"io"
	"iter"

	"github.com/ferry-project/ferry/internal/disk"
)

// Image is an in-memory disk.Image whose content is a Pattern: its
// data ranges are Data extents, the rest Unallocated. It is a source for
// tests and benchmarks that need no file.
type Image struct{ P *Pattern }

var _ disk.Image = Image{}

func (i Image) ReadAt(p []byte, off int64) (int, error) {
	if off >= i.P.Size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), i.P.Size-off)
	i.P.Fill(off, p[:n])
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (i Image) Close() error { return nil }
func (i Image) Size() int64  { return i.P.Size }
func (i Image) Info() disk.Info {
	return disk.Info{Format: "pattern", VirtualSize: i.P.Size}
}

func (i Image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, i.P.Size)
		pos := off
		for _, e := range i.P.Data {
			if e.End() <= pos {
				continue
			}
			if e.Off >= end {
				break
			}
			if e.Off > pos {
				if !yield(disk.Extent{Off: pos, Len: e.Off - pos, Kind: disk.Unallocated}, nil) {
					return
				}
				pos = e.Off
			}
			s, t := max(e.Off, pos), min(e.End(), end)
			if !yield(disk.Extent{Off: s, Len: t - s, Kind: disk.Data}, nil) {
				return
			}
			pos = t
		}
		if pos < end {
			yield(disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated}, nil)
		}
	}
}
