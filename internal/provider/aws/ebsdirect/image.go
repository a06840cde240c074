package ebsdirect

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"sort"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

// OpenOptions tune Open. The zero value (or nil) means defaults.
type OpenOptions struct {
	// Base, if set, is an earlier snapshot of the same lineage: the
	// image's extents are then the blocks ListChangedBlocks reports
	// (changed blocks Data, blocks the snapshot no longer holds Zero,
	// the rest Unallocated), and ReadAt returns the snapshot's data.
	Base string
	// EC2, if set, is asked first whether the snapshot is completed: a
	// pending or failed snapshot is a FailedPrecondition error.
	EC2 EC2
	// CacheBlocks is how many fetched blocks are kept; default 16
	// (8 MiB).
	CacheBlocks int
	// Workers is how many blocks one ReadAt fetches at once; default 8.
	Workers int
	Retry   awserr.Backoff
	Logger  *slog.Logger
}

// block is one listed block.
type block struct {
	index int64
	token string // "" for a changed block the snapshot no longer holds
}

// Image is a snapshot read through the EBS direct APIs. It is safe for
// concurrent use.
type Image struct {
	api      API
	id, base string
	size     int64
	blocks   []block // ascending index
	o        OpenOptions

	ctx    context.Context // the image's own, for ReadAt: cancelled by Close
	cancel context.CancelFunc

	mu    sync.Mutex
	cache map[int64]*cached
	lru   *list.List // of *cached, front = most recent
}

type cached struct {
	index  int64
	ready  chan struct{}
	data   []byte
	sum    [sha256.Size]byte // data's SHA-256, if summed
	summed bool              // the service sent a checksum, and data matched it
	err    error
	elem   *list.Element
}

var _ disk.Image = (*Image)(nil)

// Open lists the blocks of a completed snapshot (or, with a base, the blocks
// that changed since it) and returns the snapshot as a disk.Image of its
// volume's size. An unknown snapshot is NotFound.
func Open(ctx context.Context, api API, snapshotID string, opts *OpenOptions) (*Image, error) {
	var o OpenOptions
	if opts != nil {
		o = *opts
	}
	if o.CacheBlocks <= 0 {
		o.CacheBlocks = 16
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.EC2 != nil {
		for _, id := range []string{o.Base, snapshotID} {
			if id == "" {
				continue
			}
			st, msg, err := SnapshotState(ctx, o.EC2, id)
			if err != nil {
				return nil, fmt.Errorf("ebs open: %w", err)
			}
			if st != ec2types.SnapshotStateCompleted {
				detail := ""
				if msg != "" {
					detail = " (" + msg + ")"
				}
				return nil, fmt.Errorf("ebs open: snapshot %s is %s%s, not completed: %w", id, st, detail, errs.ErrFailedPrecondition)
			}
		}
	}
	im := &Image{api: api, id: snapshotID, base: o.Base, o: o, cache: map[int64]*cached{}, lru: list.New()}
	im.ctx, im.cancel = context.WithCancel(context.WithoutCancel(ctx))
	var err error
	if o.Base == "" {
		err = im.listBlocks(ctx)
	} else {
		err = im.listChanged(ctx)
	}
	if err != nil {
		im.cancel()
		return nil, err
	}
	o.Logger.Debug("ebs snapshot opened", "snapshot", snapshotID, "base", o.Base, "blocks", len(im.blocks), "bytes", im.size)
	return im, nil
}

func (im *Image) setGeometry(volGiB int64, blockSize int32) error {
	if blockSize != 0 && blockSize != BlockSize {
		return fmt.Errorf("ebs open: snapshot %s has %d-byte blocks, want %d: %w", im.id, blockSize, BlockSize, errs.ErrUnimplemented)
	}
	if volGiB <= 0 || volGiB > maxVolumeGiB {
		return fmt.Errorf("ebs open: snapshot %s reports a volume of %d GiB: %w", im.id, volGiB, errs.ErrCorrupt)
	}
	im.size = volGiB << 30
	return nil
}

func (im *Image) listBlocks(ctx context.Context) error {
	var next *string
	for {
		var out *ebs.ListSnapshotBlocksOutput
		err := im.o.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			out, err = im.api.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{
				SnapshotId: aws.String(im.id), MaxResults: aws.Int32(10000), NextToken: next,
			}, noSDKRetry)
			return err
		})
		if err != nil {
			return fmt.Errorf("ebs open: list blocks of snapshot %s: %w", im.id, err)
		}
		if err := im.setGeometry(aws.ToInt64(out.VolumeSize), aws.ToInt32(out.BlockSize)); err != nil {
			return err
		}
		for _, b := range out.Blocks {
			im.blocks = append(im.blocks, block{index: int64(aws.ToInt32(b.BlockIndex)), token: aws.ToString(b.BlockToken)})
		}
		next = out.NextToken
		if aws.ToString(next) == "" {
			break
		}
	}
	return im.finishList()
}

