package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/disk"
)

// BlockSize is the unit of verification: EBS's block size, which divides
// a VHD block (2 MiB), so every target's writes cover whole blocks.
const BlockSize = 512 << 10

var zeroBlock = make([]byte, BlockSize)

// zeroSum is the SHA-256 of a zero block: the checksum of any block that
// holds no data.
var zeroSum = sha256.Sum256(zeroBlock)

// blockSums records the SHA-256 of each block as it was read from the
// source during a transfer. A block's checksum is over all BlockSize
// bytes, zeros past the end of the disk.
type blockSums struct {
	mu   sync.Mutex
	sums map[int64][sha256.Size]byte
	// complete is set when one transfer, in this process, read every
	// block the source holds: no block needs to be read again to verify.
	complete bool
	// partial is set when a read did not cover whole blocks: some block
	// read may have no checksum, so verification reads the source again.
	partial bool
}

func newBlockSums() *blockSums { return &blockSums{sums: map[int64][sha256.Size]byte{}} }

func (b *blockSums) set(i int64, sum [sha256.Size]byte) {
	b.mu.Lock()
	b.sums[i] = sum
	b.mu.Unlock()
}

func (b *blockSums) get(i int64) ([sha256.Size]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sums[i]
	return s, ok
}

// hashingImage records the checksum of every whole block read through it.
type hashingImage struct {
	disk.Image
	sums *blockSums
	read *int64 // data bytes read, updated atomically under sums.mu
}

func (h *hashingImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := h.Image.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(p)) {
		return n, err
	}
	size := h.Image.Size()
	h.sums.mu.Lock()
	*h.read += int64(n)
	h.sums.mu.Unlock()
	if off%BlockSize != 0 {
		h.sums.mu.Lock()
		h.sums.partial = true
		h.sums.mu.Unlock()
		return n, err
	}
	for k := int64(0); k < int64(n); k += BlockSize {
		end := min(k+BlockSize, int64(n))
		switch {
		case end-k == BlockSize:
			h.sums.set((off+k)/BlockSize, sha256.Sum256(p[k:end]))
		case off+end == size:
			// The disk's last, short block: zeros past the end.
			buf := make([]byte, BlockSize)
			copy(buf, p[k:end])
			h.sums.set((off+k)/BlockSize, sha256.Sum256(buf))
		default:
			h.sums.mu.Lock()
			h.sums.partial = true
			h.sums.mu.Unlock()
		}
	}
	return n, err
}

// window shows the part [from, to) of an image: its data rounded out to
// whole blocks, and nothing else (unallocated), so that a target written
// window by window receives every block once, whole. Close does not
// close the image beneath.
type window struct {
	disk.Image
	from, to int64
}

func (w *window) Close() error { return nil }

// empty reports whether the window holds no data.
func (w *window) empty(ctx context.Context) (bool, error) {
	for e, err := range dataBlocks(ctx, w.Image, w.from, w.to) {
		if err != nil {
			return false, err
		}
		if e.Len > 0 {
			return false, nil
		}
	}
	return true, nil
}

func (w *window) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := off + n
		pos := off
		emit := func(e disk.Extent) bool {
			if e.Off >= end || e.End() <= off || e.Len <= 0 {
				return true
			}
			e.Off, e.Len = max(e.Off, off), min(e.End(), end)-max(e.Off, off)
			pos = e.End()
			return yield(e, nil)
		}
		var cur disk.Extent // pending data, in whole blocks
		for ext, err := range dataBlocks(ctx, w.Image, max(off, w.from), min(end, w.to)) {
			if err != nil {
				yield(disk.Extent{}, err)
				return
			}
			if cur.Len > 0 && ext.Off <= cur.End() {
				cur.Len = max(cur.End(), ext.End()) - cur.Off
				continue
			}
			if cur.Len > 0 {
				if cur.Off > pos && !emit(disk.Extent{Off: pos, Len: cur.Off - pos, Kind: disk.Unallocated}) {
					return
				}
				if !emit(cur) {
					return
				}
			}
			cur = ext
		}
		if cur.Len > 0 {
			if cur.Off > pos && !emit(disk.Extent{Off: pos, Len: cur.Off - pos, Kind: disk.Unallocated}) {
				return
			}
			if !emit(cur) {
				return
			}
		}
		if pos < end {
			emit(disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated})
		}
	}
}

