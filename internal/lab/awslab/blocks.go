package awslab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// blockSize is the EBS snapshot block: 512 KiB.
const blockSize = 512 << 10

// blocksPerGiB is how many blocks a GiB of volume holds.
const blocksPerGiB = gib / blockSize

// hash is the SHA-256 of a block's 512 KiB, its name in the block store.
type hash [32]byte

// blockStore keeps snapshot blocks on disk, content-addressed: each
// distinct 512 KiB block once, appended to pack files (blocks/pack-N,
// up to packSize each) with its location recorded in an append-only
// index (blocks/packs.idx: SHA-256, pack, offset). A block is written
// before its index record, so a record always points at a whole block
// (blocks are not synced one by one: a block torn by a power loss fails
// its hash check when read, as data loss). Stores made by earlier labs,
// a file per block in blocks/<xx>/<sha256>, are still read and swept.
// Writers hold the read side of gc while they store a block and record it
// in an index; a sweep holds the write side.
//
// Where the file system allows it (Linux), packs are read and written
// with direct I/O, bypassing the page cache: a snapshot's blocks are
// written once and read back rarely, and caching gigabytes of them would
// cost the machine the lab shares with ferry and its guests more memory
// traffic than the disk costs. Packs grow in preallocated steps, so that
// concurrent block writes land inside the file and do not serialise on
// extending it.
type blockStore struct {
	dir string
	gc  sync.RWMutex

	mu      sync.Mutex
	opened  bool
	legacy  bool // the file-per-block layout has files here
	locs    map[hash]packLoc
	pending map[hash]chan struct{} // blocks being written: a second put waits
	packs   map[int32]*pack
	cur     int32 // the pack written now
	idx     *os.File

	bufs sync.Pool // *[]byte, blockSize, aligned for direct I/O
}

// pack is an open pack file.
type pack struct {
	f      *os.File
	direct bool  // opened for direct I/O: aligned offsets and buffers only
	end    int64 // where the next block goes: blocks below are written or being written
	alloc  int64 // bytes the file holds (preallocated beyond end)
}

// packLoc is where a block lives.
type packLoc struct {
	pack int32
	off  int64
}

// packSize bounds a pack file.
const packSize = 1 << 30

// packGrow is the step in which a pack file is preallocated.
const packGrow = 64 << 20

// packRecord is an index record: hash, pack, offset.
const packRecord = 32 + 4 + 8

func (b *blockStore) packPath(n int32) string {
	return filepath.Join(b.dir, fmt.Sprintf("pack-%06d", n))
}

// path is a block's file in the one-file-per-block layout of earlier labs.
func (b *blockStore) path(h hash) string {
	x := hex.EncodeToString(h[:])
	return filepath.Join(b.dir, x[:2], x)
}

// buffer returns a block buffer aligned for direct I/O; release gives it
// back.
func (b *blockStore) buffer() []byte {
	if p, ok := b.bufs.Get().(*[]byte); ok {
		return *p
	}
	return alignedBlock()
}

func (b *blockStore) release(p []byte) {
	if len(p) == blockSize && aligned(p) {
		b.bufs.Put(&p)
	}
}

