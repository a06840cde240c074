package awslab

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

func TestRestart(t *testing.T) {
	dir := t.TempDir()
	l := newTestLab(t, dir)
	ctx := t.Context()
	ami, _ := l.registerTestImage(ctx, "persisted")
	run := must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(ami), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("Name"), Value: aws.String("kept")}}}}}))
	inst := *run.Instances[0].InstanceId
	l.settle("running", func() bool { return l.instanceState(ctx, inst) == types.InstanceStateNameRunning })
	l.makeBucket(ctx, "kept")
	must[*s3.PutObjectOutput](t)(l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("kept"), Key: aws.String("a/b"), Body: strings.NewReader("still here")}))
	up := must[*s3.CreateMultipartUploadOutput](t)(l.s3.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("kept"), Key: aws.String("mpu")}))
	p1 := must[*s3.UploadPartOutput](t)(l.s3.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("kept"), Key: aws.String("mpu"), UploadId: up.UploadId, PartNumber: aws.Int32(1), Body: bytes.NewReader(pattern(5<<20, 9))}))
	// a snapshot half written through the EBS direct APIs
	st := must[*ebs.StartSnapshotOutput](t)(l.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1)}))
	pending := *st.SnapshotId
	if err := l.putBlock(ctx, pending, 1, pattern(blockSize, 1)); err != nil {
		t.Fatal(err)
	}
	account := l.s.st.Account
	l.close()

	// reopen without keys: the stored pair is used
	s, err := New(ctx, Options{Dir: dir, Clock: l.clock.Now, Delay: testDelay, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if ak, sk := s.Credentials(); ak != testAccessKey || sk.Reveal() != testSecretKey || s.Generated() {
		t.Fatalf("credentials after restart: %s, generated %v", ak, s.Generated())
	}
	s.Close()
	l2 := newTestLab(t, dir, func(o *Options) { o.Clock = l.clock.Now })
	l2.clock = l.clock
	if l2.s.st.Account != account {
		t.Fatalf("account changed from %s to %s", account, l2.s.st.Account)
	}
	d := must[*ec2.DescribeInstancesOutput](t)(l2.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("tag:Name"), Values: []string{"kept"}}}}))
	if len(d.Reservations) != 1 || d.Reservations[0].Instances[0].State.Name != types.InstanceStateNameRunning || len(d.Reservations[0].Instances[0].BlockDeviceMappings) != 1 {
		t.Fatalf("instance after restart %+v", d.Reservations)
	}
	get := must[*s3.GetObjectOutput](t)(l2.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("kept"), Key: aws.String("a/b")}))
	b, _ := io.ReadAll(get.Body)
	get.Body.Close()
	if string(b) != "still here" {
		t.Fatalf("object after restart: %q", b)
	}
	p2 := must[*s3.UploadPartOutput](t)(l2.s3.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("kept"), Key: aws.String("mpu"), UploadId: up.UploadId, PartNumber: aws.Int32(2), Body: strings.NewReader(" and two")}))
	must[*s3.CompleteMultipartUploadOutput](t)(l2.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String("kept"), Key: aws.String("mpu"), UploadId: up.UploadId,
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{{PartNumber: aws.Int32(1), ETag: p1.ETag}, {PartNumber: aws.Int32(2), ETag: p2.ETag}}}}))
	get = must[*s3.GetObjectOutput](t)(l2.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("kept"), Key: aws.String("mpu")}))
	b, _ = io.ReadAll(get.Body)
	get.Body.Close()
	if !bytes.Equal(b, append(pattern(5<<20, 9), " and two"...)) {
		t.Fatalf("multipart object across a restart: %d bytes", len(b))
	}
	// the half-written snapshot takes more blocks and completes
	if err := l2.putBlock(ctx, pending, 4, pattern(blockSize, 4)); err != nil {
		t.Fatal(err)
	}
	agg := sha256.New()
	for _, seed := range []byte{1, 4} {
		s := sha256.Sum256(pattern(blockSize, seed))
		agg.Write(s[:])
	}
	must[*ebs.CompleteSnapshotOutput](t)(l2.ebs.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(pending), ChangedBlocksCount: aws.Int32(2),
		Checksum: aws.String(base64.StdEncoding.EncodeToString(agg.Sum(nil))), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}))
	l2.settle("completed", func() bool { return l2.snapshotState(ctx, pending) == types.SnapshotStateCompleted })
	img := l2.readSnapshot(ctx, pending, gib)
	buf := make([]byte, blockSize)
	img.ReadAt(buf, 4*blockSize)
	if !bytes.Equal(buf, pattern(blockSize, 4)) {
		t.Fatal("block 4 does not read back")
	}
	img.ReadAt(buf, blockSize)
	if !bytes.Equal(buf, pattern(blockSize, 1)) {
		t.Fatal("block 1, written before the restart, does not read back")
	}
}

func TestGeneratedKeys(t *testing.T) {
	dir := t.TempDir()
	s, err := New(t.Context(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ak, sk := s.Credentials()
	if !s.Generated() || !strings.HasPrefix(ak, "AKIA") || len(ak) != 20 || len(sk.Reveal()) != 40 {
		t.Fatalf("generated %s (%d-character secret)", ak, len(sk.Reveal()))
	}
	if sk.String() != "[redacted]" {
		t.Fatal("the secret prints")
	}
	s.Close()
	fi, err := os.Stat(filepath.Join(dir, credFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", err, fi.Mode())
	}
	s, err = New(t.Context(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ak2, sk2 := s.Credentials(); ak2 != ak || sk2 != sk || s.Generated() {
		t.Fatal("the generated pair was not kept")
	}
	for _, o := range []Options{{}, {Dir: dir, AccessKey: "AKIAONLYKEY000000000"}, {Dir: dir, AccessKey: "short", SecretKey: "x"}, {Dir: dir, Region: "Mars"}} {
		if _, err := New(t.Context(), o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}
