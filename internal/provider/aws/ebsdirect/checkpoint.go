package ebsdirect

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/bits"

	"github.com/ferry-project/ferry/internal/errs"
)

// Checkpoint is how far an Upload got: the snapshot it writes and the blocks
// the EBS direct APIs have acknowledged. Upload hands a copy to
// UploadOptions.Save after acknowledged blocks; passing it back as
// UploadOptions.Resume continues the upload, sending only the blocks not
// acknowledged yet. It marshals to a small, versioned JSON document (a
// bitmap of one bit per block), for a job record.
type Checkpoint struct {
	// SnapshotID is the snapshot being written; "" before StartSnapshot
	// answered.
	SnapshotID string
	// ClientToken makes StartSnapshot idempotent: a retried or resumed
	// start with the same token gets the same snapshot.
	ClientToken string
	// VolumeGiB is the snapshot's volume size.
	VolumeGiB int64
	// Sent is the set of acknowledged blocks.
	Sent Bitmap
	// Completed is set once CompleteSnapshot was accepted.
	Completed bool
}

// Clone returns a deep copy.
func (c *Checkpoint) Clone() Checkpoint {
	cp := *c
	cp.Sent = c.Sent.Clone()
	return cp
}

const checkpointVersion = 1

type checkpointJSON struct {
	Version     int    `json:"v"`
	SnapshotID  string `json:"snapshot_id,omitempty"`
	ClientToken string `json:"client_token,omitempty"`
	VolumeGiB   int64  `json:"volume_gib"`
	Blocks      int64  `json:"blocks"`
	Sent        string `json:"sent,omitempty"` // base64 of the bitmap, bit i = block i, LSB first
	Completed   bool   `json:"completed,omitempty"`
}

// maxVolumeGiB is the largest EBS volume (64 TiB io2 Block Express).
const maxVolumeGiB = 64 << 10

// MarshalBinary encodes c as JSON.
func (c Checkpoint) MarshalBinary() ([]byte, error) {
	return json.Marshal(checkpointJSON{
		Version: checkpointVersion, SnapshotID: c.SnapshotID, ClientToken: c.ClientToken,
		VolumeGiB: c.VolumeGiB, Blocks: c.Sent.Len(), Sent: base64.StdEncoding.EncodeToString(c.Sent.bytes()),
		Completed: c.Completed,
	})
}

// UnmarshalBinary decodes what MarshalBinary wrote; anything else is an
// InvalidArgument error.
func (c *Checkpoint) UnmarshalBinary(b []byte) error {
	var j checkpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("ebs checkpoint: %v: %w", err, errs.ErrInvalidArgument)
	}
	if j.Version != checkpointVersion {
		return fmt.Errorf("ebs checkpoint: version %d, want %d: %w", j.Version, checkpointVersion, errs.ErrInvalidArgument)
	}
	if j.VolumeGiB < 0 || j.VolumeGiB > maxVolumeGiB {
		return fmt.Errorf("ebs checkpoint: volume size %d GiB out of range: %w", j.VolumeGiB, errs.ErrInvalidArgument)
	}
	if j.Blocks != j.VolumeGiB*blocksPerGiB {
		return fmt.Errorf("ebs checkpoint: %d blocks for a %d GiB volume: %w", j.Blocks, j.VolumeGiB, errs.ErrInvalidArgument)
	}
	raw, err := base64.StdEncoding.DecodeString(j.Sent)
	if err != nil {
		return fmt.Errorf("ebs checkpoint: block bitmap: %v: %w", err, errs.ErrInvalidArgument)
	}
	bm, err := bitmapFromBytes(raw, j.Blocks)
	if err != nil {
		return err
	}
	*c = Checkpoint{SnapshotID: j.SnapshotID, ClientToken: j.ClientToken, VolumeGiB: j.VolumeGiB, Sent: bm, Completed: j.Completed}
	return nil
}

// Bitmap is a set of block indices in [0, Len).
type Bitmap struct {
	n     int64
	words []uint64
}

// NewBitmap returns an empty set over n blocks.
func NewBitmap(n int64) Bitmap { return Bitmap{n: n, words: make([]uint64, (n+63)/64)} }

// Len is the number of blocks the set ranges over.
func (b Bitmap) Len() int64 { return b.n }

// Has reports whether block i is in the set.
func (b Bitmap) Has(i int64) bool {
	return i >= 0 && i < b.n && b.words[i/64]&(1<<(i%64)) != 0
}

// Set adds block i.
func (b Bitmap) Set(i int64) {
	if i >= 0 && i < b.n {
		b.words[i/64] |= 1 << (i % 64)
	}
}

// Count is the number of blocks in the set.
func (b Bitmap) Count() int64 {
	var n int
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// Clone returns a copy.
func (b Bitmap) Clone() Bitmap {
	return Bitmap{n: b.n, words: append([]uint64(nil), b.words...)}
}

func (b Bitmap) bytes() []byte {
	out := make([]byte, (b.n+7)/8)
	for i := range out {
		out[i] = byte(b.words[i/8] >> (8 * (i % 8)))
	}
	return out
}

func bitmapFromBytes(raw []byte, n int64) (Bitmap, error) {
	if int64(len(raw)) != (n+7)/8 {
		return Bitmap{}, fmt.Errorf("ebs checkpoint: block bitmap of %d bytes for %d blocks: %w", len(raw), n, errs.ErrInvalidArgument)
	}
	b := NewBitmap(n)
	for i, v := range raw {
		b.words[i/8] |= uint64(v) << (8 * (i % 8))
	}
	if n%8 != 0 && len(raw) > 0 && raw[len(raw)-1]>>(n%8) != 0 {
		return Bitmap{}, fmt.Errorf("ebs checkpoint: block bitmap marks blocks past %d: %w", n, errs.ErrInvalidArgument)
	}
	return b, nil
}
