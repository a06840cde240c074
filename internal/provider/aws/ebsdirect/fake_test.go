package ebsdirect

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// fakeEBS is an in-memory EBS direct API plus the two EC2 calls Upload
// makes, with AWS's error codes, for unit tests.
type fakeEBS struct {
	mu     sync.Mutex
	snaps  map[string]*fakeSnap
	tokens map[string]string // client token -> snapshot
	seq    int

	puts     atomic.Int64
	putBytes atomic.Int64
	gets     atomic.Int64
	failPuts atomic.Int64 // fail the next n puts with a throttling error
	putHook  func(index int32) error
	pageSize int
}

type fakeSnap struct {
	id     string
	gib    int64
	state  ec2types.SnapshotState
	parent string
	blocks map[int32][]byte
	tags   []ebstypes.Tag
}

func newFakeEBS() *fakeEBS {
	return &fakeEBS{snaps: map[string]*fakeSnap{}, tokens: map[string]string{}, pageSize: 100}
}

func apiErr(code, msg string) error {
	return &smithy.OperationError{ServiceID: "EBS", OperationName: "Op", Err: &smithy.GenericAPIError{Code: code, Message: msg}}
}

func (f *fakeEBS) snap(id string) (*fakeSnap, error) {
	s, ok := f.snaps[id]
	if !ok {
		return nil, apiErr("ResourceNotFoundException", "snapshot "+id+" not found")
	}
	return s, nil
}

func (f *fakeEBS) StartSnapshot(ctx context.Context, in *ebs.StartSnapshotInput, _ ...func(*ebs.Options)) (*ebs.StartSnapshotOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.tokens[aws.ToString(in.ClientToken)]; ok {
		s := f.snaps[id]
		return &ebs.StartSnapshotOutput{SnapshotId: aws.String(id), BlockSize: aws.Int32(BlockSize), VolumeSize: aws.Int64(s.gib), Status: ebstypes.StatusPending}, nil
	}
	f.seq++
	id := fmt.Sprintf("snap-%017x", f.seq)
	f.snaps[id] = &fakeSnap{id: id, gib: aws.ToInt64(in.VolumeSize), state: ec2types.SnapshotStatePending, blocks: map[int32][]byte{}, tags: in.Tags}
	f.tokens[aws.ToString(in.ClientToken)] = id
	return &ebs.StartSnapshotOutput{SnapshotId: aws.String(id), BlockSize: aws.Int32(BlockSize), VolumeSize: in.VolumeSize, Status: ebstypes.StatusPending}, nil
}