// dataBlocks yields img's data in [from, to) rounded out to whole blocks
// (clipped to the image and the range's block bounds), ascending; runs
// may touch or overlap.
func dataBlocks(ctx context.Context, img disk.Image, from, to int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		if from >= to {
			return
		}
		size := img.Size()
		for e, err := range img.Extents(ctx, from, to-from) {
			if err != nil {
				yield(disk.Extent{}, err)
				return
			}
			if e.Kind != disk.Data {
				continue
			}
			s := max(e.Off/BlockSize*BlockSize, from)
			t := min((e.End()+BlockSize-1)/BlockSize*BlockSize, size, to)
			if !yield(disk.Extent{Off: s, Len: t - s, Kind: disk.Data}, nil) {
				return
			}
		}
	}
}

// blockSet lists the blocks an image holds data in.
func blockSet(ctx context.Context, img disk.Image) ([]int64, error) {
	var out []int64
	for e, err := range dataBlocks(ctx, img, 0, img.Size()) {
		if err != nil {
			return nil, err
		}
		for i := e.Off / BlockSize; i*BlockSize < e.End(); i++ {
			if len(out) == 0 || out[len(out)-1] < i {
				out = append(out, i)
			}
		}
	}
	return out, nil
}

// Verification is the end-to-end check of one disk: the SHA-256 of every
// block read from the source against the same of the block read back from
// the target.
type Verification struct {
	Disk   string `json:"disk"`
	Target string `json:"target"`
	// BlockSize is the unit checked (512 KiB).
	BlockSize int64 `json:"block_size"`
	// Blocks is the number of blocks checked: every block that holds
	// data on either side (the rest are holes on both).
	Blocks int64 `json:"blocks"`
	// FromTransfer is how many source checksums were taken during the
	// transfer; Reread how many source blocks were read again (after a
	// resume).
	FromTransfer int64 `json:"from_transfer"`
	Reread       int64 `json:"reread"`
	// TargetOnly counts blocks only the target stores (a target that
	// writes whole larger blocks stores zeros the source leaves out):
	// they must read as zeros.
	TargetOnly int64 `json:"target_only"`
	// BytesReadBack is the data read back from the target.
	BytesReadBack int64 `json:"bytes_read_back"`
	Mismatches    int64 `json:"mismatches"`
	// FirstMismatch is the first differing block's index, -1 if none.
	FirstMismatch int64 `json:"first_mismatch"`
	// SourceDigest and TargetDigest are SHA-256 over the (block, checksum)
	// list of each side; equal when the disks are.
	SourceDigest string `json:"source_digest"`
	TargetDigest string `json:"target_digest"`
	OK           bool   `json:"ok"`
}

// verify compares the checksums recorded for the source (reading the
// source again for any block not recorded) with the target read back.
// openSrc opens the source again only when needed.
// blockSummer is an Image that hashed the blocks it read (EBS direct:
// while checking each block against the checksum the service sent).
type blockSummer interface {
	BlockSum(i int64) ([sha256.Size]byte, bool)
}

