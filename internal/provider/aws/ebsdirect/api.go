// Package ebsdirect moves disks into and out of EBS snapshots with the EBS
// direct APIs, block by block.
//
// Upload streams a disk.Image into a new snapshot: StartSnapshot, then
// PutSnapshotBlock for every 512 KiB block that holds data (blocks that are
// unallocated, zero extents or read as zeros are never sent), in parallel,
// each with its SHA-256, then CompleteSnapshot and DescribeSnapshots until
// the snapshot is completed. It is resumable block by block through a
// Checkpoint the caller persists.
//
// Open presents a snapshot as a random-access disk.Image: its extents come
// from ListSnapshotBlocks (or, against a base snapshot, ListChangedBlocks)
// and its bytes from GetSnapshotBlock, checksums verified.
package ebsdirect

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// BlockSize is the EBS direct APIs' block size.
const BlockSize = 512 << 10

// blocksPerGiB is how many blocks one GiB of volume holds.
const blocksPerGiB = (1 << 30) / BlockSize

// API is the part of the EBS direct APIs client that this package calls;
// *ebs.Client implements it.
type API interface {
	StartSnapshot(ctx context.Context, in *ebs.StartSnapshotInput, opts ...func(*ebs.Options)) (*ebs.StartSnapshotOutput, error)
	PutSnapshotBlock(ctx context.Context, in *ebs.PutSnapshotBlockInput, opts ...func(*ebs.Options)) (*ebs.PutSnapshotBlockOutput, error)
	CompleteSnapshot(ctx context.Context, in *ebs.CompleteSnapshotInput, opts ...func(*ebs.Options)) (*ebs.CompleteSnapshotOutput, error)
	ListSnapshotBlocks(ctx context.Context, in *ebs.ListSnapshotBlocksInput, opts ...func(*ebs.Options)) (*ebs.ListSnapshotBlocksOutput, error)
	ListChangedBlocks(ctx context.Context, in *ebs.ListChangedBlocksInput, opts ...func(*ebs.Options)) (*ebs.ListChangedBlocksOutput, error)
	GetSnapshotBlock(ctx context.Context, in *ebs.GetSnapshotBlockInput, opts ...func(*ebs.Options)) (*ebs.GetSnapshotBlockOutput, error)
}

// EC2 is the part of the EC2 client Upload uses to follow and remove the
// snapshot; *ec2.Client implements it.
type EC2 interface {
	DescribeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput, opts ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error)
	DeleteSnapshot(ctx context.Context, in *ec2.DeleteSnapshotInput, opts ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error)
}

var (
	_ API = (*ebs.Client)(nil)
	_ EC2 = (*ec2.Client)(nil)
)

// noSDKRetry turns the SDK's own retries off for the calls this package
// retries itself, so that one policy decides.
func noSDKRetry(o *ebs.Options) { o.RetryMaxAttempts = 1 }