func (im *Image) listChanged(ctx context.Context) error {
	var next *string
	for {
		var out *ebs.ListChangedBlocksOutput
		err := im.o.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			out, err = im.api.ListChangedBlocks(ctx, &ebs.ListChangedBlocksInput{
				FirstSnapshotId: aws.String(im.base), SecondSnapshotId: aws.String(im.id),
				MaxResults: aws.Int32(10000), NextToken: next,
			}, noSDKRetry)
			return err
		})
		if err != nil {
			return fmt.Errorf("ebs open: list blocks of snapshot %s changed since %s: %w", im.id, im.base, err)
		}
		if err := im.setGeometry(aws.ToInt64(out.VolumeSize), aws.ToInt32(out.BlockSize)); err != nil {
			return err
		}
		for _, b := range out.ChangedBlocks {
			im.blocks = append(im.blocks, block{index: int64(aws.ToInt32(b.BlockIndex)), token: aws.ToString(b.SecondBlockToken)})
		}
		next = out.NextToken
		if aws.ToString(next) == "" {
			break
		}
	}
	return im.finishList()
}

// finishList sorts the blocks, drops duplicates and checks their range.
func (im *Image) finishList() error {
	sort.SliceStable(im.blocks, func(i, j int) bool { return im.blocks[i].index < im.blocks[j].index })
	out := im.blocks[:0]
	for _, b := range im.blocks {
		if b.index < 0 || b.index*BlockSize >= im.size {
			return fmt.Errorf("ebs open: snapshot %s lists block %d outside its %d-byte volume: %w", im.id, b.index, im.size, errs.ErrCorrupt)
		}
		if n := len(out); n > 0 && out[n-1].index == b.index {
			out[n-1] = b
			continue
		}
		out = append(out, b)
	}
	im.blocks = out
	return nil
}

// SnapshotID is the snapshot read.
func (im *Image) SnapshotID() string { return im.id }

// Blocks is the number of listed blocks (with a base: changed blocks).
func (im *Image) Blocks() int { return len(im.blocks) }

func (im *Image) Size() int64 { return im.size }

// Close stops reads in flight; later reads fail.
func (im *Image) Close() error {
	im.cancel()
	return nil
}

func (im *Image) Info() disk.Info {
	spec := map[string]any{"snapshot-id": im.id, "block-size": BlockSize, "blocks": len(im.blocks)}
	if im.base != "" {
		spec["base-snapshot-id"] = im.base
	}
	return disk.Info{Filename: "ebs:" + im.id, Format: "ebs", VirtualSize: im.size, ClusterSize: BlockSize, Specific: spec}
}

// find returns the position of block index i in blocks, or -1.
func (im *Image) find(i int64) int {
	k := sort.Search(len(im.blocks), func(k int) bool { return im.blocks[k].index >= i })
	if k < len(im.blocks) && im.blocks[k].index == i {
		return k
	}
	return -1
}

func (im *Image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, im.size)
		if off < 0 || off >= end {
			return
		}
		k := sort.Search(len(im.blocks), func(k int) bool { return (im.blocks[k].index+1)*BlockSize > off })
		pos := off
		var cur disk.Extent
		emit := func(e disk.Extent) bool {
			if e.Len <= 0 {
				return true
			}
			if cur.Len > 0 && cur.Kind == e.Kind && cur.End() == e.Off {
				cur.Len += e.Len
				return true
			}
			if cur.Len > 0 && !yield(cur, nil) {
				return false
			}
			cur = e
			return true
		}
		for ; k < len(im.blocks) && pos < end; k++ {
			if ctx.Err() != nil {
				yield(disk.Extent{}, ctx.Err())
				return
			}
			b := im.blocks[k]
			bs, be := max(b.index*BlockSize, pos), min((b.index+1)*BlockSize, end)
			if bs >= end {
				break
			}
			if !emit(disk.Extent{Off: pos, Len: bs - pos, Kind: disk.Unallocated}) {
				return
			}
			kind := disk.Data
			if b.token == "" {
				kind = disk.Zero
			}
			if !emit(disk.Extent{Off: bs, Len: be - bs, Kind: kind}) {
				return
			}
			pos = be
		}
		if !emit(disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated}) {
			return
		}
		if cur.Len > 0 {
			yield(cur, nil)
		}
	}
}

