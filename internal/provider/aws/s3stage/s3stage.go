// Package s3stage stages disk images in S3 for EC2's import and export
// tasks: a resumable, parallel multipart upload from a stream, and objects
// read back as random-access files.
//
// Upload reads its source once, front to back, in parts of PartSize bytes
// (64 MiB by default; S3 wants at least 5 MiB for every part but the last),
// sends up to Workers parts at once, each retried on its own, and completes
// the upload. A Checkpoint records the upload ID; resuming with it lists
// the parts S3 already holds (ListParts) and re-sends only those that are
// missing or whose content differs (S3's ETag of a part is the MD5 of its
// bytes), so a source that is produced again the same way (ferry's disk
// writers are deterministic) is read again but not sent again.
package s3stage

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

// API is the part of the S3 client this package calls; *s3.Client
// implements it.
type API interface {
	CreateMultipartUpload(ctx context.Context, in *s3.CreateMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error)
	UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error)
	ListParts(ctx context.Context, in *s3.ListPartsInput, opts ...func(*s3.Options)) (*s3.ListPartsOutput, error)
	CompleteMultipartUpload(ctx context.Context, in *s3.CompleteMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error)
	AbortMultipartUpload(ctx context.Context, in *s3.AbortMultipartUploadInput, opts ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error)
	HeadObject(ctx context.Context, in *s3.HeadObjectInput, opts ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, opts ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	DeleteObject(ctx context.Context, in *s3.DeleteObjectInput, opts ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

var _ API = (*s3.Client)(nil)

const (
	// MinPartSize is S3's smallest part but the last.
	MinPartSize = 5 << 20
	// MaxPartSize is S3's largest part.
	MaxPartSize = 5 << 30
	// MaxParts is S3's most parts in one upload.
	MaxParts = 10000
	// DefaultPartSize is the part size unless told otherwise.
	DefaultPartSize = 64 << 20
)

func noSDKRetry(o *s3.Options) { o.RetryMaxAttempts = 1 }

// Checkpoint records a multipart upload so that it can be resumed after a
// crash.
type Checkpoint struct {
	Bucket    string `json:"bucket"`
	Key       string `json:"key"`
	UploadID  string `json:"upload_id,omitempty"`
	PartSize  int64  `json:"part_size"`
	Completed bool   `json:"completed,omitempty"`
}

type checkpointJSON struct {
	Version int `json:"v"`
	Checkpoint
}

// MarshalBinary encodes c as versioned JSON.
func (c Checkpoint) MarshalBinary() ([]byte, error) {
	return json.Marshal(checkpointJSON{Version: 1, Checkpoint: c})
}

// UnmarshalBinary decodes what MarshalBinary wrote; anything else is an
// InvalidArgument error.
func (c *Checkpoint) UnmarshalBinary(b []byte) error {
	var j checkpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("s3 checkpoint: %v: %w", err, errs.ErrInvalidArgument)
	}
	if j.Version != 1 {
		return fmt.Errorf("s3 checkpoint: version %d, want 1: %w", j.Version, errs.ErrInvalidArgument)
	}
	if j.Bucket == "" || j.Key == "" {
		return fmt.Errorf("s3 checkpoint: no bucket or key: %w", errs.ErrInvalidArgument)
	}
	if j.PartSize < MinPartSize || j.PartSize > MaxPartSize {
		return fmt.Errorf("s3 checkpoint: part size %d out of range: %w", j.PartSize, errs.ErrInvalidArgument)
	}
	*c = j.Checkpoint
	return nil
}

// UploadOptions tune Upload. The zero value (or nil) means defaults.
type UploadOptions struct {
	// PartSize is the size of every part but the last; default 64 MiB,
	// at least 5 MiB. SizeHint raises it so that the source fits in
	// 10,000 parts.
	PartSize int64
	SizeHint int64
	// Workers is how many parts are sent at once; default 4. Memory is
	// (Workers+1) × PartSize.
	Workers int
	// Tags are the object's tags (x-amz-tagging).
	Tags        map[string]string
	ContentType string
	// Resume continues the upload a checkpoint recorded; an upload S3 no
	// longer knows (aborted, expired) starts anew.
	Resume *Checkpoint
	// Save is called with the checkpoint once the upload ID is known and
	// when the upload is complete. An error from Save stops the upload.
	Save func(ctx context.Context, cp Checkpoint) error
	// KeepOnError leaves a failed upload's parts in place. Without it, the
	// upload is aborted unless Save is set.
	KeepOnError bool
	// Progress receives the bytes of each part handled.
	Progress progress.Reporter
	Logger   *slog.Logger
	// Retry is the policy for each part and call.
	Retry awserr.Backoff
}

// Result says what Upload did.
type Result struct {
	Bucket   string `json:"bucket"`
	Key      string `json:"key"`
	UploadID string `json:"upload_id"`
	ETag     string `json:"etag"`
	Size     int64  `json:"size"`
	Parts    int    `json:"parts"`
	// PartsSent and BytesSent count the parts this run uploaded;
	// PartsReused the parts S3 already held from an earlier run.
	PartsSent   int   `json:"parts_sent"`
	BytesSent   int64 `json:"bytes_sent"`
	PartsReused int   `json:"parts_reused"`
}

func (o *UploadOptions) withDefaults() UploadOptions {
	var c UploadOptions
	if o != nil {
		c = *o
	}
	if c.PartSize <= 0 {
		c.PartSize = DefaultPartSize
	}
	if c.SizeHint > 0 {
		c.PartSize = max(c.PartSize, (c.SizeHint+MaxParts-1)/MaxParts)
	}
	c.PartSize = min(max(c.PartSize, MinPartSize), MaxPartSize)
	if c.Workers <= 0 {
		c.Workers = 4
	}
	c.Progress = progress.Or(c.Progress)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Tagging encodes tags as S3's x-amz-tagging query string, keys sorted.
func Tagging(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, url.QueryEscape(k)+"="+url.QueryEscape(tags[k]))
	}
	return strings.Join(parts, "&")
}