func verify(ctx context.Context, name string, sums *blockSums, openSrc func(context.Context) (disk.Image, error), tgt disk.Image, workers int) (Verification, error) {
	v := Verification{Disk: name, BlockSize: BlockSize, FirstMismatch: -1}
	tgtBlocks, err := blockSet(ctx, tgt)
	if err != nil {
		return v, fmt.Errorf("verify %s: read the target's extents: %w", name, err)
	}
	var srcBlocks []int64
	var src disk.Image
	if sums.complete && !sums.partial {
		sums.mu.Lock()
		for i := range sums.sums {
			srcBlocks = append(srcBlocks, i)
		}
		sums.mu.Unlock()
		slices.Sort(srcBlocks)
	} else {
		if src, err = openSrc(ctx); err != nil {
			return v, fmt.Errorf("verify %s: open the source again: %w", name, err)
		}
		defer src.Close()
		if srcBlocks, err = blockSet(ctx, src); err != nil {
			return v, fmt.Errorf("verify %s: read the source's extents: %w", name, err)
		}
	}
	all := mergeSorted(srcBlocks, tgtBlocks)
	inSrc := toSet(srcBlocks)
	inTgt := toSet(tgtBlocks)
	srcSums := make([][sha256.Size]byte, len(all))
	tgtSums := make([][sha256.Size]byte, len(all))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	pool := sync.Pool{New: func() any { b := make([]byte, BlockSize); return &b }}
	readBlock := func(img disk.Image, i int64, buf []byte) ([sha256.Size]byte, int64, error) {
		off := i * BlockSize
		n := min(BlockSize, img.Size()-off)
		if n <= 0 {
			return zeroSum, 0, nil
		}
		k, err := img.ReadAt(buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
			return [sha256.Size]byte{}, 0, err
		}
		if bs, ok := img.(blockSummer); ok && n == BlockSize {
			if sum, ok := bs.BlockSum(i); ok {
				return sum, n, nil // hashed as it was read, and checked
			}
		}
		clear(buf[n:])
		return sha256.Sum256(buf), n, nil
	}
	for k, i := range all {
		g.Go(func() error {
			bp := pool.Get().(*[]byte)
			defer pool.Put(bp)
			switch s, ok := sums.get(i); {
			case !inSrc[i]:
				srcSums[k] = zeroSum
				mu.Lock()
				v.TargetOnly++
				mu.Unlock()
			case ok:
				srcSums[k] = s
				mu.Lock()
				v.FromTransfer++
				mu.Unlock()
			default:
				if src == nil {
					return fmt.Errorf("verify %s: block %d: no checksum recorded: %w", name, i, errors.ErrUnsupported)
				}
				s, _, err := readBlock(src, i, *bp)
				if err != nil {
					return fmt.Errorf("verify %s: read source block %d: %w", name, i, err)
				}
				srcSums[k] = s
				mu.Lock()
				v.Reread++
				mu.Unlock()
			}
			if !inTgt[i] {
				tgtSums[k] = zeroSum
				return nil
			}
			s, n, err := readBlock(tgt, i, *bp)
			if err != nil {
				return fmt.Errorf("verify %s: read back block %d: %w", name, i, err)
			}
			tgtSums[k] = s
			mu.Lock()
			v.BytesReadBack += n
			mu.Unlock()
			return nil
		})
		if gctx.Err() != nil {
			break
		}
	}
	if err := g.Wait(); err != nil {
		return v, err
	}
	if err := ctx.Err(); err != nil {
		return v, err
	}
	sd, td := sha256.New(), sha256.New()
	var idx [8]byte
	for k, i := range all {
		binary.BigEndian.PutUint64(idx[:], uint64(i))
		sd.Write(idx[:])
		sd.Write(srcSums[k][:])
		td.Write(idx[:])
		td.Write(tgtSums[k][:])
		if srcSums[k] != tgtSums[k] {
			if v.Mismatches == 0 {
				v.FirstMismatch = i
			}
			v.Mismatches++
		}
	}
	v.Blocks = int64(len(all))
	v.SourceDigest = hex.EncodeToString(sd.Sum(nil))
	v.TargetDigest = hex.EncodeToString(td.Sum(nil))
	v.OK = v.Mismatches == 0
	return v, nil
}

func mergeSorted(a, b []int64) []int64 {
	out := make([]int64, 0, max(len(a), len(b)))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j >= len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i >= len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

func toSet(s []int64) map[int64]bool {
	m := make(map[int64]bool, len(s))
	for _, i := range s {
		m[i] = true
	}
	return m
}
