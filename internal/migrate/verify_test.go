package migrate

import (
	"bytes"
	"crypto/sha256"
	"sync/atomic"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
)

// changed reads as base except for one byte of block bad (-1: none).
type changed struct {
	synth.Image
	bad int64
}

func (c changed) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Image.ReadAt(p, off)
	if at := c.bad*BlockSize + 100; c.bad >= 0 && at >= off && at < off+int64(n) {
		p[at-off] ^= 0xff
	}
	return n, err
}

// summed hands verify the hash of each block as it was read (as an EBS
// direct image does), so that verify need not hash it again.
type summed struct {
	changed
	asked *atomic.Int64
}

func (s summed) BlockSum(i int64) ([sha256.Size]byte, bool) {
	s.asked.Add(1)
	buf := make([]byte, BlockSize)
	s.changed.ReadAt(buf, i*BlockSize)
	return sha256.Sum256(buf), true
}

// TestVerify: the sums taken while reading the source against the target
// read back, with the target's own block hashes (BlockSum) where it has
// them: a clean copy verifies, a changed block is found and named.
func TestVerify(t *testing.T) {
	src := synth.Image{P: synth.MakePattern("verify", 8*BlockSize, 0.6, 5)}
	sums := newBlockSums()
	buf := make([]byte, BlockSize)
	for i := range int64(8) {
		src.ReadAt(buf, i*BlockSize)
		if !bytes.Equal(buf, make([]byte, BlockSize)) {
			sums.set(i, sha256.Sum256(buf))
		}
	}
	sums.complete = true
	for _, tt := range []struct {
		name    string
		bad     int64
		summing bool
	}{
		{"identical", -1, false},
		{"identical, target hashes", -1, true},
		{"block changed", firstData(t, src), false},
		{"block changed, target hashes", firstData(t, src), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tgt disk.Image = changed{src, tt.bad}
			var asked atomic.Int64
			if tt.summing {
				tgt = summed{changed{src, tt.bad}, &asked}
			}
			v, err := verify(t.Context(), "d", sums, nil, tgt, 4)
			if err != nil {
				t.Fatal(err)
			}
			if tt.summing && asked.Load() == 0 {
				t.Error("verify hashed the target's blocks itself: BlockSum not used")
			}
			if want := tt.bad < 0; v.OK != want || (tt.bad >= 0 && (v.Mismatches != 1 || v.FirstMismatch != tt.bad)) {
				t.Errorf("verification %+v, want OK %v (changed block %d)", v, want, tt.bad)
			}
		})
	}
}

func firstData(t *testing.T, img synth.Image) int64 {
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			return e.Off / BlockSize
		}
	}
	t.Fatal("no data")
	return -1
}
