package ebsdirect

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"iter"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

const (
	KiB = synth.KiB
	MiB = synth.MiB
	GiB = synth.GiB
)

var fastRetry = awserr.Backoff{Attempts: 5, Base: time.Millisecond, Max: 5 * time.Millisecond}

// extImage is an Image with given extents over pattern content.
type extImage struct {
	synth.Image
	exts []disk.Extent
}

func (e extImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		for _, x := range e.exts {
			if !yield(x, nil) {
				return
			}
		}
	}
}

func TestPlan(t *testing.T) {
	B := int64(BlockSize)
	tests := []struct {
		name string
		size int64
		exts []disk.Extent
		want []Run
	}{
		{"empty", 0, nil, nil},
		{"all unallocated", 4 * B, []disk.Extent{{Off: 0, Len: 4 * B, Kind: disk.Unallocated}}, nil},
		{"zero extents skipped", 4 * B, []disk.Extent{{Off: 0, Len: 2 * B, Kind: disk.Zero}, {Off: 2 * B, Len: 2 * B, Kind: disk.Unallocated}}, nil},
		{"one sector", 4 * B, []disk.Extent{{Off: 0, Len: B + 512, Kind: disk.Unallocated}, {Off: B + 512, Len: 512, Kind: disk.Data}, {Off: B + 1024, Len: 3*B - 1024, Kind: disk.Unallocated}}, []Run{{1, 1}}},
		{"straddling", 4 * B, []disk.Extent{{Off: 0, Len: B - 4096, Kind: disk.Unallocated}, {Off: B - 4096, Len: 8192, Kind: disk.Data}, {Off: B + 4096, Len: 3*B - 4096, Kind: disk.Unallocated}}, []Run{{0, 2}}},
		{"merged neighbours", 8 * B, []disk.Extent{{Off: 0, Len: 100, Kind: disk.Data}, {Off: 100, Len: B, Kind: disk.Zero}, {Off: B + 100, Len: 100, Kind: disk.Data}, {Off: B + 200, Len: 2 * B, Kind: disk.Unallocated}, {Off: 3*B + 200, Len: 5, Kind: disk.Data}, {Off: 3*B + 205, Len: 5*B - 205, Kind: disk.Unallocated}}, []Run{{0, 2}, {3, 1}}},
		{"gap between runs", 8 * B, []disk.Extent{{Off: 0, Len: B, Kind: disk.Data}, {Off: B, Len: 5 * B, Kind: disk.Unallocated}, {Off: 6 * B, Len: 2 * B, Kind: disk.Data}}, []Run{{0, 1}, {6, 2}}},
		{"unaligned tail", 3*B + 512, []disk.Extent{{Off: 0, Len: 3 * B, Kind: disk.Unallocated}, {Off: 3 * B, Len: 512, Kind: disk.Data}}, []Run{{3, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := extImage{Image: synth.Image{P: &synth.Pattern{Size: tt.size}}, exts: tt.exts}
			got, err := Plan(t.Context(), img)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Plan = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVolumeGiB(t *testing.T) {
	for _, tt := range []struct{ size, want int64 }{{0, 1}, {1, 1}, {GiB, 1}, {GiB + 1, 2}, {3 * GiB, 3}, {5*GiB + 512*KiB, 6}} {
		if got := VolumeGiB(tt.size); got != tt.want {
			t.Errorf("VolumeGiB(%d) = %d, want %d", tt.size, got, tt.want)
		}
	}
}

// nonZeroBlocks counts the 512 KiB blocks of pt holding a non-zero byte.
func nonZeroBlocks(t testing.TB, pt *synth.Pattern) int64 {
	t.Helper()
	runs, err := Plan(context.Background(), synth.Image{P: pt})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, BlockSize)
	var n int64
	for _, r := range runs {
		for i := r.First; i < r.End(); i++ {
			clear(buf)
			end := min((i+1)*BlockSize, pt.Size)
			pt.Fill(i*BlockSize, buf[:end-i*BlockSize])
			if !bytes.Equal(buf, zeroBlock) {
				n++
			}
		}
	}
	return n
}

func compareWith(t *testing.T, f *fakeEBS, id string, pt *synth.Pattern) *Image {
	t.Helper()
	img, err := Open(t.Context(), f, id, &OpenOptions{EC2: f, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	if img.Size() != VolumeGiB(pt.Size)<<30 {
		t.Fatalf("size %d, want %d", img.Size(), VolumeGiB(pt.Size)<<30)
	}
	res, err := disk.Compare(t.Context(), synth.Image{P: pt}, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Identical {
		t.Fatalf("snapshot %s differs from %s at %d", id, pt.Name, res.Offset)
	}
	return img
}

func TestUploadRoundTrip(t *testing.T) {
	pts := []*synth.Pattern{
		{Name: "no-data", Size: 3 * MiB},
		{Name: "unaligned", Size: 5*MiB + 3*512, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 4096}, {Off: 3*MiB - 512, Len: 1024}, {Off: 5*MiB + 512, Len: 1024}}},
		{Name: "mixed", Size: 37 * MiB, Seed: 2, Data: synth.Mixed(37*MiB, 2)},
		synth.MakePattern("sparse-1g", GiB+3*MiB, 0.05, 5),
	}
	for _, pt := range pts {
		t.Run(pt.Name, func(t *testing.T) {
			f := newFakeEBS()
			var ctr progress.Counter
			res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, PollEvery: time.Millisecond, Tags: map[string]string{"ferry:managed": "true"}, Progress: &ctr})
			if err != nil {
				t.Fatal(err)
			}
			if st := ctr.Snapshot(); st.Total != pt.Size || st.Done != pt.Size {
				t.Fatalf("progress %+v, want %d of %d", st, pt.Size, pt.Size)
			}
			want := nonZeroBlocks(t, pt)
			if res.BlocksSent != want || f.puts.Load() != want || res.BytesSent != want*BlockSize || res.Changed != want {
				t.Fatalf("sent %d blocks (%d bytes), server got %d, changed %d; want %d non-zero blocks", res.BlocksSent, res.BytesSent, f.puts.Load(), res.Changed, want)
			}
			if res.VolumeGiB != VolumeGiB(pt.Size) {
				t.Fatalf("volume %d GiB", res.VolumeGiB)
			}
			if got := f.snaps[res.SnapshotID].tags; len(got) != 1 || *got[0].Key != "ferry:managed" {
				t.Fatalf("tags %v", got)
			}
			img := compareWith(t, f, res.SnapshotID, pt)
			var data int64
			for e, err := range img.Extents(t.Context(), 0, img.Size()) {
				if err != nil {
					t.Fatal(err)
				}
				if e.Kind == disk.Data {
					data += e.Len
				}
			}
			if data != want*BlockSize {
				t.Fatalf("image reports %d data bytes, want %d", data, want*BlockSize)
			}
		})
	}
}

func TestUploadRetriesThrottling(t *testing.T) {
	f := newFakeEBS()
	f.failPuts.Store(3)
	pt := &synth.Pattern{Name: "two", Size: 4 * MiB, Seed: 3, Data: []disk.Extent{{Off: 0, Len: MiB}}}
	res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Workers: 1, Retry: fastRetry, PollEvery: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlocksSent != 2 {
		t.Fatalf("sent %d", res.BlocksSent)
	}
	compareWith(t, f, res.SnapshotID, pt)
}

func TestUploadFailureRemovesSnapshot(t *testing.T) {
	f := newFakeEBS()
	f.putHook = func(i int32) error {
		if i == 1 {
			return apiErr("AccessDeniedException", "no")
		}
		return nil
	}
	pt := &synth.Pattern{Name: "two", Size: 4 * MiB, Seed: 3, Data: []disk.Extent{{Off: 0, Len: MiB}}}
	_, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry})
	if !errs.Is(err, errs.PermissionDenied) {
		t.Fatalf("err = %v, want permission denied", err)
	}
	if len(f.snaps) != 0 {
		t.Fatalf("snapshot left behind: %v", f.snaps)
	}
}

func TestUploadResume(t *testing.T) {
	pt := synth.MakePattern("resume", 300*MiB, 0.4, 9)
	want := nonZeroBlocks(t, pt)
	for _, after := range []int{1, 7, 60} {
		t.Run("", func(t *testing.T) {
			f := newFakeEBS()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var mu sync.Mutex
			var last Checkpoint
			acked := 0
			save := func(_ context.Context, cp Checkpoint) error {
				mu.Lock()
				defer mu.Unlock()
				if cp.Sent.Count() < last.Sent.Count() {
					t.Errorf("checkpoint went back from %d to %d blocks", last.Sent.Count(), cp.Sent.Count())
				}
				last = cp
				if cp.Sent.Count() > 0 {
					acked++
				}
				if acked == after {
					cancel()
				}
				return nil
			}
			res1, err := Upload(ctx, f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, Save: save, PollEvery: time.Millisecond})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("first run: err = %v, want canceled", err)
			}
			if res1.SnapshotID == "" || f.snaps[res1.SnapshotID] == nil {
				t.Fatal("first run removed its snapshot although a checkpoint was saved")
			}
			// Through its binary form, as a job would store it.
			b, err := last.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var cp Checkpoint
			if err := cp.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			done := cp.Sent.Count()
			if done < int64(after) || done >= want {
				t.Fatalf("checkpoint has %d of %d blocks after cancelling at %d", done, want, after)
			}
			before := f.puts.Load()
			res2, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, Resume: &cp, PollEvery: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if res2.SnapshotID != res1.SnapshotID {
				t.Fatalf("resume wrote %s, not %s", res2.SnapshotID, res1.SnapshotID)
			}
			if res2.BlocksSent != want-done || f.puts.Load()-before != want-done {
				t.Fatalf("resume sent %d blocks (server: %d), want the %d missing", res2.BlocksSent, f.puts.Load()-before, want-done)
			}
			if res2.Resumed != done || res2.Changed != want {
				t.Fatalf("resumed %d changed %d", res2.Resumed, res2.Changed)
			}
			compareWith(t, f, res2.SnapshotID, pt)
		})
	}
}