type uploader struct {
	api API
	o   UploadOptions
	cp  Checkpoint
	log *slog.Logger

	mu   sync.Mutex
	done map[int32]string // part number -> ETag
	res  Result
}

// Upload writes everything r yields to s3://bucket/key with a multipart
// upload and returns when the object exists.
func Upload(ctx context.Context, api API, bucket, key string, r io.Reader, opts *UploadOptions) (Result, error) {
	o := opts.withDefaults()
	u := &uploader{api: api, o: o, log: o.Logger, done: map[int32]string{},
		cp: Checkpoint{Bucket: bucket, Key: key, PartSize: o.PartSize}}
	if rc := o.Resume; rc != nil && rc.UploadID != "" {
		if rc.Bucket != bucket || rc.Key != key {
			return Result{}, fmt.Errorf("s3 upload: checkpoint is for s3://%s/%s, not s3://%s/%s: %w", rc.Bucket, rc.Key, bucket, key, errs.ErrInvalidArgument)
		}
		u.cp = *rc
	}
	u.res = Result{Bucket: bucket, Key: key}
	res, err := u.run(ctx, r)
	if err != nil && u.cp.UploadID != "" && !u.cp.Completed && !o.KeepOnError && o.Save == nil {
		u.abort(ctx)
	}
	return res, err
}

func (u *uploader) where() string { return "s3://" + u.cp.Bucket + "/" + u.cp.Key }

func (u *uploader) save(ctx context.Context) error {
	if u.o.Save == nil {
		return nil
	}
	if err := u.o.Save(context.WithoutCancel(ctx), u.cp); err != nil {
		return fmt.Errorf("s3 upload %s: save checkpoint: %w", u.where(), err)
	}
	return nil
}

