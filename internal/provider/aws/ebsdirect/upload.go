package ebsdirect

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

// UploadOptions tune Upload. The zero value (or nil) means defaults.
type UploadOptions struct {
	// Tags are set on the snapshot by StartSnapshot.
	Tags map[string]string
	// Description of the snapshot; default "ferry upload".
	Description string
	// ClientToken makes StartSnapshot idempotent; default random. A
	// resumed upload uses the checkpoint's.
	ClientToken string
	// Workers is how many blocks are read and sent at once; default 16.
	Workers int
	// Timeout is how long the snapshot may stay pending before EBS
	// cancels it (StartSnapshot's Timeout, 10 min to 72 h); default 24 h,
	// so that an interrupted upload can be resumed the next day.
	Timeout time.Duration
	// Resume continues the upload a checkpoint describes: the same
	// snapshot, only the blocks not acknowledged yet. A checkpoint whose
	// snapshot is gone or failed starts a new snapshot.
	Resume *Checkpoint
	// Save, if set, is called with a copy of the checkpoint after the
	// snapshot is started, after every SaveEvery acknowledged blocks (if
	// a Save is still under way then, after the next block acknowledged
	// once it returns), and when the snapshot is completed. Calls are
	// serialised; blocks are sent on while one runs. An error from
	// Save stops the upload. Save is called with a context that is not
	// cancelled with the upload's, so that the last blocks acknowledged
	// before a cancellation are recorded.
	Save func(ctx context.Context, cp Checkpoint) error
	// SaveEvery is how many acknowledged blocks go between Save calls;
	// default 1.
	SaveEvery int
	// KeepOnError keeps a started snapshot when the upload fails. Without
	// it, the snapshot is deleted unless Save is set (a saved checkpoint
	// means the caller means to resume, and owns the cleanup).
	KeepOnError bool
	// Sum, if set, is called with the SHA-256 of every block this run read:
	// for a block sent, the checksum EBS verified, once the block is
	// acknowledged; for a block that read as zeros (not sent), the
	// SHA-256 of a zero block. Blocks past the end of the image count as
	// zeros. Calls may come from several goroutines at once.
	Sum func(block int64, sum [sha256.Size]byte)
	// Progress receives virtual bytes: SetTotal(img.Size()), then the
	// bytes of each planned block as it is handled (sent, found zero, or
	// sent before a resume), and the bytes never read (holes) once every
	// block is sent.
	Progress progress.Reporter
	Logger   *slog.Logger
	// Retry is the policy for each block and API call.
	Retry awserr.Backoff
	// PollEvery and PollMax bound the wait between DescribeSnapshots
	// calls while the snapshot completes; defaults 1 s and 15 s.
	PollEvery, PollMax time.Duration
}

// Result says what Upload did.
type Result struct {
	SnapshotID string `json:"snapshot_id"`
	VolumeGiB  int64  `json:"volume_gib"`
	// Planned is the number of blocks that Data extents touch.
	Planned int64 `json:"planned_blocks"`
	// Changed is the number of blocks the snapshot holds
	// (CompleteSnapshot's ChangedBlocksCount).
	Changed int64 `json:"changed_blocks"`
	// BlocksSent and BytesSent count the PutSnapshotBlock calls this run
	// had acknowledged.
	BlocksSent int64 `json:"blocks_sent"`
	BytesSent  int64 `json:"bytes_sent"`
	// Resumed is the number of blocks acknowledged before this run.
	Resumed int64 `json:"resumed_blocks"`
	// ZeroBlocks is the number of planned blocks that read as zeros and
	// were not sent.
	ZeroBlocks int64 `json:"zero_blocks"`
}

// zeroBlock is compared against, never written.
var zeroBlock = make([]byte, BlockSize)

// zeroSum is the SHA-256 of a zero block.
var zeroSum = sha256.Sum256(zeroBlock)

