package awslab

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestEBSPutChecks(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	st := must[*ebs.StartSnapshotOutput](t)(l.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1),
		Tags: []ebstypes.Tag{{Key: aws.String("ferry:job"), Value: aws.String("j")}}}))
	if st.Status != ebstypes.StatusPending || *st.BlockSize != blockSize || *st.VolumeSize != 1 || len(st.Tags) != 1 || st.StartTime == nil {
		t.Fatalf("start %+v", st)
	}
	id := *st.SnapshotId
	data := pattern(blockSize, 7)
	sum := sha256.Sum256(data)
	good := base64.StdEncoding.EncodeToString(sum[:])
	other := sha256.Sum256(pattern(blockSize, 8))
	tests := []struct {
		name     string
		snap     string
		idx      int32
		data     []byte
		length   int32
		checksum string
		code     string
		reason   ebstypes.ValidationExceptionReason
	}{
		{"good", id, 3, data, blockSize, good, "", ""},
		{"wrong checksum", id, 4, data, blockSize, base64.StdEncoding.EncodeToString(other[:]), "ValidationException", ebstypes.ValidationExceptionReasonInvalidParameterValue},
		{"short block", id, 4, data[:4096], 4096, good, "ValidationException", ebstypes.ValidationExceptionReasonInvalidParameterValue},
		{"beyond the volume", id, 2048, data, blockSize, good, "ValidationException", ebstypes.ValidationExceptionReasonInvalidBlock},
		{"unknown snapshot", "snap-0123456789abcdef0", 0, data, blockSize, good, "ResourceNotFoundException", ""},
		{"malformed snapshot id", "snap-xyz", 0, data, blockSize, good, "ValidationException", ebstypes.ValidationExceptionReasonInvalidSnapshotId},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.ebs.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
				SnapshotId: aws.String(tt.snap), BlockIndex: aws.Int32(tt.idx), BlockData: bytes.NewReader(tt.data),
				DataLength: aws.Int32(tt.length), Checksum: aws.String(tt.checksum), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
			})
			wantCode(t, err, tt.code)
			var ve *ebstypes.ValidationException
			if tt.reason != "" && (!errors.As(err, &ve) || ve.Reason != tt.reason) {
				t.Fatalf("error %v, want reason %s", err, tt.reason)
			}
		})
	}
	// a pending snapshot cannot be read
	_, err := l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id)})
	wantCode(t, err, "ValidationException")
	// the count and the aggregated checksum are checked
	_, err = l.ebs.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(2)})
	wantCode(t, err, "ValidationException")
	_, err = l.ebs.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(1),
		Checksum: aws.String(good), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256, ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear})
	wantCode(t, err, "ValidationException")
	agg := sha256.Sum256(sum[:])
	cs := must[*ebs.CompleteSnapshotOutput](t)(l.ebs.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(1),
		Checksum: aws.String(base64.StdEncoding.EncodeToString(agg[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256, ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}))
	if cs.Status != ebstypes.StatusPending {
		t.Fatalf("complete: status %s, want pending (completed a moment later)", cs.Status)
	}
	// no more blocks once completing
	err = l.putBlock(ctx, id, 5, data)
	wantCode(t, err, "ConflictException")
	l.settle("completed", func() bool { return l.snapshotState(ctx, id) == types.SnapshotStateCompleted })
	d := must[*ec2.DescribeSnapshotsOutput](t)(l.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}}))
	if *d.Snapshots[0].VolumeId != "vol-ffffffff" || len(d.Snapshots[0].Tags) != 1 {
		t.Fatalf("described %+v", d.Snapshots[0])
	}
	blocks := must[*ebs.ListSnapshotBlocksOutput](t)(l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id)}))
	if len(blocks.Blocks) != 1 || *blocks.Blocks[0].BlockIndex != 3 || *blocks.VolumeSize != 1 || *blocks.BlockSize != blockSize || blocks.ExpiryTime == nil {
		t.Fatalf("blocks %+v", blocks)
	}
	tok := blocks.Blocks[0].BlockToken
	get := must[*ebs.GetSnapshotBlockOutput](t)(l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(3), BlockToken: tok}))
	got, _ := io.ReadAll(get.BlockData)
	get.BlockData.Close()
	if !bytes.Equal(got, data) || *get.Checksum != good || get.ChecksumAlgorithm != ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256 || *get.DataLength != blockSize {
		t.Fatalf("get block: %d bytes, checksum %s", len(got), *get.Checksum)
	}
	// a token is good for its block only
	_, err = l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(4), BlockToken: tok})
	wantCode(t, err, "ValidationException")
	_, err = l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(3), BlockToken: aws.String((*tok)[:len(*tok)-8] + "AAAAAAA=")})
	wantCode(t, err, "ValidationException")
	// and it expires
	l.clock.Advance(8 * 24 * 3600e9)
	_, err = l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(3), BlockToken: tok})
	wantCode(t, err, "ValidationException")
}