func (u *uploader) run(ctx context.Context, r io.Reader) (Result, error) {
	existing := map[int32]s3types.Part{}
	if u.cp.UploadID != "" {
		parts, err := u.listParts(ctx)
		switch {
		case errs.Is(err, errs.NotFound):
			u.log.Warn("s3 upload: the recorded upload is gone, starting anew", "key", u.where(), "upload_id", u.cp.UploadID)
			u.cp.UploadID, u.cp.Completed = "", false
		case err != nil:
			return u.res, err
		default:
			existing = parts
		}
	}
	if u.cp.Completed {
		if _, err := u.head(ctx); err == nil {
			u.res.UploadID = u.cp.UploadID
			return u.res, nil
		}
		u.cp.UploadID, u.cp.Completed = "", false
	}
	if u.cp.UploadID == "" {
		in := &s3.CreateMultipartUploadInput{Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key)}
		if len(u.o.Tags) > 0 {
			in.Tagging = aws.String(Tagging(u.o.Tags))
		}
		if u.o.ContentType != "" {
			in.ContentType = aws.String(u.o.ContentType)
		}
		var out *s3.CreateMultipartUploadOutput
		err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			out, err = u.api.CreateMultipartUpload(ctx, in, noSDKRetry)
			return err
		})
		if err != nil {
			return u.res, fmt.Errorf("s3 upload %s: create multipart upload: %w", u.where(), err)
		}
		u.cp.UploadID = aws.ToString(out.UploadId)
		if err := u.save(ctx); err != nil {
			return u.res, err
		}
	}
	u.res.UploadID = u.cp.UploadID
	u.log.Info("s3 upload", "key", u.where(), "upload_id", u.cp.UploadID, "parts_held", len(existing), "part_size", u.cp.PartSize)

	if err := u.sendParts(ctx, r, existing); err != nil {
		return u.res, err
	}
	return u.res, u.complete(ctx)
}

// listParts returns the parts S3 holds for the recorded upload.
func (u *uploader) listParts(ctx context.Context) (map[int32]s3types.Part, error) {
	parts := map[int32]s3types.Part{}
	var marker *string
	for {
		var out *s3.ListPartsOutput
		err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			out, err = u.api.ListParts(ctx, &s3.ListPartsInput{Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key),
				UploadId: aws.String(u.cp.UploadID), PartNumberMarker: marker}, noSDKRetry)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("s3 upload %s: list parts of upload %s: %w", u.where(), u.cp.UploadID, err)
		}
		for _, p := range out.Parts {
			parts[aws.ToInt32(p.PartNumber)] = p
		}
		if !aws.ToBool(out.IsTruncated) || aws.ToString(out.NextPartNumberMarker) == "" {
			return parts, nil
		}
		marker = out.NextPartNumberMarker
	}
}

func (u *uploader) sendParts(ctx context.Context, r io.Reader, existing map[int32]s3types.Part) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(u.o.Workers)
	pool := sync.Pool{New: func() any { b := make([]byte, u.cp.PartSize); return &b }}
	var size int64
	var readErr error
	for n := int32(1); ; n++ {
		if gctx.Err() != nil {
			break
		}
		if n > MaxParts {
			readErr = fmt.Errorf("s3 upload %s: source needs more than %d parts of %d bytes: %w", u.where(), MaxParts, u.cp.PartSize, errs.ErrInvalidArgument)
			break
		}
		bp := pool.Get().(*[]byte)
		k, err := io.ReadFull(r, *bp)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			pool.Put(bp)
			readErr = fmt.Errorf("s3 upload %s: read part %d: %w", u.where(), n, err)
			break
		}
		if k == 0 && n > 1 {
			pool.Put(bp)
			break
		}
		size += int64(k)
		data := (*bp)[:k]
		sum := md5.Sum(data)
		if p, ok := existing[n]; ok && aws.ToInt64(p.Size) == int64(k) && strings.Trim(aws.ToString(p.ETag), `"`) == hex.EncodeToString(sum[:]) {
			pool.Put(bp)
			u.mu.Lock()
			u.done[n] = aws.ToString(p.ETag)
			u.res.PartsReused++
			u.mu.Unlock()
			u.o.Progress.Add(int64(k))
		} else {
			g.Go(func() error {
				defer pool.Put(bp)
				return u.sendPart(gctx, n, data, sum[:])
			})
		}
		if k < len(*bp) {
			break
		}
	}
	err := g.Wait()
	if err == nil {
		err = readErr
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("s3 upload %s: %w", u.where(), ctx.Err())
		}
		return err
	}
	u.res.Size = size
	return nil
}