// openPack opens (or creates) pack n, for direct I/O where the file
// system supports it.
func (b *blockStore) openPack(n int32, create bool) (*pack, error) {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, direct, err := openDirect(b.packPath(n), flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("block store: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("block store: %w", err)
	}
	return &pack{f: f, direct: direct, alloc: st.Size()}, nil
}

// writeAt writes a block at off (a multiple of blockSize).
func (pk *pack) writeAt(b *blockStore, p []byte, off int64) error {
	if pk.direct && !aligned(p) {
		q := b.buffer()
		defer b.release(q)
		copy(q, p)
		p = q
	}
	_, err := pk.f.WriteAt(p, off)
	return err
}

// readAt reads the block at off (a multiple of blockSize) into p.
func (pk *pack) readAt(b *blockStore, p []byte, off int64) error {
	q := p
	if pk.direct && !aligned(p) {
		q = b.buffer()
		defer b.release(q)
	}
	if _, err := pk.f.ReadAt(q, off); err != nil {
		return err
	}
	if &q[0] != &p[0] {
		copy(p, q)
	}
	return nil
}

// openLocked loads the index and opens the packs, once.
func (b *blockStore) openLocked() error {
	if b.opened {
		return nil
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return fmt.Errorf("block store: %w", err)
	}
	b.locs, b.packs, b.pending = map[hash]packLoc{}, map[int32]*pack{}, map[hash]chan struct{}{}
	b.legacy = false
	if ents, err := os.ReadDir(b.dir); err == nil {
		for _, e := range ents {
			if e.IsDir() && len(e.Name()) == 2 {
				b.legacy = true
			}
		}
	}
	names, _ := filepath.Glob(filepath.Join(b.dir, "pack-*"))
	for _, name := range names {
		var n int32
		if _, err := fmt.Sscanf(filepath.Base(name), "pack-%06d", &n); err != nil {
			continue
		}
		pk, err := b.openPack(n, false)
		if err != nil {
			b.closeLocked()
			return err
		}
		b.packs[n] = pk
		b.cur = max(b.cur, n)
	}
	raw, err := os.ReadFile(filepath.Join(b.dir, "packs.idx"))
	if err != nil && !os.IsNotExist(err) {
		b.closeLocked()
		return fmt.Errorf("block store index: %w", err)
	}
	for k := 0; k+packRecord <= len(raw); k += packRecord {
		var h hash
		copy(h[:], raw[k:])
		l := packLoc{pack: int32(binary.LittleEndian.Uint32(raw[k+32:])), off: int64(binary.LittleEndian.Uint64(raw[k+36:]))}
		if pk := b.packs[l.pack]; pk != nil && l.off+blockSize <= pk.alloc { // a record past its pack's end was torn off
			b.locs[h] = l
			pk.end = max(pk.end, l.off+blockSize)
		}
	}
	// Blocks past the last record (written, not recorded, when the lab
	// stopped) are written over.
	idx, err := os.OpenFile(filepath.Join(b.dir, "packs.idx"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		b.closeLocked()
		return fmt.Errorf("block store index: %w", err)
	}
	if n := len(raw) % packRecord; n != 0 { // a torn last record
		if err := idx.Truncate(int64(len(raw) - n)); err != nil {
			idx.Close()
			b.closeLocked()
			return fmt.Errorf("block store index: %w", err)
		}
	}
	b.idx, b.opened = idx, true
	return nil
}

// close closes the packs and the index.
func (b *blockStore) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closeLocked()
}

func (b *blockStore) closeLocked() {
	for _, pk := range b.packs {
		if pk.alloc > pk.end {
			pk.f.Truncate(pk.end) // give back what was preallocated
		}
		pk.f.Close()
	}
	if b.idx != nil {
		b.idx.Close()
	}
	b.opened, b.packs, b.idx = false, nil, nil
}

// put stores a 512 KiB block and returns its hash. The caller holds gc
// for reading until the block is recorded in an index.
func (b *blockStore) put(p []byte) (hash, error) {
	if len(p) != blockSize {
		return hash{}, fmt.Errorf("store block: %d bytes, a block is %d: %w", len(p), blockSize, errs.ErrInvalidArgument)
	}
	return b.putSum(p, sha256.Sum256(p))
}

// putSum is put with the block's SHA-256 already computed by the caller.
func (b *blockStore) putSum(p []byte, sum [32]byte) (hash, error) {
	if len(p) != blockSize {
		return hash{}, fmt.Errorf("store block: %d bytes, a block is %d: %w", len(p), blockSize, errs.ErrInvalidArgument)
	}
	h := hash(sum)
	b.mu.Lock()
	for {
		if err := b.openLocked(); err != nil {
			b.mu.Unlock()
			return h, err
		}
		if _, ok := b.locs[h]; ok {
			b.mu.Unlock()
			return h, nil
		}
		ch, busy := b.pending[h]
		if !busy {
			break
		}
		// The same block is being written: wait for it, then look again.
		b.mu.Unlock()
		<-ch
		b.mu.Lock()
	}
	if b.legacy {
		if _, err := os.Stat(b.path(h)); err == nil {
			b.mu.Unlock()
			return h, nil
		}
	}
	done := make(chan struct{})
	b.pending[h] = done
	defer func() {
		b.mu.Lock()
		delete(b.pending, h)
		b.mu.Unlock()
		close(done)
	}()
	l, pk, err := b.placeLocked()
	b.mu.Unlock()
	if err != nil {
		return h, fmt.Errorf("store block: %w", err)
	}
	if err := pk.writeAt(b, p, l.off); err != nil {
		return h, fmt.Errorf("store block: %w", err)
	}
	var rec [packRecord]byte
	copy(rec[:], h[:])
	binary.LittleEndian.PutUint32(rec[32:], uint32(l.pack))
	binary.LittleEndian.PutUint64(rec[36:], uint64(l.off))
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.idx.Write(rec[:]); err != nil {
		return h, fmt.Errorf("store block: record it: %w", err)
	}
	b.locs[h] = l
	return h, nil
}

// placeLocked reserves the place of the next block: the end of the
// current pack, or a new pack when it is full. The file is grown first,
// so the block is written inside it.
func (b *blockStore) placeLocked() (packLoc, *pack, error) {
	pk := b.packs[b.cur]
	if pk == nil || pk.end+blockSize > packSize {
		if pk != nil {
			if pk.alloc > pk.end {
				pk.f.Truncate(pk.end) // blocks still being written lie below end
				pk.alloc = pk.end
			}
			b.cur++
		}
		var err error
		if pk, err = b.openPack(b.cur, true); err != nil {
			return packLoc{}, nil, err
		}
		b.packs[b.cur] = pk
	}
	l := packLoc{pack: b.cur, off: pk.end}
	if pk.end+blockSize > pk.alloc {
		grow := min(packGrow, packSize-pk.alloc)
		if err := preallocate(pk.f, pk.alloc, grow); err != nil {
			return packLoc{}, nil, err
		}
		pk.alloc += grow
	}
	pk.end += blockSize
	return l, pk, nil
}

// read reads a block into p (512 KiB) and checks its hash.
func (b *blockStore) read(h hash, p []byte) error {
	b.mu.Lock()
	if err := b.openLocked(); err != nil {
		b.mu.Unlock()
		return err
	}
	l, ok := b.locs[h]
	pk := b.packs[l.pack]
	b.mu.Unlock()
	if ok && pk != nil {
		if err := pk.readAt(b, p[:blockSize], l.off); err != nil {
			return fmt.Errorf("read block %x: %w", h[:8], err)
		}
	} else {
		old, err := os.Open(b.path(h))
		if err != nil {
			return fmt.Errorf("read block %x: %w", h[:8], err)
		}
		defer old.Close()
		if _, err := io.ReadFull(old, p[:blockSize]); err != nil {
			return fmt.Errorf("read block %x: %w", h[:8], err)
		}
	}
	if sha256.Sum256(p[:blockSize]) != h {
		return fmt.Errorf("block %x: content does not match its hash: %w", h[:8], errs.ErrDataLoss)
	}
	return nil
}

// sweep removes the blocks no index refers to. live lists the hashes
// every index holds; the caller holds gc for writing. Packs left with no
// live block are deleted; a pack less than half live has its live blocks
// copied to the current pack first. It returns the blocks removed.
func (b *blockStore) sweep(live map[hash]bool) (int, error) {
	n, err := b.sweepFiles(live)
	if err != nil {
		return n, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.openLocked(); err != nil {
		return n, err
	}
	livePerPack := map[int32]int64{}
	for h, l := range b.locs {
		if live[h] {
			livePerPack[l.pack]++
		} else {
			delete(b.locs, h)
			n++
		}
	}
	buf := b.buffer()
	defer b.release(buf)
	for pn := range b.packs {
		pk := b.packs[pn]
		if pn == b.cur || (pk.end > 0 && livePerPack[pn]*blockSize*2 >= pk.end) {
			continue // current, or at least half live (a pack with no block recorded goes)
		}
		// Move the live blocks out (gc is held: nothing else writes).
		for h, l := range b.locs {
			if l.pack != pn {
				continue
			}
			if err := pk.readAt(b, buf, l.off); err != nil {
				return n, fmt.Errorf("sweep blocks: %w", err)
			}
			nl, cp, err := b.placeLocked()
			if err != nil {
				return n, fmt.Errorf("sweep blocks: %w", err)
			}
			if err := cp.writeAt(b, buf, nl.off); err != nil {
				return n, fmt.Errorf("sweep blocks: %w", err)
			}
			b.locs[h] = nl
		}
		pk.f.Close()
		delete(b.packs, pn)
		os.Remove(b.packPath(pn))
	}
	// Rewrite the index with the blocks that are left.
	var raw bytes.Buffer
	for h, l := range b.locs {
		var rec [packRecord]byte
		copy(rec[:], h[:])
		binary.LittleEndian.PutUint32(rec[32:], uint32(l.pack))
		binary.LittleEndian.PutUint64(rec[36:], uint64(l.off))
		raw.Write(rec[:])
	}
	if err := labkit.WriteFile(filepath.Join(b.dir, "packs.idx"), raw.Bytes(), 0o644); err != nil {
		return n, fmt.Errorf("sweep blocks: %w", err)
	}
	b.idx.Close()
	idx, err := os.OpenFile(filepath.Join(b.dir, "packs.idx"), os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.opened = false
		return n, fmt.Errorf("sweep blocks: %w", err)
	}
	b.idx = idx
	return n, nil
}

// sweepFiles removes the unreferenced blocks of the file-per-block layout.
func (b *blockStore) sweepFiles(live map[hash]bool) (int, error) {
	dirs, err := os.ReadDir(b.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(b.dir, d.Name()))
		if err != nil {
			return n, err
		}
		for _, f := range files {
			raw, err := hex.DecodeString(f.Name())
			if err != nil || len(raw) != 32 {
				if filepath.Ext(f.Name()) != "" || len(f.Name()) > 64 {
					os.Remove(filepath.Join(b.dir, d.Name(), f.Name())) // a crashed temporary
				}
				continue
			}
			if !live[hash(raw)] {
				os.Remove(filepath.Join(b.dir, d.Name(), f.Name()))
				n++
			}
		}
	}
	return n, nil
}

// entry is one block of a snapshot: its index and content hash.
type entry struct {
	Index int64
	Hash  hash
}

// index is a snapshot's blocks, sorted by block index. Blocks absent
// read as zeros.
type index []entry

func (x index) find(i int64) (hash, bool) {
	k := sort.Search(len(x), func(k int) bool { return x[k].Index >= i })
	if k < len(x) && x[k].Index == i {
		return x[k].Hash, true
	}
	return hash{}, false
}

// from returns the entries at or after block index i.
func (x index) from(i int64) index {
	k := sort.Search(len(x), func(k int) bool { return x[k].Index >= i })
	return x[k:]
}

// merge lays over on top of x and returns the result.
func (x index) merge(over index) index {
	out := make(index, 0, len(x)+len(over))
	i, j := 0, 0
	for i < len(x) || j < len(over) {
		switch {
		case j == len(over) || i < len(x) && x[i].Index < over[j].Index:
			out = append(out, x[i])
			i++
		case i == len(x) || over[j].Index < x[i].Index:
			out = append(out, over[j])
			j++
		default:
			out = append(out, over[j])
			i++
			j++
		}
	}
	return out
}

const (
	indexMagic   = "FLBI" // ferry lab block index
	journalMagic = "FLBJ" // ferry lab block journal
)

// The index file: magic, version (uint32), count (uint64), then count
// entries of index (uint64) and hash (32 bytes), ascending. The journal
// of a snapshot being written: magic, version, then appended records of
// index and hash; the last record of an index wins.

func (s *Server) indexPath(id string) string { return filepath.Join(s.dir, "snapshots", id+".idx") }
func (s *Server) journalPath(id string) string {
	return filepath.Join(s.dir, "snapshots", id+".journal")
}

func writeIndex(path string, x index) error {
	var b bytes.Buffer
	b.WriteString(indexMagic)
	binary.Write(&b, binary.LittleEndian, uint32(1))
	binary.Write(&b, binary.LittleEndian, uint64(len(x)))
	for _, e := range x {
		binary.Write(&b, binary.LittleEndian, uint64(e.Index))
		b.Write(e.Hash[:])
	}
	return labkit.WriteFile(path, b.Bytes(), 0o644)
}

func readIndex(path string) (index, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("block index %s: %w", filepath.Base(path), errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read block index: %w", err)
	}
	if len(b) < 16 || string(b[:4]) != indexMagic || binary.LittleEndian.Uint32(b[4:]) != 1 {
		return nil, fmt.Errorf("block index %s: bad header: %w", filepath.Base(path), errs.ErrCorrupt)
	}
	n := binary.LittleEndian.Uint64(b[8:])
	if n > uint64(len(b)-16)/40 || uint64(len(b)-16) != n*40 {
		return nil, fmt.Errorf("block index %s: %d entries in %d bytes: %w", filepath.Base(path), n, len(b), errs.ErrCorrupt)
	}
	x := make(index, n)
	for i := range x {
		o := 16 + 40*i
		x[i].Index = int64(binary.LittleEndian.Uint64(b[o:]))
		copy(x[i].Hash[:], b[o+8:o+40])
		if i > 0 && x[i].Index <= x[i-1].Index {
			return nil, fmt.Errorf("block index %s: entries out of order: %w", filepath.Base(path), errs.ErrCorrupt)
		}
	}
	return x, nil
}

// journal is the append-only record of the blocks written to a snapshot
// through PutSnapshotBlock.
type journal struct {
	mu sync.Mutex
	f  *os.File
}

func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open block journal: %w", err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() == 0 {
		var b bytes.Buffer
		b.WriteString(journalMagic)
		binary.Write(&b, binary.LittleEndian, uint32(1))
		_, err = f.Write(b.Bytes())
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open block journal: %w", err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("open block journal: %w", err)
	}
	return &journal{f: f}, nil
}