func (o *UploadOptions) withDefaults() UploadOptions {
	var c UploadOptions
	if o != nil {
		c = *o
	}
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.Timeout <= 0 {
		c.Timeout = 24 * time.Hour
	}
	c.Timeout = min(max(c.Timeout, 10*time.Minute), 72*time.Hour)
	if c.SaveEvery <= 0 {
		c.SaveEvery = 1
	}
	if c.Description == "" {
		c.Description = "ferry upload"
	}
	if c.PollEvery <= 0 {
		c.PollEvery = time.Second
	}
	if c.PollMax <= 0 {
		c.PollMax = 15 * time.Second
	}
	c.Progress = progress.Or(c.Progress)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// NewClientToken returns a random idempotency token.
func NewClientToken() string {
	var b [16]byte
	rand.Read(b[:])
	return "ferry-" + hex.EncodeToString(b[:])
}

// uploader carries one Upload's state.
type uploader struct {
	api API
	ec2 EC2
	img disk.Image
	o   UploadOptions
	log *slog.Logger

	mu      sync.Mutex // guards cp, res and unsaved
	saving  sync.Mutex // serialises Save; taken before mu, never while blocks wait on it
	cp      Checkpoint
	res     Result
	unsaved int
}

// Upload writes img into a new EBS snapshot of VolumeGiB(img.Size()) GiB
// and returns when the snapshot is completed (ec2 may be nil: then Upload
// returns once CompleteSnapshot was accepted, and removes nothing on
// failure). Only blocks that hold non-zero bytes are sent. On failure or
// cancellation the error wraps a code of internal/errs and the result
// counts what was sent; the snapshot is deleted unless
// UploadOptions.KeepOnError or Save is set.
func Upload(ctx context.Context, api API, ec2c EC2, img disk.Image, opts *UploadOptions) (Result, error) {
	o := opts.withDefaults()
	u := &uploader{api: api, ec2: ec2c, img: img, o: o, log: o.Logger}
	gib := VolumeGiB(img.Size())
	if gib > maxVolumeGiB {
		return Result{}, fmt.Errorf("ebs upload: disk of %d bytes is larger than an EBS volume can be: %w", img.Size(), errs.ErrInvalidArgument)
	}
	if o.Resume != nil && o.Resume.VolumeGiB != 0 {
		if o.Resume.VolumeGiB != gib || o.Resume.Sent.Len() != gib*blocksPerGiB {
			return Result{}, fmt.Errorf("ebs upload: checkpoint is for a %d GiB volume, the disk needs %d GiB: %w", o.Resume.VolumeGiB, gib, errs.ErrInvalidArgument)
		}
		u.cp = o.Resume.Clone()
	} else {
		u.cp = Checkpoint{ClientToken: o.ClientToken, VolumeGiB: gib, Sent: NewBitmap(gib * blocksPerGiB)}
	}
	if u.cp.ClientToken == "" {
		u.cp.ClientToken = NewClientToken()
	}
	u.res.VolumeGiB = gib
	res, err := u.run(ctx)
	if err != nil && u.cp.SnapshotID != "" && ec2c != nil && !o.KeepOnError && o.Save == nil {
		u.deleteSnapshot(ctx)
	}
	return res, err
}

func (u *uploader) run(ctx context.Context) (Result, error) {
	if u.cp.SnapshotID != "" {
		if err := u.checkResumable(ctx); err != nil {
			return u.result(), err
		}
	}
	if u.cp.SnapshotID == "" {
		if err := u.start(ctx); err != nil {
			return u.result(), err
		}
	}
	u.res.SnapshotID = u.cp.SnapshotID
	u.res.Resumed = u.cp.Sent.Count()
	if !u.cp.Completed {
		if err := u.sendBlocks(ctx); err != nil {
			return u.result(), err
		}
		if err := u.complete(ctx); err != nil {
			return u.result(), err
		}
	}
	u.res.Changed = u.cp.Sent.Count()
	if u.ec2 != nil {
		if err := WaitCompleted(ctx, u.ec2, u.cp.SnapshotID, u.o.PollEvery, u.o.PollMax); err != nil {
			return u.result(), err
		}
	}
	u.log.Info("ebs snapshot uploaded", "snapshot", u.cp.SnapshotID, "volume_gib", u.cp.VolumeGiB,
		"blocks_sent", u.res.BlocksSent, "bytes", u.res.BytesSent, "resumed_blocks", u.res.Resumed, "zero_blocks", u.res.ZeroBlocks)
	return u.result(), nil
}

func (u *uploader) result() Result {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.res
	r.SnapshotID = u.cp.SnapshotID
	return r
}

// checkResumable looks at the checkpoint's snapshot: pending goes on,
// completed is done, gone or failed starts over.
func (u *uploader) checkResumable(ctx context.Context) error {
	if u.ec2 == nil {
		return nil
	}
	st, msg, err := SnapshotState(ctx, u.ec2, u.cp.SnapshotID)
	switch {
	case errs.Is(err, errs.NotFound):
		u.log.Warn("ebs upload: checkpoint's snapshot is gone, starting a new one", "snapshot", u.cp.SnapshotID)
	case err != nil:
		return fmt.Errorf("ebs upload: resume snapshot %s: %w", u.cp.SnapshotID, err)
	case st == ec2types.SnapshotStatePending:
		return nil
	case st == ec2types.SnapshotStateCompleted:
		u.cp.Completed = true
		return nil
	default:
		u.log.Warn("ebs upload: checkpoint's snapshot failed, starting a new one", "snapshot", u.cp.SnapshotID, "state", st, "message", msg)
	}
	u.cp = Checkpoint{ClientToken: NewClientToken(), VolumeGiB: u.cp.VolumeGiB, Sent: NewBitmap(u.cp.Sent.Len())}
	return nil
}

func (u *uploader) start(ctx context.Context) error {
	if err := u.save(ctx); err != nil { // the token first: a crash after StartSnapshot finds the same snapshot
		return err
	}
	in := &ebs.StartSnapshotInput{
		VolumeSize:  aws.Int64(u.cp.VolumeGiB),
		ClientToken: aws.String(u.cp.ClientToken),
		Description: aws.String(u.o.Description),
		Timeout:     aws.Int32(int32(u.o.Timeout / time.Minute)),
		Tags:        ebsTags(u.o.Tags),
	}
	var out *ebs.StartSnapshotOutput
	err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = u.api.StartSnapshot(ctx, in, noSDKRetry)
		return err
	})
	if err != nil {
		return fmt.Errorf("ebs upload: start snapshot of %d GiB: %w", u.cp.VolumeGiB, err)
	}
	if out.SnapshotId == nil || *out.SnapshotId == "" {
		return fmt.Errorf("ebs upload: StartSnapshot returned no snapshot ID: %w", errs.ErrCorrupt)
	}
	if bs := aws.ToInt32(out.BlockSize); bs != 0 && bs != BlockSize {
		return fmt.Errorf("ebs upload: snapshot %s has %d-byte blocks, want %d: %w", *out.SnapshotId, bs, BlockSize, errs.ErrUnimplemented)
	}
	u.mu.Lock()
	u.cp.SnapshotID = *out.SnapshotId
	u.mu.Unlock()
	u.log.Info("ebs snapshot started", "snapshot", u.cp.SnapshotID, "volume_gib", u.cp.VolumeGiB)
	return u.save(ctx)
}