func (u *uploader) sendPart(ctx context.Context, n int32, data, sum []byte) error {
	var etag string
	err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
		out, err := u.api.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key), UploadId: aws.String(u.cp.UploadID),
			PartNumber: aws.Int32(n), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
			ContentMD5: aws.String(base64.StdEncoding.EncodeToString(sum)),
		}, noSDKRetry)
		if err != nil {
			return err
		}
		etag = aws.ToString(out.ETag)
		return nil
	})
	if err != nil {
		return fmt.Errorf("s3 upload %s: part %d: %w", u.where(), n, err)
	}
	u.o.Progress.Add(int64(len(data)))
	u.mu.Lock()
	u.done[n] = etag
	u.res.PartsSent++
	u.res.BytesSent += int64(len(data))
	u.mu.Unlock()
	return nil
}

func (u *uploader) complete(ctx context.Context) error {
	var parts []s3types.CompletedPart
	for n, etag := range u.done {
		parts = append(parts, s3types.CompletedPart{PartNumber: aws.Int32(n), ETag: aws.String(etag)})
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	u.res.Parts = len(parts)
	var out *s3.CompleteMultipartUploadOutput
	err := u.o.Retry.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = u.api.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key), UploadId: aws.String(u.cp.UploadID),
			MultipartUpload: &s3types.CompletedMultipartUpload{Parts: parts},
		}, noSDKRetry)
		return err
	})
	if err != nil {
		return fmt.Errorf("s3 upload %s: complete upload of %d parts: %w", u.where(), len(parts), err)
	}
	u.res.ETag = aws.ToString(out.ETag)
	u.cp.Completed = true
	u.log.Info("s3 upload complete", "key", u.where(), "bytes", u.res.Size, "parts", len(parts), "parts_sent", u.res.PartsSent, "parts_reused", u.res.PartsReused)
	return u.save(ctx)
}

func (u *uploader) head(ctx context.Context) (*s3.HeadObjectOutput, error) {
	out, err := u.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key)})
	return out, awserr.Classify(err)
}

func (u *uploader) abort(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), defaultCleanupTimeout)
	defer cancel()
	_, err := u.api.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(u.cp.Bucket), Key: aws.String(u.cp.Key), UploadId: aws.String(u.cp.UploadID)})
	if err != nil && awserr.CodeOf(err) != errs.NotFound {
		u.log.Warn("s3 upload: abort after failure", "key", u.where(), "upload_id", u.cp.UploadID, "err", awserr.Classify(err))
	}
}

// Abort aborts the multipart upload a checkpoint records (the cleanup of
// an abandoned, resumable upload). An upload S3 no longer knows is no
// error.
func Abort(ctx context.Context, api API, cp Checkpoint) error {
	if cp.UploadID == "" || cp.Completed {
		return nil
	}
	_, err := api.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(cp.Bucket), Key: aws.String(cp.Key), UploadId: aws.String(cp.UploadID)})
	if err != nil && awserr.CodeOf(err) != errs.NotFound {
		return fmt.Errorf("s3: abort upload %s of s3://%s/%s: %w", cp.UploadID, cp.Bucket, cp.Key, awserr.Classify(err))
	}
	return nil
}

// Delete removes an object; a missing object is no error.
func Delete(ctx context.Context, api API, bucket, key string) error {
	_, err := api.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil && awserr.CodeOf(err) != errs.NotFound {
		return fmt.Errorf("s3: delete s3://%s/%s: %w", bucket, key, awserr.Classify(err))
	}
	return nil
}