func (f *fakeEBS) PutSnapshotBlock(ctx context.Context, in *ebs.PutSnapshotBlockInput, _ ...func(*ebs.Options)) (*ebs.PutSnapshotBlockOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.failPuts.Add(-1) >= 0 {
		return nil, apiErr("RequestThrottledException", "slow down")
	}
	if f.putHook != nil {
		if err := f.putHook(aws.ToInt32(in.BlockIndex)); err != nil {
			return nil, err
		}
	}
	data, err := io.ReadAll(in.BlockData)
	if err != nil {
		return nil, err
	}
	if len(data) != BlockSize || aws.ToInt32(in.DataLength) != BlockSize {
		return nil, apiErr("ValidationException", "bad length")
	}
	sum := sha256.Sum256(data)
	if base64.StdEncoding.EncodeToString(sum[:]) != aws.ToString(in.Checksum) || in.ChecksumAlgorithm != ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256 {
		return nil, apiErr("ValidationException", "checksum mismatch")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.snap(aws.ToString(in.SnapshotId))
	if err != nil {
		return nil, err
	}
	if s.state != ec2types.SnapshotStatePending {
		return nil, apiErr("ValidationException", "snapshot is not pending")
	}
	idx := aws.ToInt32(in.BlockIndex)
	if int64(idx) >= s.gib*blocksPerGiB {
		return nil, apiErr("ValidationException", "block index out of range")
	}
	s.blocks[idx] = data
	f.puts.Add(1)
	f.putBytes.Add(int64(len(data)))
	return &ebs.PutSnapshotBlockOutput{Checksum: in.Checksum, ChecksumAlgorithm: in.ChecksumAlgorithm}, nil
}

func (f *fakeEBS) CompleteSnapshot(ctx context.Context, in *ebs.CompleteSnapshotInput, _ ...func(*ebs.Options)) (*ebs.CompleteSnapshotOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.snap(aws.ToString(in.SnapshotId))
	if err != nil {
		return nil, err
	}
	if int(aws.ToInt32(in.ChangedBlocksCount)) != len(s.blocks) {
		return nil, apiErr("ValidationException", fmt.Sprintf("changed blocks count %d, have %d", aws.ToInt32(in.ChangedBlocksCount), len(s.blocks)))
	}
	s.state = ec2types.SnapshotStateCompleted
	return &ebs.CompleteSnapshotOutput{Status: ebstypes.StatusCompleted}, nil
}

// page returns the listed indices from token on.
func (f *fakeEBS) page(idx []int32, next *string) ([]int32, *string) {
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	start := 0
	if next != nil {
		start, _ = strconv.Atoi(*next)
	}
	end := min(start+f.pageSize, len(idx))
	var nt *string
	if end < len(idx) {
		nt = aws.String(strconv.Itoa(end))
	}
	return idx[start:end], nt
}

func (f *fakeEBS) completed(id string) (*fakeSnap, error) {
	s, err := f.snap(id)
	if err != nil {
		return nil, err
	}
	if s.state != ec2types.SnapshotStateCompleted {
		return nil, apiErr("ValidationException", "snapshot "+id+" is not completed")
	}
	return s, nil
}

func (f *fakeEBS) ListSnapshotBlocks(ctx context.Context, in *ebs.ListSnapshotBlocksInput, _ ...func(*ebs.Options)) (*ebs.ListSnapshotBlocksOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.completed(aws.ToString(in.SnapshotId))
	if err != nil {
		return nil, err
	}
	var idx []int32
	for i := range s.blocks {
		idx = append(idx, i)
	}
	pg, next := f.page(idx, in.NextToken)
	out := &ebs.ListSnapshotBlocksOutput{BlockSize: aws.Int32(BlockSize), VolumeSize: aws.Int64(s.gib), NextToken: next}
	for _, i := range pg {
		out.Blocks = append(out.Blocks, ebstypes.Block{BlockIndex: aws.Int32(i), BlockToken: aws.String(fmt.Sprintf("tok-%s-%d", s.id, i))})
	}
	return out, nil
}

func (f *fakeEBS) ListChangedBlocks(ctx context.Context, in *ebs.ListChangedBlocksInput, _ ...func(*ebs.Options)) (*ebs.ListChangedBlocksOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.completed(aws.ToString(in.FirstSnapshotId))
	if err != nil {
		return nil, err
	}
	b, err := f.completed(aws.ToString(in.SecondSnapshotId))
	if err != nil {
		return nil, err
	}
	seen := map[int32]bool{}
	var idx []int32
	for i, d := range b.blocks {
		if ad, ok := a.blocks[i]; !ok || !bytes.Equal(ad, d) {
			idx = append(idx, i)
			seen[i] = true
		}
	}
	for i := range a.blocks {
		if _, ok := b.blocks[i]; !ok && !seen[i] {
			idx = append(idx, i)
		}
	}
	pg, next := f.page(idx, in.NextToken)
	out := &ebs.ListChangedBlocksOutput{BlockSize: aws.Int32(BlockSize), VolumeSize: aws.Int64(b.gib), NextToken: next}
	for _, i := range pg {
		cb := ebstypes.ChangedBlock{BlockIndex: aws.Int32(i)}
		if _, ok := a.blocks[i]; ok {
			cb.FirstBlockToken = aws.String(fmt.Sprintf("tok-%s-%d", a.id, i))
		}
		if _, ok := b.blocks[i]; ok {
			cb.SecondBlockToken = aws.String(fmt.Sprintf("tok-%s-%d", b.id, i))
		}
		out.ChangedBlocks = append(out.ChangedBlocks, cb)
	}
	return out, nil
}

func (f *fakeEBS) GetSnapshotBlock(ctx context.Context, in *ebs.GetSnapshotBlockInput, _ ...func(*ebs.Options)) (*ebs.GetSnapshotBlockOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.completed(aws.ToString(in.SnapshotId))
	if err != nil {
		return nil, err
	}
	i := aws.ToInt32(in.BlockIndex)
	d, ok := s.blocks[i]
	if !ok || aws.ToString(in.BlockToken) != fmt.Sprintf("tok-%s-%d", s.id, i) {
		return nil, apiErr("ValidationException", "invalid block token")
	}
	f.gets.Add(1)
	sum := sha256.Sum256(d)
	return &ebs.GetSnapshotBlockOutput{BlockData: io.NopCloser(bytes.NewReader(d)), DataLength: aws.Int32(int32(len(d))),
		Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}, nil
}

func (f *fakeEBS) DescribeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &ec2.DescribeSnapshotsOutput{}
	for _, id := range in.SnapshotIds {
		s, ok := f.snaps[id]
		if !ok {
			return nil, apiErr("InvalidSnapshot.NotFound", "The snapshot '"+id+"' does not exist.")
		}
		out.Snapshots = append(out.Snapshots, ec2types.Snapshot{SnapshotId: aws.String(id), State: s.state, VolumeSize: aws.Int32(int32(s.gib))})
	}
	return out, nil
}

func (f *fakeEBS) DeleteSnapshot(ctx context.Context, in *ec2.DeleteSnapshotInput, _ ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := aws.ToString(in.SnapshotId)
	if _, ok := f.snaps[id]; !ok {
		return nil, apiErr("InvalidSnapshot.NotFound", "The snapshot '"+id+"' does not exist.")
	}
	delete(f.snaps, id)
	return &ec2.DeleteSnapshotOutput{}, nil
}