func TestResumeCompletedIsNoop(t *testing.T) {
	f := newFakeEBS()
	pt := &synth.Pattern{Name: "small", Size: 2 * MiB, Seed: 1, Data: []disk.Extent{{Off: 0, Len: MiB}}}
	var last Checkpoint
	res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, Save: func(_ context.Context, cp Checkpoint) error { last = cp; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if !last.Completed {
		t.Fatal("last checkpoint not completed")
	}
	before := f.puts.Load()
	res2, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, Resume: &last})
	if err != nil || res2.SnapshotID != res.SnapshotID || f.puts.Load() != before {
		t.Fatalf("resume of a completed upload: %v %+v, %d puts", err, res2, f.puts.Load()-before)
	}
}

func TestResumeLostSnapshotStartsOver(t *testing.T) {
	f := newFakeEBS()
	pt := &synth.Pattern{Name: "small", Size: 2 * MiB, Seed: 1, Data: []disk.Extent{{Off: 0, Len: MiB}}}
	cp := Checkpoint{SnapshotID: "snap-0000000000000dead", ClientToken: "t", VolumeGiB: 1, Sent: NewBitmap(blocksPerGiB)}
	cp.Sent.Set(0)
	res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry, Resume: &cp})
	if err != nil {
		t.Fatal(err)
	}
	if res.SnapshotID == cp.SnapshotID || res.BlocksSent != 2 {
		t.Fatalf("%+v", res)
	}
	compareWith(t, f, res.SnapshotID, pt)
}