// save hands a copy of the checkpoint to Save.
func (u *uploader) save(ctx context.Context) error {
	u.saving.Lock()
	defer u.saving.Unlock()
	return u.saveHeld(ctx)
}

// saveHeld is save with u.saving held. The checkpoint is copied under
// u.mu and saved without it, so that blocks acknowledged meanwhile are
// not held up by a slow Save.
func (u *uploader) saveHeld(ctx context.Context) error {
	u.mu.Lock()
	u.unsaved = 0
	if u.o.Save == nil {
		u.mu.Unlock()
		return nil
	}
	cp := u.cp.Clone()
	u.mu.Unlock()
	if err := u.o.Save(context.WithoutCancel(ctx), cp); err != nil {
		return fmt.Errorf("ebs upload: save checkpoint of snapshot %s: %w", u.cp.SnapshotID, err)
	}
	return nil
}

// sendBlocks sends every planned block not acknowledged yet.
func (u *uploader) sendBlocks(ctx context.Context) error {
	runs, err := Plan(ctx, u.img)
	if err != nil {
		return fmt.Errorf("ebs upload: read extents: %w", err)
	}
	planned := Blocks(runs)
	u.res.Planned = planned
	size := u.img.Size()
	var plannedBytes int64
	for _, r := range runs {
		plannedBytes += min(r.End()*BlockSize, size) - r.First*BlockSize
	}
	u.o.Progress.SetTotal(size)
	pool := sync.Pool{New: func() any { b := make([]byte, BlockSize); return &b }}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(u.o.Workers)
	u.mu.Lock()
	done := u.cp.Sent.Clone()
	u.mu.Unlock()
loop:
	for _, r := range runs {
		for i := r.First; i < r.End(); i++ {
			if gctx.Err() != nil {
				break loop
			}
			if done.Has(i) {
				u.o.Progress.Add(blockBytes(i, size))
				continue
			}
			g.Go(func() error {
				bp := pool.Get().(*[]byte)
				defer pool.Put(bp)
				return u.sendBlock(gctx, i, *bp, size)
			})
		}
	}
	err = g.Wait()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("ebs upload: snapshot %s: %w", u.cp.SnapshotID, ctx.Err())
		}
		if serr := u.save(ctx); serr != nil {
			err = errors.Join(err, serr)
		}
		return err
	}
	u.o.Progress.Add(size - plannedBytes)
	return u.save(ctx)
}

// blockBytes is how much of block i lies within size.
func blockBytes(i, size int64) int64 { return max(0, min(BlockSize, size-i*BlockSize)) }

