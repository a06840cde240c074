package awslab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

const (
	testAccessKey = "AKIAFERRYLABTEST0001"
	testSecretKey = "ferry/lab/secret+key/0123456789abcdefghij"
	testDelay     = 2 * time.Second
)

// fakeClock is a clock the tests move.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testLab is a lab region behind an httptest server, with SDK clients.
type testLab struct {
	t     *testing.T
	s     *Server
	hs    *httptest.Server
	dir   string
	clock *fakeClock
	ec2   *ec2.Client
	ebs   *ebs.Client
	s3    *s3.Client
}

func newTestLab(t *testing.T, dir string, mods ...func(*Options)) *testLab {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	clock := &fakeClock{t: time.Now().Truncate(time.Second)}
	o := Options{Dir: dir, AccessKey: testAccessKey, SecretKey: testSecretKey, Logger: slog.New(slog.DiscardHandler), Clock: clock.Now, Delay: testDelay}
	for _, m := range mods {
		m(&o)
	}
	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	l := &testLab{t: t, s: s, hs: hs, dir: dir, clock: clock}
	l.ec2, l.ebs, l.s3 = clients(hs.URL, testAccessKey, testSecretKey, nil)
	t.Cleanup(l.close)
	return l
}

func (l *testLab) close() {
	if l.hs != nil {
		l.hs.CloseClientConnections()
		l.hs.Close()
		l.hs = nil
	}
	if err := l.s.Close(); err != nil {
		l.t.Errorf("close lab: %v", err)
	}
}

// clients builds SDK clients for an endpoint; rt, if set, sees every
// request after it is signed.
func clients(endpoint, ak, sk string, rt http.RoundTripper) (*ec2.Client, *ebs.Client, *s3.Client) {
	// A transport of its own: httptest.Server.Close closes the idle
	// connections of http.DefaultTransport, racing with this lab's.
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	if rt != nil {
		hc.Transport = rt
	}
	cfg := aws.Config{
		Region:           "us-east-1",
		Credentials:      credentials.NewStaticCredentialsProvider(ak, sk, ""),
		HTTPClient:       hc,
		RetryMaxAttempts: 1,
	}
	e := ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(endpoint) })
	b := ebs.NewFromConfig(cfg, func(o *ebs.Options) { o.BaseEndpoint = aws.String(endpoint) })
	s := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint = aws.String(endpoint); o.UsePathStyle = true })
	return e, b, s
}

// settle moves the clock on by the lab's delay until check reports true,
// polling (real work such as conversions runs in the background) for at
// most two minutes (a busy machine).
func (l *testLab) settle(what string, check func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !check() {
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: not reached within two minutes", what)
		}
		l.clock.Advance(testDelay)
		time.Sleep(10 * time.Millisecond)
	}
}

// apiCode returns the error code of an SDK error ("" for nil).
func apiCode(err error) string {
	if err == nil {
		return ""
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "not an API error: " + err.Error()
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := apiCode(err); got != code {
		t.Fatalf("error %v (code %q), want code %q", err, got, code)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// pattern returns deterministic data with holes: 64 KiB pieces, every
// third one zero.
func pattern(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		blk := i / (64 << 10)
		if blk%3 == 1 {
			continue
		}
		b[i] = byte(i*7+int(seed)*13+blk) | 1
	}
	return b
}

// putBlock writes one 512 KiB block through the EBS direct API.
func (l *testLab) putBlock(ctx context.Context, snap string, idx int32, data []byte) error {
	sum := sha256.Sum256(data)
	_, err := l.ebs.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
		SnapshotId: aws.String(snap), BlockIndex: aws.Int32(idx), BlockData: bytes.NewReader(data),
		DataLength: aws.Int32(int32(len(data))), Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
		ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
	})
	return err
}

// readSnapshot reads a completed snapshot through the EBS direct API into
// a sparse raw file and opens it.
func (l *testLab) readSnapshot(ctx context.Context, snap string, size int64) disk.Image {
	l.t.Helper()
	path := filepath.Join(l.t.TempDir(), snap+".raw")
	f, err := os.Create(path)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		l.t.Fatal(err)
	}
	var token *string
	for {
		out, err := l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(snap), NextToken: token})
		if err != nil {
			l.t.Fatalf("list blocks of %s: %v", snap, err)
		}
		for _, b := range out.Blocks {
			get, err := l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(snap), BlockIndex: b.BlockIndex, BlockToken: b.BlockToken})
			if err != nil {
				l.t.Fatalf("get block %d of %s: %v", *b.BlockIndex, snap, err)
			}
			data, err := io.ReadAll(get.BlockData)
			get.BlockData.Close()
			if err != nil {
				l.t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if base64.StdEncoding.EncodeToString(sum[:]) != aws.ToString(get.Checksum) {
				l.t.Fatalf("block %d of %s: checksum header does not match the data", *b.BlockIndex, snap)
			}
			if int64(*b.BlockIndex)*blockSize < size {
				if _, err := f.WriteAt(data[:min(int64(len(data)), size-int64(*b.BlockIndex)*blockSize)], int64(*b.BlockIndex)*blockSize); err != nil {
					l.t.Fatal(err)
				}
			}
		}
		if out.NextToken == nil {
			break
		}
		token = out.NextToken
	}
	f.Close()
	df, err := disk.OpenFile(path)
	if err != nil {
		l.t.Fatal(err)
	}
	img, err := raw.Format().Open(ctx, df, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { img.Close() })
	return img
}

// snapshotState returns a snapshot's status.
func (l *testLab) snapshotState(ctx context.Context, id string) ec2types.SnapshotState {
	l.t.Helper()
	out, err := l.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
	if err != nil {
		l.t.Fatal(err)
	}
	return out.Snapshots[0].State
}

func (l *testLab) instanceState(ctx context.Context, id string) ec2types.InstanceStateName {
	l.t.Helper()
	out, err := l.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		l.t.Fatal(err)
	}
	return out.Reservations[0].Instances[0].State.Name
}

// makeBucket creates a bucket.
func (l *testLab) makeBucket(ctx context.Context, name string) {
	l.t.Helper()
	if _, err := l.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		l.t.Fatal(err)
	}
}

// putFile uploads a local file as an object.
func (l *testLab) putFile(ctx context.Context, bucket, key, path string) {
	l.t.Helper()
	f, err := os.Open(path)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	if _, err := l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: f}); err != nil {
		l.t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
}

// compareImages fails unless a and b read the same.
func compareImages(t *testing.T, a, b disk.Image) {
	t.Helper()
	res, err := disk.Compare(t.Context(), a, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Identical {
		t.Fatalf("images differ at byte %d (sizes %d and %d)", res.Offset, res.SizeA, res.SizeB)
	}
}