// ReadAt reads through GetSnapshotBlock, fetching the blocks a read spans
// in parallel; blocks not listed read as zeros.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ebs %s: read at negative offset %d: %w", im.id, off, errs.ErrInvalidArgument)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), im.size-off)
	g, gctx := errgroup.WithContext(im.ctx)
	g.SetLimit(im.o.Workers)
	for pos := off; pos < off+n; {
		i := pos / BlockSize
		be := min((i+1)*BlockSize, off+n)
		dst := p[pos-off : be-off]
		within := pos - i*BlockSize
		k := im.find(i)
		if k < 0 || im.blocks[k].token == "" {
			clear(dst)
		} else {
			b := im.blocks[k]
			g.Go(func() error {
				data, err := im.get(gctx, b)
				if err != nil {
					return err
				}
				copy(dst, data[within:])
				return nil
			})
		}
		pos = be
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// get returns a block's data from the cache or from GetSnapshotBlock;
// concurrent requests for the same block share one fetch.
func (im *Image) get(ctx context.Context, b block) ([]byte, error) {
	im.mu.Lock()
	if c, ok := im.cache[b.index]; ok {
		im.lru.MoveToFront(c.elem)
		im.mu.Unlock()
		<-c.ready
		return c.data, c.err
	}
	c := &cached{index: b.index, ready: make(chan struct{})}
	c.elem = im.lru.PushFront(c)
	im.cache[b.index] = c
	for im.lru.Len() > im.o.CacheBlocks {
		old := im.lru.Back().Value.(*cached)
		im.lru.Remove(old.elem)
		delete(im.cache, old.index)
	}
	im.mu.Unlock()

	c.data, c.sum, c.summed, c.err = im.fetch(ctx, b)
	close(c.ready)
	if c.err != nil {
		im.mu.Lock()
		if im.cache[b.index] == c {
			im.lru.Remove(c.elem)
			delete(im.cache, b.index)
		}
		im.mu.Unlock()
	}
	return c.data, c.err
}

// BlockSum returns the SHA-256 of block i (BlockSize bytes from
// i*BlockSize) as a read fetched it, if the service sent the block's
// checksum and the data matched it, and the block is still cached: a
// reader that wants the block's hash need not compute it again. ok is
// false otherwise.
func (im *Image) BlockSum(i int64) (sum [sha256.Size]byte, ok bool) {
	im.mu.Lock()
	c, found := im.cache[i]
	im.mu.Unlock()
	if !found {
		return sum, false
	}
	select {
	case <-c.ready:
	default:
		return sum, false // still being fetched
	}
	if c.err != nil || !c.summed {
		return sum, false
	}
	return c.sum, true
}

func (im *Image) fetch(ctx context.Context, b block) ([]byte, [sha256.Size]byte, bool, error) {
	var data []byte
	var got [sha256.Size]byte
	summed := false
	err := im.o.Retry.Do(ctx, func(ctx context.Context) error {
		out, err := im.api.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{
			SnapshotId: aws.String(im.id), BlockIndex: aws.Int32(int32(b.index)), BlockToken: aws.String(b.token),
		}, noSDKRetry)
		if err != nil {
			return err
		}
		defer out.BlockData.Close()
		buf := make([]byte, BlockSize+1)
		k, err := io.ReadFull(out.BlockData, buf)
		switch {
		case err == io.ErrUnexpectedEOF || err == io.EOF:
		case err != nil:
			return err // a body cut short is a transport fault, retried
		default:
			return fmt.Errorf("block %d: more than %d bytes: %w", b.index, BlockSize, errs.ErrCorrupt)
		}
		if k != BlockSize || (out.DataLength != nil && int(*out.DataLength) != k) {
			return fmt.Errorf("block %d: %d bytes (data length %d), want %d: %w", b.index, k, aws.ToInt32(out.DataLength), BlockSize, errs.ErrCorrupt)
		}
		if sum := aws.ToString(out.Checksum); sum != "" {
			if out.ChecksumAlgorithm != "" && out.ChecksumAlgorithm != ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256 {
				return fmt.Errorf("block %d: checksum algorithm %s: %w", b.index, out.ChecksumAlgorithm, errs.ErrUnimplemented)
			}
			got = sha256.Sum256(buf[:k])
			if base64.StdEncoding.EncodeToString(got[:]) != sum {
				return fmt.Errorf("block %d: data does not match its SHA-256 %s: %w", b.index, sum, errs.ErrDataLoss)
			}
			summed = true
		}
		data = buf[:k:k]
		return nil
	})
	if err != nil {
		return nil, got, false, fmt.Errorf("ebs %s: get block %d: %w", im.id, b.index, err)
	}
	return data, got, summed, nil
}