func (u *uploader) sendBlock(ctx context.Context, i int64, buf []byte, size int64) error {
	off := i * BlockSize
	n := min(BlockSize, size-off)
	if n > 0 {
		if k, err := u.img.ReadAt(buf[:n], off); err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
			return fmt.Errorf("ebs upload: read block %d at %d: %w", i, off, err)
		}
	}
	clear(buf[max(n, 0):])
	if bytes.Equal(buf, zeroBlock) {
		if u.o.Sum != nil {
			u.o.Sum(i, zeroSum)
		}
		u.mu.Lock()
		u.res.ZeroBlocks++
		u.mu.Unlock()
		u.o.Progress.Add(blockBytes(i, size))
		return nil
	}
	sum := sha256.Sum256(buf)
	checksum := base64.StdEncoding.EncodeToString(sum[:])
	err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
		out, err := u.api.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
			SnapshotId:        aws.String(u.cp.SnapshotID),
			BlockIndex:        aws.Int32(int32(i)),
			BlockData:         bytes.NewReader(buf),
			DataLength:        aws.Int32(BlockSize),
			Checksum:          aws.String(checksum),
			ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		}, noSDKRetry)
		if err != nil {
			return err
		}
		if c := aws.ToString(out.Checksum); c != "" && c != checksum {
			return fmt.Errorf("block %d: service computed checksum %s, sent %s: %w", i, c, checksum, errs.ErrUnavailable)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ebs upload: put block %d of snapshot %s: %w", i, u.cp.SnapshotID, err)
	}
	u.o.Progress.Add(blockBytes(i, size))
	if u.o.Sum != nil {
		u.o.Sum(i, sum)
	}
	u.mu.Lock()
	u.cp.Sent.Set(i)
	u.res.BlocksSent++
	u.res.BytesSent += BlockSize
	u.unsaved++
	due := u.unsaved >= u.o.SaveEvery
	u.mu.Unlock()
	// A save under way holds blocks acknowledged before it; one of the
	// blocks after it saves the rest.
	if due && u.saving.TryLock() {
		defer u.saving.Unlock()
		return u.saveHeld(ctx)
	}
	return nil
}

func (u *uploader) complete(ctx context.Context) error {
	n := u.cp.Sent.Count()
	err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
		_, err := u.api.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{
			SnapshotId:         aws.String(u.cp.SnapshotID),
			ChangedBlocksCount: aws.Int32(int32(n)),
		}, noSDKRetry)
		return err
	})
	if err != nil {
		return fmt.Errorf("ebs upload: complete snapshot %s with %d blocks: %w", u.cp.SnapshotID, n, err)
	}
	u.mu.Lock()
	u.cp.Completed = true
	u.mu.Unlock()
	return u.save(ctx)
}

func (u *uploader) deleteSnapshot(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	_, err := u.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(u.cp.SnapshotID)})
	if err != nil && awserr.CodeOf(err) != errs.NotFound {
		u.log.Warn("ebs upload: remove snapshot after failure", "snapshot", u.cp.SnapshotID, "err", awserr.Classify(err))
		return
	}
	u.log.Info("ebs upload: removed snapshot after failure", "snapshot", u.cp.SnapshotID)
}

// SnapshotState returns a snapshot's state and state message. An unknown
// snapshot is a NotFound error.
func SnapshotState(ctx context.Context, c EC2, id string) (ec2types.SnapshotState, string, error) {
	out, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
	if err != nil {
		return "", "", fmt.Errorf("describe snapshot %s: %w", id, awserr.Classify(err))
	}
	for _, s := range out.Snapshots {
		if aws.ToString(s.SnapshotId) == id {
			return s.State, aws.ToString(s.StateMessage), nil
		}
	}
	return "", "", fmt.Errorf("describe snapshot %s: no such snapshot: %w", id, errs.ErrNotFound)
}

// WaitCompleted polls DescribeSnapshots until the snapshot is completed.
// A snapshot in state error fails with its state message
// (FailedPrecondition).
func WaitCompleted(ctx context.Context, c EC2, id string, every, max time.Duration) error {
	return awserr.Poll(ctx, every, max, func(ctx context.Context) (bool, error) {
		st, msg, err := SnapshotState(ctx, c, id)
		if err != nil {
			return false, err
		}
		switch st {
		case ec2types.SnapshotStateCompleted:
			return true, nil
		case ec2types.SnapshotStateError:
			return false, fmt.Errorf("snapshot %s failed: %s: %w", id, msg, errs.ErrFailedPrecondition)
		}
		return false, nil
	})
}

func ebsTags(m map[string]string) []ebstypes.Tag {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []ebstypes.Tag
	for _, k := range keys {
		out = append(out, ebstypes.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}
