package s3stage

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

const defaultCleanupTimeout = 2 * time.Minute

// Object is an S3 object read with ranged GETs: a disk.File, so that the
// disk formats can open an exported image where it lies.
type Object struct {
	api         API
	bucket, key string
	size        int64
	etag        string
	retry       awserr.Backoff
	ctx         context.Context
	cancel      context.CancelFunc
}

var _ disk.File = (*Object)(nil)

// OpenObject looks the object up (HeadObject) and returns it as a File. A
// missing bucket or key is NotFound.
func OpenObject(ctx context.Context, api API, bucket, key string, retry awserr.Backoff) (*Object, error) {
	out, err := api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("s3: open s3://%s/%s: %w", bucket, key, awserr.Classify(err))
	}
	o := &Object{api: api, bucket: bucket, key: key, size: aws.ToInt64(out.ContentLength), etag: aws.ToString(out.ETag), retry: retry}
	o.ctx, o.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return o, nil
}

func (o *Object) Name() string { return "s3://" + o.bucket + "/" + o.key }
func (o *Object) Size() int64  { return o.size }

// Close stops reads in flight.
func (o *Object) Close() error {
	o.cancel()
	return nil
}

// ReadAt reads [off, off+len(p)) with one ranged GET (If-Match the ETag
// seen at open, so that a replaced object is an error, not a mix).
func (o *Object) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("s3: read %s at negative offset: %w", o.Name(), errs.ErrInvalidArgument)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), o.size-off)
	if n == 0 {
		return 0, nil
	}
	err := o.retry.Do(o.ctx, func(ctx context.Context) error {
		in := &s3.GetObjectInput{Bucket: aws.String(o.bucket), Key: aws.String(o.key), Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))}
		if o.etag != "" {
			in.IfMatch = aws.String(o.etag)
		}
		out, err := o.api.GetObject(ctx, in, noSDKRetry)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		_, err = io.ReadFull(out.Body, p[:n])
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("s3: read %s at %d: %w", o.Name(), off, err)
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
