package ebsdirect

import (
	"context"

	"github.com/ferry-project/ferry/internal/disk"
)

// Run is a range of consecutive block indices.
type Run struct {
	First int64 // first block index
	Count int64
}

// End is one past the last block.
func (r Run) End() int64 { return r.First + r.Count }

// VolumeGiB is the EBS volume size, in GiB, that holds size bytes: rounded
// up, at least 1.
func VolumeGiB(size int64) int64 {
	return max(1, (size+(1<<30)-1)>>30)
}

// Plan returns the blocks of img that may hold data: every 512 KiB block
// that a Data extent touches, as ascending runs. Blocks covered only by
// Zero or Unallocated extents are left out; whether a planned block really
// holds non-zero bytes is learnt when it is read.
func Plan(ctx context.Context, img disk.Image) ([]Run, error) {
	var runs []Run
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil {
			return nil, err
		}
		if e.Kind != disk.Data || e.Len <= 0 {
			continue
		}
		first, end := e.Off/BlockSize, (e.End()+BlockSize-1)/BlockSize
		if n := len(runs); n > 0 && runs[n-1].End() >= first {
			if end > runs[n-1].End() {
				runs[n-1].Count = end - runs[n-1].First
			}
			continue
		}
		runs = append(runs, Run{First: first, Count: end - first})
	}
	return runs, nil
}

// Blocks is the number of blocks in runs.
func Blocks(runs []Run) int64 {
	var n int64
	for _, r := range runs {
		n += r.Count
	}
	return n
}