// add records block i with hash h.
func (j *journal) add(i int64, h hash) error {
	var rec [40]byte
	binary.LittleEndian.PutUint64(rec[:], uint64(i))
	copy(rec[8:], h[:])
	j.mu.Lock()
	defer j.mu.Unlock()
	// Not synced record by record: a record written survives the lab's
	// process (the page cache has it); the index written when the
	// snapshot completes is synced.
	if _, err := j.f.Write(rec[:]); err != nil {
		return fmt.Errorf("record block %d: %w", i, err)
	}
	return nil
}

func (j *journal) close() error { return j.f.Close() }

// readJournal returns the blocks a journal records, the last record of
// each index winning. A torn last record (a crash mid-write) is ignored.
func readJournal(path string) (index, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read block journal: %w", err)
	}
	if len(b) < 8 || string(b[:4]) != journalMagic {
		return nil, fmt.Errorf("block journal %s: bad header: %w", filepath.Base(path), errs.ErrCorrupt)
	}
	m := map[int64]hash{}
	for o := 8; o+40 <= len(b); o += 40 {
		var h hash
		copy(h[:], b[o+8:o+40])
		m[int64(binary.LittleEndian.Uint64(b[o:]))] = h
	}
	x := make(index, 0, len(m))
	for i, h := range m {
		x = append(x, entry{i, h})
	}
	slices.SortFunc(x, func(a, b entry) int {
		switch {
		case a.Index < b.Index:
			return -1
		case a.Index > b.Index:
			return 1
		}
		return 0
	})
	return x, nil
}