// changedSet lists changed blocks: index to whether each token is present.
func (l *testLab) changedBlocks(first, second string) map[int32][2]bool {
	l.t.Helper()
	out := map[int32][2]bool{}
	var token *string
	for {
		in := &ebs.ListChangedBlocksInput{SecondSnapshotId: aws.String(second), NextToken: token, MaxResults: aws.Int32(100)}
		if first != "" {
			in.FirstSnapshotId = aws.String(first)
		}
		res, err := l.ebs.ListChangedBlocks(l.t.Context(), in)
		if err != nil {
			l.t.Fatalf("changed blocks %s..%s: %v", first, second, err)
		}
		for _, c := range res.ChangedBlocks {
			out[*c.BlockIndex] = [2]bool{c.FirstBlockToken != nil, c.SecondBlockToken != nil}
		}
		if token = res.NextToken; token == nil {
			return out
		}
	}
}

func TestEBSChangedBlocks(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	parent := l.directSnapshot(ctx, 1, "", map[int32][]byte{0: pattern(blockSize, 1), 1: pattern(blockSize, 2), 2: pattern(blockSize, 3), 7: pattern(blockSize, 4)})
	child := l.directSnapshot(ctx, 2, parent, map[int32][]byte{
		1:    pattern(blockSize, 22), // changed
		2:    pattern(blockSize, 3),  // written again, same content
		9:    pattern(blockSize, 5),  // new
		2047: pattern(blockSize, 6),  // new, in the second GiB
	})
	want := map[int32][2]bool{1: {true, true}, 9: {false, true}, 2047: {false, true}}
	got := l.changedBlocks(parent, child)
	if len(got) != len(want) {
		t.Fatalf("changed blocks %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("changed blocks %v, want %v", got, want)
		}
	}
	// the other way round: same blocks, tokens swapped
	back := l.changedBlocks(child, parent)
	if len(back) != 3 || back[1] != [2]bool{true, true} || back[9] != [2]bool{true, false} {
		t.Fatalf("reverse changed blocks %v", back)
	}
	// without a first snapshot, every block of the second
	all := l.changedBlocks("", child)
	var idx []int32
	for k := range all {
		idx = append(idx, k)
	}
	slices.Sort(idx)
	if !slices.Equal(idx, []int32{0, 1, 2, 7, 9, 2047}) {
		t.Fatalf("all blocks of the child %v", idx)
	}
	// tokens read the right side's data
	res := must[*ebs.ListChangedBlocksOutput](t)(l.ebs.ListChangedBlocks(ctx, &ebs.ListChangedBlocksInput{FirstSnapshotId: aws.String(parent), SecondSnapshotId: aws.String(child)}))
	for _, c := range res.ChangedBlocks {
		if *c.BlockIndex != 1 {
			continue
		}
		for _, side := range []struct {
			snap, tok string
			seed      byte
		}{{parent, *c.FirstBlockToken, 2}, {child, *c.SecondBlockToken, 22}} {
			out := must[*ebs.GetSnapshotBlockOutput](t)(l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(side.snap), BlockIndex: aws.Int32(1), BlockToken: aws.String(side.tok)}))
			b, _ := io.ReadAll(out.BlockData)
			out.BlockData.Close()
			if !bytes.Equal(b, pattern(blockSize, side.seed)) {
				t.Fatalf("block 1 of %s does not read back", side.snap)
			}
		}
		// the first snapshot's token does not read the second snapshot
		_, err := l.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(child), BlockIndex: aws.Int32(1), BlockToken: c.FirstBlockToken})
		wantCode(t, err, "ValidationException")
	}
	// snapshots of a volume made from the parent share its lineage
	v := must[*ec2.CreateVolumeOutput](t)(l.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1a"), SnapshotId: aws.String(parent)}))
	l.settle("volume", func() bool {
		d, err := l.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*v.VolumeId}})
		return err == nil && d.Volumes[0].State == types.VolumeStateAvailable
	})
	vs := must[*ec2.CreateSnapshotOutput](t)(l.ec2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: v.VolumeId}))
	l.settle("volume snapshot", func() bool { return l.snapshotState(ctx, *vs.SnapshotId) == types.SnapshotStateCompleted })
	if c := l.changedBlocks(parent, *vs.SnapshotId); len(c) != 0 {
		t.Fatalf("a copy of the parent differs from it: %v", c)
	}
	if c := l.changedBlocks(*vs.SnapshotId, child); len(c) != 3 {
		t.Fatalf("copy..child: %v", c)
	}
	// unrelated snapshots
	other := l.directSnapshot(ctx, 1, "", map[int32][]byte{0: pattern(blockSize, 1)})
	_, err := l.ebs.ListChangedBlocks(ctx, &ebs.ListChangedBlocksInput{FirstSnapshotId: aws.String(other), SecondSnapshotId: aws.String(child)})
	var ve *ebstypes.ValidationException
	if !errors.As(err, &ve) || ve.Reason != ebstypes.ValidationExceptionReasonUnrelatedSnapshots {
		t.Fatalf("unrelated snapshots: %v", err)
	}
	_, err = l.ebs.ListChangedBlocks(ctx, &ebs.ListChangedBlocksInput{FirstSnapshotId: aws.String("snap-0123456789abcdef0"), SecondSnapshotId: aws.String(child)})
	wantCode(t, err, "ResourceNotFoundException")
	// a smaller volume than the parent's is refused
	_, err = l.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1), ParentSnapshotId: aws.String(child)})
	if !errors.As(err, &ve) || ve.Reason != ebstypes.ValidationExceptionReasonInvalidVolumeSize {
		t.Fatalf("small child: %v", err)
	}
}

