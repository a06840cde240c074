package s3stage

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
	"github.com/ferry-project/ferry/internal/provider/aws/awstest"
)

var fastRetry = awserr.Backoff{Attempts: 4, Base: time.Millisecond, Max: 5 * time.Millisecond}

func client(s *awstest.S3, secret string) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint), Region: s.Region, UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, secret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

func makeBucket(t *testing.T, c *s3.Client, name string) {
	t.Helper()
	if _, err := c.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatal(err)
	}
}

func randomData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// countingAPI counts parts and can cancel after n acknowledged parts.
type countingAPI struct {
	API
	parts       atomic.Int64
	cancelAfter int64
	cancel      context.CancelFunc
}

func (c *countingAPI) UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	out, err := c.API.UploadPart(ctx, in, opts...)
	if err == nil && c.parts.Add(1) == c.cancelAfter && c.cancel != nil {
		c.cancel()
	}
	return out, err
}

func TestVersitygwUpload(t *testing.T) {
	srv := awstest.Versitygw(t)
	c := client(srv, srv.SecretKey)
	makeBucket(t, c, "stage")
	data := randomData(23<<20+12345, 1)
	api := &countingAPI{API: c}
	res, err := Upload(t.Context(), api, "stage", "disks/a.vmdk", bytes.NewReader(data), &UploadOptions{
		PartSize: MinPartSize, Workers: 3, Retry: fastRetry, Tags: map[string]string{"ferry:managed": "true", "ferry:job": "j 1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Parts != 5 || res.PartsSent != 5 || res.Size != int64(len(data)) || api.parts.Load() != 5 {
		t.Fatalf("result %+v, %d parts sent", res, api.parts.Load())
	}
	got, err := os.ReadFile(filepath.Join(srv.Dir, "stage", "disks", "a.vmdk"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("staged object differs")
	}
	tags, err := c.GetObjectTagging(t.Context(), &s3.GetObjectTaggingInput{Bucket: aws.String("stage"), Key: aws.String("disks/a.vmdk")})
	if err != nil {
		t.Fatal(err)
	}
	if len(tags.TagSet) != 2 {
		t.Fatalf("tags %v", tags.TagSet)
	}
	// Read back through ranged GETs.
	obj, err := OpenObject(t.Context(), c, "stage", "disks/a.vmdk", fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	if obj.Size() != int64(len(data)) {
		t.Fatalf("size %d", obj.Size())
	}
	buf := make([]byte, 1<<20)
	for _, off := range []int64{0, 5<<20 - 100, int64(len(data)) - 1000} {
		n, err := obj.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
			t.Fatalf("read at %d differs", off)
		}
	}
}

func TestVersitygwResume(t *testing.T) {
	srv := awstest.Versitygw(t)
	c := client(srv, srv.SecretKey)
	makeBucket(t, c, "stage")
	data := randomData(8*MinPartSize+777, 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	api := &countingAPI{API: c, cancelAfter: 3, cancel: cancel}
	var cp Checkpoint
	save := func(_ context.Context, c Checkpoint) error { cp = c; return nil }
	// One worker: no part is in flight when the third is acknowledged, so
	// S3 holds exactly three.
	_, err := Upload(ctx, api, "stage", "disks/b.raw", bytes.NewReader(data), &UploadOptions{PartSize: MinPartSize, Workers: 1, Retry: fastRetry, Save: save})
	if !errs.Is(err, errs.Canceled) {
		t.Fatalf("first run: %v, want canceled", err)
	}
	if cp.UploadID == "" || cp.Completed {
		t.Fatalf("checkpoint %+v", cp)
	}
	held, err := c.ListParts(t.Context(), &s3.ListPartsInput{Bucket: aws.String("stage"), Key: aws.String("disks/b.raw"), UploadId: aws.String(cp.UploadID)})
	if err != nil {
		t.Fatal(err)
	}
	nHeld := len(held.Parts)
	if nHeld != 3 {
		t.Fatalf("S3 holds %d parts after cancelling at 3", nHeld)
	}
	// The source is produced again; one held part now differs, so it must
	// be sent again too.
	data2 := bytes.Clone(data)
	changed := aws.ToInt32(held.Parts[0].PartNumber)
	data2[int64(changed-1)*MinPartSize+10] ^= 0xff
	b, _ := cp.MarshalBinary()
	var cp2 Checkpoint
	if err := cp2.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	api2 := &countingAPI{API: c}
	res, err := Upload(t.Context(), api2, "stage", "disks/b.raw", bytes.NewReader(data2), &UploadOptions{PartSize: MinPartSize, Workers: 2, Retry: fastRetry, Resume: &cp2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Parts != 9 || res.PartsReused != nHeld-1 || res.PartsSent != 9-nHeld+1 || api2.parts.Load() != int64(9-nHeld+1) {
		t.Fatalf("resume: %+v (held %d), %d parts sent", res, nHeld, api2.parts.Load())
	}
	got, err := os.ReadFile(filepath.Join(srv.Dir, "stage", "disks", "b.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data2) {
		t.Fatal("object differs after resume")
	}
}

func TestVersitygwErrors(t *testing.T) {
	srv := awstest.Versitygw(t)
	good := client(srv, srv.SecretKey)
	makeBucket(t, good, "stage")
	tests := []struct {
		name   string
		c      *s3.Client
		bucket string
		want   errs.Code
	}{
		{"missing bucket", good, "nope", errs.NotFound},
		{"wrong secret", client(srv, "wrong-secret-123"), "stage", errs.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Upload(t.Context(), tt.c, tt.bucket, "k", bytes.NewReader([]byte("x")), &UploadOptions{Retry: fastRetry})
			if errs.CodeOf(err) != tt.want {
				t.Fatalf("upload: %v (%v), want %v", err, errs.CodeOf(err), tt.want)
			}
			_, err = OpenObject(t.Context(), tt.c, tt.bucket, "k", fastRetry)
			if errs.CodeOf(err) != tt.want && !(tt.want == errs.PermissionDenied && errs.CodeOf(err) == errs.PermissionDenied) {
				t.Fatalf("open: %v (%v), want %v", err, errs.CodeOf(err), tt.want)
			}
		})
	}
	// A failed upload leaves no multipart upload behind.
	ups, err := good.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String("stage")})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Fatalf("%d uploads left", len(ups.Uploads))
	}
}

func TestCheckpointRefusals(t *testing.T) {
	for _, in := range []string{"", "{}", `{"v":2,"bucket":"b","key":"k","part_size":5242880}`, `{"v":1,"bucket":"","key":"k","part_size":5242880}`, `{"v":1,"bucket":"b","key":"k","part_size":1}`} {
		var cp Checkpoint
		if err := cp.UnmarshalBinary([]byte(in)); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func FuzzCheckpoint(f *testing.F) {
	b, _ := Checkpoint{Bucket: "b", Key: "k", UploadID: "u", PartSize: DefaultPartSize}.MarshalBinary()
	f.Add(b)
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cp Checkpoint
		if err := cp.UnmarshalBinary(b); err != nil {
			if !errs.Is(err, errs.InvalidArgument) {
				t.Fatal(err)
			}
			return
		}
		again, _ := cp.MarshalBinary()
		var cp2 Checkpoint
		if err := cp2.UnmarshalBinary(again); err != nil || cp2 != cp {
			t.Fatalf("round trip: %v %+v %+v", err, cp, cp2)
		}
	})
}

func TestTagging(t *testing.T) {
	if got := Tagging(map[string]string{"ferry:managed": "true", "ferry:job": "a b&c"}); got != "ferry%3Ajob=a+b%26c&ferry%3Amanaged=true" {
		t.Fatal(got)
	}
}
