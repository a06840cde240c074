// Package awslab is an EC2-compatible lab region: EC2's Query API, the EBS
// direct APIs and S3 on one endpoint over real, persistent state, so that
// ferry's AWS driver can be exercised where no AWS endpoint is reachable
// and no emulator serves VM import/export or EBS. It follows AWS's
// documented wire formats and behaviour, never a client's convenience; the
// aws-sdk-go-v2 clients and the AWS CLI talk to it unchanged (BaseEndpoint
// or --endpoint-url, path-style S3).
//
//	lab, err := awslab.New(ctx, awslab.Options{Dir: dir, AccessKey: ak, SecretKey: sk})
//	srv := httptest.NewServer(lab.Handler())
//	defer lab.Close()
//
// `ferry lab aws --data DIR --listen ADDR` runs it (Run).
//
// # Authentication and routing
//
// Every request must carry a Signature Version 4 signature (Authorization
// header, or a presigned query for S3) made with the lab's one key pair
// (Options.AccessKey and SecretKey; stored in Dir/credentials.json, mode
// 0600, and generated when none is given or stored) for the lab's region.
// The canonical request, string to sign and signing key are rebuilt and
// compared in constant time; the request time must be within 15 minutes of
// the wall clock. The payload hash is x-amz-content-sha256 when sent
// (S3 requires it; UNSIGNED-PAYLOAD is accepted for S3 and for
// PutSnapshotBlock, whose blocks carry their own checksums), otherwise the
// lab hashes the body; a body that does not match its signed hash is
// refused. aws-chunked bodies are decoded: STREAMING-AWS4-HMAC-SHA256-
// PAYLOAD[-TRAILER] with every chunk signature (and the trailer's) checked,
// STREAMING-UNSIGNED-PAYLOAD-TRAILER with its trailing checksum checked.
//
// The credential scope's service routes the request: ec2 (POST / with
// Action=...), ebs (/snapshots...), s3 (path-style /bucket/key). A request
// without a usable signature is refused in the format of the service its
// shape suggests. Refusals are each service's own: EC2 AuthFailure (HTTP
// 401) for an unknown key or a bad signature, MissingAuthenticationToken,
// RequestExpired, IncompleteSignature; S3 InvalidAccessKeyId,
// SignatureDoesNotMatch, AccessDenied, RequestTimeTooSkewed,
// AuthorizationHeaderMalformed, XAmzContentSHA256Mismatch; EBS (JSON, type
// in x-amzn-ErrorType) UnrecognizedClientException, InvalidSignatureException,
// MissingAuthenticationTokenException, IncompleteSignatureException.
//
// # EC2
//
// Query protocol, API version 2016-11-15: a form (POST body or GET query),
// responses in the namespace http://ec2.amazonaws.com/doc/2016-11-15/ with
// requestId, errors as <Response><Errors><Error><Code/><Message/></Error>
// </Errors><RequestID/></Response> with HTTP 400 (401 for AuthFailure, 412
// for DryRunOperation, 500 InternalError). An unknown Action is
// InvalidAction; DryRun=true answers DryRunOperation. Served actions:
// DescribeInstances, RunInstances, StartInstances, StopInstances,
// RebootInstances, TerminateInstances, GetConsoleOutput, DescribeImages,
// RegisterImage, DeregisterImage, DescribeSnapshots, CreateSnapshot,
// CreateSnapshots, DeleteSnapshot, DescribeVolumes, CreateVolume,
// DeleteVolume, AttachVolume, DetachVolume, DescribeSubnets, DescribeVpcs,
// DescribeSecurityGroups, DescribeAvailabilityZones, DescribeRegions,
// CreateTags, DeleteTags, DescribeTags, ImportSnapshot, ImportImage,
// DescribeImportSnapshotTasks, DescribeImportImageTasks, CancelImportTask,
// ExportImage, DescribeExportImageTasks, CreateInstanceExportTask,
// DescribeExportTasks, CancelExportTask.
//
// IDs have AWS's shape (i-0 and 16 more hex digits, ami-, snap-, vol-,
// import-snap-, import-ami-, export-ami-, export-i-, r-). A malformed ID is
// the type's .Malformed code, an unknown one its NotFound code
// (InvalidInstanceID.NotFound, InvalidAMIID.NotFound,
// InvalidSnapshot.NotFound, InvalidVolume.NotFound, ...), a wrong state
// IncorrectInstanceState or IncorrectState. Describe calls take IDs,
// Filter.N (the documented names of each type, tag:KEY, tag-key,
// tag-value; * and ? wildcards) and MaxResults/NextToken where EC2 pages.
// Create calls take TagSpecification.N. A new region has an account ID,
// the default VPC 172.31.0.0/16 with one default subnet per availability
// zone (REGIONa, b, c) and its default security group.
//
// # States and the clock
//
// Transitional states last at least Options.Delay (2 s by default) on
// Options.Clock, and as long as the real work behind them: instances
// pending → running (its volumes filled), stopping → stopped and
// shutting-down → terminated (the guest gone); volumes creating →
// available or in-use; attachments attaching → attached, detaching → gone;
// snapshots pending → completed (the blocks stored); images pending →
// available (its snapshots completed); import and export tasks active →
// completed, or, on failure, deleting → deleted with a "ClientError: ..."
// StatusMessage, progress and status messages along the way. States are
// moved when a request arrives, so a test that moves its clock sees them
// move at exactly the delay. A terminated instance disappears after an
// hour; finished tasks after seven days. An EBS direct snapshot not
// completed within its Timeout goes to error.
//
// # Disks: blocks, volumes, imports, exports
//
// Snapshot blocks (512 KiB) live in a content-addressed store, each
// distinct block once, appended to pack files blocks/pack-N whose index
// blocks/packs.idx records (hash, pack, offset), the block written before
// its record (labs made before read their blocks/<xx>/<sha256> files
// still); a snapshot is an index file snapshots/<id>.idx of (block index,
// hash) pairs. Blocks no index refers to are swept after a snapshot is
// deleted: a pack left less than half live is compacted. On Linux packs
// are read and written with direct I/O (O_DIRECT; ordinary I/O where the
// file system refuses it) and grow in preallocated 64 MiB steps, so that
// gigabytes of blocks written once do not fill the page cache of the
// machine the lab shares with ferry and its guests, and concurrent block
// writes do not serialise on extending the file. Volumes are sparse raw
// files volumes/<id>.raw, filled from their snapshot's blocks;
// CreateSnapshot stores a volume's
// non-zero blocks. Lineage follows AWS: snapshots of one volume, of
// volumes made from a snapshot, and EBS direct children of a parent share
// one, and ListChangedBlocks compares only snapshots of one lineage.
//
// ImportSnapshot and ImportImage read the S3 object (UserBucket, or Url as
// s3://bucket/key or a path-style URL of this endpoint) through ferry's
// disk engine: RAW as it is; VHD (fixed, dynamic) and VHDX; VMDK
// stream-optimized only, as VM Import requires; OVA (ImportImage) disk by
// disk. The declared Format must match what the object holds; a damaged or
// unsupported image fails the task. Each disk becomes a snapshot of its
// size rounded up to a GiB; an image import registers the AMI (named
// after the task, root device /dev/sda1). A DiskContainer.SnapshotId is
// used as it is. ExportImage writes the AMI's root snapshot, and
// CreateInstanceExportTask an instance's root volume (every volume in an
// OVA), as a stream-optimized VMDK, a dynamic VHD or raw, to
// <prefix><task ID>.<vmdk|vhd|raw|ova> in the bucket.
//
// # EBS direct APIs
//
// StartSnapshot (POST /snapshots; VolumeSize, ParentSnapshotId, Tags,
// Description, ClientToken, Timeout), PutSnapshotBlock (PUT
// /snapshots/{id}/blocks/{index}; x-amz-Data-Length must be 524288, the
// SHA256 x-amz-Checksum must match the data), CompleteSnapshot (POST
// /snapshots/completion/{id}; x-amz-ChangedBlocksCount must equal the
// blocks written, and an aggregated LINEAR checksum, the SHA-256 of the
// written blocks' SHA-256 digests in index order, must match; the answer
// is pending, completed a moment later), ListSnapshotBlocks,
// ListChangedBlocks (blocks whose content differs between two snapshots of
// a lineage, with the token of each side that has the block; every block
// of the second without a first) and GetSnapshotBlock (data with
// x-amz-Checksum, x-amz-Checksum-Algorithm and x-amz-Data-Length). Only
// completed snapshots are read. Block tokens are HMACs over snapshot,
// index, content and expiry (seven days), checked on GetSnapshotBlock.
// Errors are JSON with Message and Reason: ValidationException,
// ResourceNotFoundException, ConflictException.
//
// # S3
//
// Path-style: ListBuckets, CreateBucket (a LocationConstraint must be the
// lab's region), HeadBucket, DeleteBucket, GetBucketLocation,
// ListObjectsV2 and ListObjects (prefix, delimiter, pages,
// encoding-type=url), PutObject, GetObject (Range, partNumber, If-Match,
// If-None-Match), HeadObject, DeleteObject, DeleteObjects, object tagging
// (x-amz-tagging and ?tagging), CreateMultipartUpload, UploadPart,
// ListParts, ListMultipartUploads, CompleteMultipartUpload (ETags checked,
// parts ascending, every part but the last at least 5 MiB, else
// EntityTooSmall; the ETag is the MD5 of the parts' MD5s and "-N") and
// AbortMultipartUpload. Content-MD5 and the flexible checksums (CRC32,
// CRC32C, CRC64NVME, SHA1, SHA256; header or trailer) are checked and
// returned with x-amz-checksum-mode: ENABLED. Errors are S3's XML
// (NoSuchBucket, NoSuchKey, NoSuchUpload, InvalidPart, InvalidPartOrder,
// EntityTooSmall, InvalidRange, BadDigest, BucketNotEmpty, ...). Other
// subresources (versioning, ACLs, policies) and CopyObject answer
// NotImplemented. Objects are files under s3/<bucket>/data, their
// metadata in s3/<bucket>/objects/; a new write gets a new data file, so
// readers of the old content are not disturbed.
//
// # State
//
// Dir/state.json holds every EC2 and EBS resource, written to a temporary
// file, synced and renamed after each change; S3 metadata and upload
// parts are files of their own, written the same way. After a restart,
// conversions, copies and volume fills that were under way start again,
// EBS direct snapshots being written take more blocks, and running
// instances' guests boot again.
//
// # Instances and QEMU
//
// With Options.QEMU set (qemu-system-x86_64; FindQEMU), an instance whose
// volumes are filled boots under TCG: -machine pc,accel=tcg, memory from
// its instance type (at most 1 GiB), its volumes' raw files as NVMe drives
// with the root volume first, -no-reboot, the serial console appended to
// instances/<id>/console.log and QMP on a socket. StopInstances presses the
// ACPI power button and kills the guest after Options.ShutdownTimeout
// (Force kills at once), TerminateInstances kills it, RebootInstances
// resets it; a guest that powers off by itself stops its instance
// (Client.InstanceInitiatedShutdown). GetConsoleOutput returns the last
// 64 KiB of the console log, base64, as EC2 does. Without QEMU only the
// states move and the lab notes each step in the console log.
package awslab