func TestEBSPagination(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 120 blocks")
	}
	l := newTestLab(t, "")
	ctx := t.Context()
	blocks := map[int32][]byte{}
	same := pattern(blockSize, 9)
	for i := range int32(120) {
		blocks[i*3] = same
	}
	id := l.directSnapshot(ctx, 1, "", blocks)
	var all []int32
	var token *string
	pages := 0
	for {
		res := must[*ebs.ListSnapshotBlocksOutput](t)(l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id), MaxResults: aws.Int32(100), NextToken: token}))
		pages++
		for _, b := range res.Blocks {
			all = append(all, *b.BlockIndex)
		}
		if token = res.NextToken; token == nil {
			break
		}
	}
	if pages != 2 || len(all) != 120 || all[119] != 357 {
		t.Fatalf("%d pages, %d blocks", pages, len(all))
	}
	res := must[*ebs.ListSnapshotBlocksOutput](t)(l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id), StartingBlockIndex: aws.Int32(300)}))
	if len(res.Blocks) != 20 || *res.Blocks[0].BlockIndex != 300 {
		t.Fatalf("from 300: %d blocks", len(res.Blocks))
	}
	_, err := l.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id), NextToken: aws.String("bm90IGEgdG9rZW4=")})
	var ve *ebstypes.ValidationException
	if !errors.As(err, &ve) || ve.Reason != ebstypes.ValidationExceptionReasonInvalidPageToken {
		t.Fatalf("bad token: %v", err)
	}
	// identical blocks are stored once
	l.s.blocks.mu.Lock()
	n := len(l.s.blocks.locs)
	var packed int64 // bytes in use (packs are preallocated beyond)
	for _, pk := range l.s.blocks.packs {
		packed += pk.end
	}
	l.s.blocks.mu.Unlock()
	if n != 1 || packed != blockSize {
		t.Fatalf("%d blocks stored, %d bytes in packs, for 120 identical blocks", n, packed)
	}
}