// snapImage presents a snapshot's blocks as a disk image of its volume
// size: stored blocks are data, everything else unallocated.
type snapImage struct {
	store *blockStore
	idx   index
	size  int64
	pool  sync.Pool
}

func newSnapImage(store *blockStore, idx index, size int64) *snapImage {
	return &snapImage{store: store, idx: idx, size: size, pool: sync.Pool{New: func() any { b := make([]byte, blockSize); return &b }}}
}

func (i *snapImage) Size() int64  { return i.size }
func (i *snapImage) Close() error { return nil }
func (i *snapImage) Info() disk.Info {
	return disk.Info{Format: "ebs-snapshot", VirtualSize: i.size, ClusterSize: blockSize}
}

func (i *snapImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read snapshot at %d: negative offset: %w", off, errs.ErrInvalidArgument)
	}
	if off >= i.size {
		return 0, io.EOF
	}
	want := len(p)
	var err error
	if int64(want) > i.size-off {
		want = int(i.size - off)
		err = io.EOF
	}
	bp := i.pool.Get().(*[]byte)
	defer i.pool.Put(bp)
	buf := *bp
	for n := 0; n < want; {
		pos := off + int64(n)
		blk := pos / blockSize
		in := pos % blockSize
		k := min(want-n, int(blockSize-in))
		if h, ok := i.idx.find(blk); ok {
			if rerr := i.store.read(h, buf); rerr != nil {
				return n, rerr
			}
			copy(p[n:n+k], buf[in:])
		} else {
			clear(p[n : n+k])
		}
		n += k
	}
	return want, err
}

