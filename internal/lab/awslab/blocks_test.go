package awslab

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/errs"
)

func testBlock(b byte) []byte { return bytes.Repeat([]byte{b}, blockSize) }

// TestBlockStore: blocks survive a reopen, identical blocks put at once
// are stored once, a sweep drops what no index holds and compacts a pack
// left mostly dead, and blocks of the older file-per-block layout are
// still read and swept.
func TestBlockStore(t *testing.T) {
	dir := t.TempDir()
	st := &blockStore{dir: dir}
	var hs []hash
	for _, c := range []byte{1, 2, 3} {
		h, err := st.put(testBlock(c))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := st.put(testBlock(9)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(st.locs); n != 4 {
		t.Fatalf("%d blocks stored, want 4", n)
	}
	st.close()

	// older layout: one file per block
	old := testBlock(7)
	oh := hash(sha256.Sum256(old))
	os.MkdirAll(filepath.Dir(st.path(oh)), 0o755)
	if err := os.WriteFile(st.path(oh), old, 0o644); err != nil {
		t.Fatal(err)
	}

	st = &blockStore{dir: dir}
	defer st.close()
	buf := make([]byte, blockSize)
	for i, h := range append(hs, oh) {
		if err := st.read(h, buf); err != nil {
			t.Fatalf("block %d after a reopen: %v", i, err)
		}
	}
	// Roll a second pack so that the first is not the one written now.
	st.mu.Lock()
	st.packs[st.cur].end = packSize
	st.mu.Unlock()
	if _, err := st.put(testBlock(5)); err != nil {
		t.Fatal(err)
	}
	n, err := st.sweep(map[hash]bool{hs[0]: true})
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 { // blocks 2, 3, 9, 5 and the old-layout 7
		t.Errorf("swept %d blocks, want 5", n)
	}
	if err := st.read(hs[0], buf); err != nil || !bytes.Equal(buf, testBlock(1)) {
		t.Fatalf("live block after the sweep: %v", err)
	}
	for _, h := range []hash{hs[1], oh} {
		if err := st.read(h, buf); err == nil {
			t.Errorf("swept block %x still reads", h[:4])
		}
	}
	if _, err := os.Stat(st.packPath(0)); !os.IsNotExist(err) {
		t.Errorf("the first pack, one live block in four, was not compacted away: %v", err)
	}
	st.close()
	st = &blockStore{dir: dir}
	if err := st.read(hs[0], buf); err != nil {
		t.Fatalf("live block after the sweep and a reopen: %v", err)
	}
	// a block whose content was damaged on disk is data loss
	l := st.locs[hs[0]]
	f, err := os.OpenFile(st.packPath(l.pack), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, l.off+10)
	f.Close()
	if err := st.read(hs[0], buf); !errs.Is(err, errs.DataLoss) {
		t.Errorf("damaged block: %v, want data loss", err)
	}
}

// TestBlockStoreCrash: a store left without close (its packs preallocated
// beyond their last block, a block written but not recorded) is opened
// again: recorded blocks read, the unrecorded one is written over, and
// nothing lands in the preallocated space out of order.
func TestBlockStoreCrash(t *testing.T) {
	dir := t.TempDir()
	st := &blockStore{dir: dir}
	h1, err := st.put(testBlock(1))
	if err != nil {
		t.Fatal(err)
	}
	// a block written to the pack whose index record never made it
	st.mu.Lock()
	l, pk, err := st.placeLocked()
	st.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := pk.writeAt(st, testBlock(2), l.off); err != nil {
		t.Fatal(err)
	}
	t.Logf("pack 0: direct I/O %v, %d bytes preallocated, %d in use", pk.direct, pk.alloc, pk.end)
	if pk.alloc <= pk.end {
		t.Errorf("pack 0 holds %d bytes, in use %d: not preallocated", pk.alloc, pk.end)
	}

	re := &blockStore{dir: dir} // the first is never closed: a crash
	defer re.close()
	h3, err := re.put(testBlock(3))
	if err != nil {
		t.Fatal(err)
	}
	if got := re.locs[h3]; got != l {
		t.Errorf("block after the crash went to %+v, want %+v (over the unrecorded block)", got, l)
	}
	buf := make([]byte, blockSize)
	for i, c := range []struct {
		h hash
		b byte
	}{{h1, 1}, {h3, 3}} {
		if err := re.read(c.h, buf); err != nil || !bytes.Equal(buf, testBlock(c.b)) {
			t.Errorf("block %d after the crash: %v", i, err)
		}
	}
	if _, ok := re.locs[hash(sha256.Sum256(testBlock(2)))]; ok {
		t.Error("the unrecorded block is in the index")
	}
	re.close()
	if fi, err := os.Stat(re.packPath(0)); err != nil {
		t.Error(err)
	} else if fi.Size() != 2*blockSize {
		t.Errorf("pack 0 after close is %d bytes, want the %d in use", fi.Size(), 2*blockSize)
	}
}

// TestBlockStoreUnaligned: blocks given and read in buffers that are not
// aligned for direct I/O go through an aligned copy.
func TestBlockStoreUnaligned(t *testing.T) {
	st := &blockStore{dir: t.TempDir()}
	defer st.close()
	in := make([]byte, blockSize+1)[1:]
	copy(in, testBlock(6))
	h, err := st.put(in)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, blockSize+3)[3:]
	if err := st.read(h, out); err != nil || !bytes.Equal(out, testBlock(6)) {
		t.Fatalf("read back: %v", err)
	}
	t.Logf("direct I/O: %v", st.packs[0].direct)
}

// TestBlockStoreSweepUnrecorded: a pack that holds only blocks never
// recorded (a crash) is removed by a sweep.
func TestBlockStoreSweepUnrecorded(t *testing.T) {
	dir := t.TempDir()
	st := &blockStore{dir: dir}
	st.mu.Lock()
	if err := st.openLocked(); err != nil {
		t.Fatal(err)
	}
	l, pk, err := st.placeLocked()
	st.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := pk.writeAt(st, testBlock(4), l.off); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	pk.end = packSize // the next block goes to a new pack
	st.mu.Unlock()
	if _, err := st.put(testBlock(5)); err != nil {
		t.Fatal(err)
	}
	re := &blockStore{dir: dir} // the first is never closed: a crash
	defer re.close()
	if _, err := re.sweep(map[hash]bool{hash(sha256.Sum256(testBlock(5))): true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(re.packPath(0)); !os.IsNotExist(err) {
		t.Errorf("the pack with no recorded block is still there: %v", err)
	}
	buf := make([]byte, blockSize)
	if err := re.read(hash(sha256.Sum256(testBlock(5))), buf); err != nil {
		t.Errorf("the live block after the sweep: %v", err)
	}
}