func TestChangedBlocks(t *testing.T) {
	f := newFakeEBS()
	base := &synth.Pattern{Name: "base", Size: 8 * MiB, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 3 * MiB}, {Off: 6 * MiB, Len: MiB}}}
	// Same seed: blocks 0-3 identical; block 4-5 rewritten differently
	// by a new range, block 12-13 gone, block 14 new.
	next := &synth.Pattern{Name: "next", Size: 8 * MiB, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 2 * MiB}, {Off: 2*MiB + 4096, Len: MiB - 4096}, {Off: 7 * MiB, Len: 512 * KiB}}}
	r1, err := Upload(t.Context(), f, f, synth.Image{P: base}, &UploadOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Upload(t.Context(), f, f, synth.Image{P: next}, &UploadOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(t.Context(), f, r2.SnapshotID, &OpenOptions{Base: r1.SnapshotID, EC2: f, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var got []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != disk.Unallocated {
			got = append(got, e)
		}
	}
	// Expected: block by block, what differs between the two disks.
	var want []disk.Extent
	a, b := make([]byte, BlockSize), make([]byte, BlockSize)
	for i := int64(0); i < 16; i++ {
		base.Fill(i*BlockSize, a)
		next.Fill(i*BlockSize, b)
		if bytes.Equal(a, b) {
			continue
		}
		k := disk.Data
		if bytes.Equal(b, zeroBlock) {
			k = disk.Zero
		}
		e := disk.Extent{Off: i * BlockSize, Len: BlockSize, Kind: k}
		if n := len(want); n > 0 && want[n-1].End() == e.Off && want[n-1].Kind == k {
			want[n-1].Len += BlockSize
			continue
		}
		want = append(want, e)
	}
	if len(want) < 2 {
		t.Fatalf("test patterns differ too little: %v", want)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("changed extents %v, want %v", got, want)
	}
	// Changed blocks read the new data.
	var first disk.Extent
	for _, e := range want {
		if e.Kind == disk.Data {
			first = e
			break
		}
	}
	buf := make([]byte, first.Len)
	if _, err := img.ReadAt(buf, first.Off); err != nil {
		t.Fatal(err)
	}
	exp := make([]byte, len(buf))
	next.Fill(first.Off, exp)
	if !bytes.Equal(buf, exp) {
		t.Fatal("changed block data differs")
	}
}

func TestOpenErrors(t *testing.T) {
	f := newFakeEBS()
	f.snaps["snap-pending"] = &fakeSnap{id: "snap-pending", gib: 1, state: "pending", blocks: map[int32][]byte{}}
	tests := []struct {
		name string
		id   string
		ec2  EC2
		want errs.Code
	}{
		{"unknown", "snap-0123456789abcdef0", f, errs.NotFound},
		{"unknown without ec2", "snap-0123456789abcdef0", nil, errs.NotFound},
		{"pending", "snap-pending", f, errs.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(t.Context(), f, tt.id, &OpenOptions{EC2: tt.ec2, Retry: fastRetry})
			if errs.CodeOf(err) != tt.want {
				t.Fatalf("err = %v (%v), want %v", err, errs.CodeOf(err), tt.want)
			}
		})
	}
}

func TestConcurrentReads(t *testing.T) {
	f := newFakeEBS()
	pt := synth.MakePattern("conc", 64*MiB, 0.5, 3)
	res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(t.Context(), f, res.SnapshotID, &OpenOptions{CacheBlocks: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			buf := make([]byte, 300*KiB)
			exp := make([]byte, len(buf))
			for off := int64(w) * 77 * KiB; off < pt.Size; off += 3 * MiB {
				n, err := img.ReadAt(buf, off)
				if err != nil && n != len(buf) {
					t.Error(err)
					return
				}
				pt.Fill(off, exp[:n])
				if !bytes.Equal(buf[:n], exp[:n]) {
					t.Errorf("read at %d differs", off)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestBlockSum: a block read whole and checked against the service's
// checksum has its SHA-256 at hand; one not read has none.
func TestBlockSum(t *testing.T) {
	f := newFakeEBS()
	pt := synth.MakePattern("sum", 8*MiB, 1, 4)
	res, err := Upload(t.Context(), f, f, synth.Image{P: pt}, &UploadOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(t.Context(), f, res.SnapshotID, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, BlockSize)
	if _, err := img.ReadAt(buf, 3*BlockSize); err != nil {
		t.Fatal(err)
	}
	if sum, ok := img.BlockSum(3); !ok || sum != sha256.Sum256(buf) {
		t.Errorf("block 3 read: sum %x, %v; want the data's", sum[:4], ok)
	}
	if _, ok := img.BlockSum(5); ok {
		t.Error("block 5, never read, has a sum")
	}
}