func (i *snapImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, i.size)
		pos := max(off, 0)
		for _, e := range i.idx.from(pos / blockSize) {
			if pos >= end {
				return
			}
			if err := ctx.Err(); err != nil {
				yield(disk.Extent{}, err)
				return
			}
			bs, be := e.Index*blockSize, min((e.Index+1)*blockSize, end)
			if bs >= end {
				break
			}
			if bs > pos {
				if !yield(disk.Extent{Off: pos, Len: bs - pos, Kind: disk.Unallocated}, nil) {
					return
				}
				pos = bs
			}
			if be > pos {
				if !yield(disk.Extent{Off: pos, Len: be - pos, Kind: disk.Data}, nil) {
					return
				}
				pos = be
			}
		}
		if pos < end {
			yield(disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated}, nil)
		}
	}
}

var _ disk.Image = (*snapImage)(nil)

// storeImage reads img block by block and stores every block that holds
// data other than zeros, calling progress with the bytes covered so far.
// The caller holds the store's gc lock for reading until the index is
// written.
func storeImage(ctx context.Context, store *blockStore, img disk.Image, progress func(done, total int64)) (index, int64, error) {
	size := img.Size()
	buf := make([]byte, blockSize)
	var x index
	var stored int64
	last := int64(-1)
	for e, err := range img.Extents(ctx, 0, size) {
		if err != nil {
			return nil, 0, err
		}
		if e.Kind != disk.Data {
			continue
		}
		for blk := max(e.Off/blockSize, last+1); blk*blockSize < e.End(); blk++ {
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
			off := blk * blockSize
			n := min(blockSize, size-off)
			clear(buf)
			if k, err := img.ReadAt(buf[:n], off); k < int(n) {
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				return nil, 0, fmt.Errorf("read at %d: %w", off, err)
			}
			last = blk
			if progress != nil {
				progress(off+n, size)
			}
			if allZero(buf) {
				continue
			}
			h, err := store.put(buf)
			if err != nil {
				return nil, 0, err
			}
			x = append(x, entry{blk, h})
			stored += blockSize
		}
	}
	return x, stored, nil
}

var zeroBlock = make([]byte, blockSize)

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
