package vhd

import (
	"context"
	"io"
	"iter"
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// listImage is a source image for the writers' extent hints: extents
// listed (in order, non-overlapping), unallocated elsewhere; its content
// comes from pt when set, zeros otherwise.
type listImage struct {
	size int64
	exts []disk.Extent
	pt   *disktest.Pattern
}

func patternImage(pt *disktest.Pattern) *listImage {
	exts := slices.Clone(pt.Data)
	for i := range exts {
		exts[i].Kind = disk.Data
	}
	return &listImage{size: pt.Size, exts: exts, pt: pt}
}

func (l *listImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= l.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), l.size-off)
	if l.pt != nil {
		l.pt.Fill(off, p[:n])
	} else {
		clear(p[:n])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (l *listImage) Close() error    { return nil }
func (l *listImage) Size() int64     { return l.size }
func (l *listImage) Info() disk.Info { return disk.Info{Format: "raw", VirtualSize: l.size} }

func (l *listImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, l.size)
		cur := off
		emit := func(e disk.Extent) bool {
			s, t := max(e.Off, cur), min(e.End(), end)
			if s >= t {
				return true
			}
			if s > cur && !yield(disk.Extent{Off: cur, Len: s - cur, Kind: disk.Unallocated}, nil) {
				return false
			}
			cur = t
			return yield(disk.Extent{Off: s, Len: t - s, Kind: e.Kind}, nil)
		}
		for _, e := range l.exts {
			if !emit(e) {
				return
			}
		}
		if cur < end {
			yield(disk.Extent{Off: cur, Len: end - cur, Kind: disk.Unallocated}, nil)
		}
	}
}
