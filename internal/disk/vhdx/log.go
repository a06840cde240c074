package vhdx

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"

	"github.com/ferry-project/ferry/internal/disk"
)

// view reads the image file as it would be after replaying its log: the
// file's bytes, zeros past its end up to the size the log says the file
// has, and the replayed sectors on top. ferry never writes the replay back.
type view struct {
	f     disk.File
	fsize int64 // the file's real length
	size  int64 // the length after replay (at least fsize)
	// patches are the replayed ranges, ascending and disjoint; nil data
	// means zeros.
	patches []patch
}

type patch struct {
	off, n int64
	data   []byte // len n, or nil for zeros
}

func newView(f disk.File) *view {
	return &view{f: f, fsize: f.Size(), size: f.Size()}
}

// readAt fills p with the bytes at off. Bytes past the file's end read as
// zeros; callers range-check offsets against v.size first.
func (v *view) readAt(p []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("negative offset %d", off)
	}
	n := 0
	if off < v.fsize {
		m := int(min(int64(len(p)), v.fsize-off))
		k, err := v.f.ReadAt(p[:m], off)
		if k < m {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		n = m
	}
	clear(p[n:])
	if len(v.patches) > 0 {
		v.apply(p, off)
	}
	return nil
}

func (v *view) apply(p []byte, off int64) {
	end := off + int64(len(p))
	i := sort.Search(len(v.patches), func(i int) bool { return v.patches[i].off+v.patches[i].n > off })
	for ; i < len(v.patches) && v.patches[i].off < end; i++ {
		pt := v.patches[i]
		s, e := max(pt.off, off), min(pt.off+pt.n, end)
		if pt.data == nil {
			clear(p[s-off : e-off])
		} else {
			copy(p[s-off:e-off], pt.data[s-pt.off:e-pt.off])
		}
	}
}

// logEntry is a valid log entry.
type logEntry struct {
	off     int64 // within the log
	length  int64
	tail    int64
	seq     uint64
	flushed int64
	last    int64
	descs   []logDesc
}

// logDesc is a zero or data descriptor. Data descriptors carry the sector
// to write, reassembled.
type logDesc struct {
	fileOff int64
	n       int64
	data    []byte // the 4 KiB data sector, or nil for a zero descriptor
	lead    [8]byte
	trail   [4]byte
}

// logReplay finds the active sequence of the log in lb (the whole log
// region) and returns the patches it makes to the file, plus the head
// entry's FlushedFileOffset and LastFileOffset. A log with no valid
// sequence is corrupt.
type logReplay struct {
	lb      []byte
	guid    guid
	entries map[int64]*logEntry // valid entries by offset; nil value = parsed, invalid
}

func (r *logReplay) sector(off int64) []byte {
	off %= int64(len(r.lb))
	return r.lb[off : off+logSectorSize]
}

// parse validates the entry at off. Checks that cost little come first
// and the checksum last, so that a crafted log cannot make the scan
// quadratic: each sector is looked at by at most a couple of candidate
// entries, since entry headers, descriptor sectors and data sectors start
// with different signatures.
func (r *logReplay) parse(off int64) *logEntry {
	if e, ok := r.entries[off]; ok {
		return e
	}
	e := r.parseUncached(off)
	r.entries[off] = e
	return e
}

func (r *logReplay) parseUncached(off int64) *logEntry {
	L := int64(len(r.lb))
	s0 := r.sector(off)
	le := binary.LittleEndian
	if le.Uint32(s0[0:]) != sigLoge {
		return nil
	}
	length := int64(le.Uint32(s0[8:]))
	tail := int64(le.Uint32(s0[12:]))
	seq := le.Uint64(s0[16:])
	ndesc := int64(le.Uint32(s0[24:]))
	var g guid
	copy(g[:], s0[32:48])
	flushed := le.Uint64(s0[48:])
	last := le.Uint64(s0[56:])
	if length == 0 || length%logSectorSize != 0 || length > L || tail%logSectorSize != 0 || tail >= L ||
		seq == 0 || g != r.guid || flushed > uint64(maxFileSize) || last > uint64(maxFileSize) {
		return nil
	}
	sectors := length / logSectorSize
	descSectors := (64 + 32*ndesc + logSectorSize - 1) / logSectorSize
	if descSectors > sectors {
		return nil
	}
	dataSectors := sectors - descSectors
	e := &logEntry{off: off, length: length, tail: tail, seq: seq, flushed: int64(flushed), last: int64(last)}
	var nData int64
	for i := range ndesc {
		pos := 64 + 32*i
		d := r.sector(off + pos/logSectorSize*logSectorSize)[pos%logSectorSize:]
		fileOff := le.Uint64(d[16:])
		if le.Uint64(d[24:]) != seq || fileOff%uint64(logSectorSize) != 0 || fileOff > uint64(maxFileSize) {
			return nil
		}
		switch le.Uint32(d[0:]) {
		case sigZero:
			n := le.Uint64(d[8:])
			if n%uint64(logSectorSize) != 0 || n > uint64(maxFileSize) || fileOff+n > uint64(maxFileSize) {
				return nil
			}
			if n > 0 {
				e.descs = append(e.descs, logDesc{fileOff: int64(fileOff), n: int64(n)})
			}
		case sigDesc:
			if nData >= dataSectors {
				return nil
			}
			ds := r.sector(off + (descSectors+nData)*logSectorSize)
			nData++
			if le.Uint32(ds[0:]) != sigData || uint64(le.Uint32(ds[4:]))<<32|uint64(le.Uint32(ds[logSectorSize-4:])) != seq {
				return nil
			}
			ld := logDesc{fileOff: int64(fileOff), n: logSectorSize, data: ds}
			copy(ld.trail[:], d[4:8])
			copy(ld.lead[:], d[8:16])
			e.descs = append(e.descs, ld)
		default:
			return nil
		}
	}
	if nData != dataSectors {
		return nil
	}
	// Checksum over the whole entry, sector by sector (it may wrap).
	c := crc32.Update(0, castagnoli, s0[:4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, s0[8:])
	for i := int64(1); i < sectors; i++ {
		c = crc32.Update(c, castagnoli, r.sector(off+i*logSectorSize))
	}
	if c != le.Uint32(s0[4:]) {
		return nil
	}
	return e
}

// next returns the entry that extends a sequence ending with e.
func (r *logReplay) next(e *logEntry) *logEntry {
	n := r.parse((e.off + e.length) % int64(len(r.lb)))
	if n == nil || n.seq != e.seq+1 {
		return nil
	}
	return n
}

// active finds the active sequence, following [MS-VHDX] 2.3.3: scan tails
// from the start of the log, extend each as far as consecutive entries go,
// keep the valid sequence (its head's tail lies inside it) with the
// highest head sequence number. It returns the entries to replay, tail
// first, or nil.
func (r *logReplay) active() []*logEntry {
	L := int64(len(r.lb))
	// head[x] and rank[x] memoise, for the entry at x, the head of the
	// longest consecutive run from x and how many steps away it is.
	type walk struct {
		head *logEntry
		rank int
	}
	memo := map[int64]walk{}
	walkFrom := func(e *logEntry) walk {
		var path []*logEntry
		for cur := e; ; {
			if w, ok := memo[cur.off]; ok {
				for i := len(path) - 1; i >= 0; i-- {
					w.rank++
					memo[path[i].off] = w
				}
				return memo[e.off]
			}
			path = append(path, cur)
			nx := r.next(cur)
			if nx == nil || len(path) > int(L/logSectorSize) {
				w := walk{head: cur}
				memo[cur.off] = w
				for i := len(path) - 2; i >= 0; i-- {
					w.rank++
					memo[path[i].off] = w
				}
				return memo[e.off]
			}
			cur = nx
		}
	}
	var best *logEntry
	var bestTail *logEntry
	cur := int64(0)
	for range L/logSectorSize + 1 {
		next := cur + logSectorSize
		if e := r.parse(cur); e != nil {
			w := walkFrom(e)
			h := w.head
			if t := r.parse(h.tail); t != nil {
				if tw := walkFrom(t); tw.head == h && tw.rank <= w.rank {
					if best == nil || h.seq > best.seq {
						best, bestTail = h, t
					}
					next = h.off + h.length
				}
			}
		}
		if next >= L {
			next -= L
		}
		if next <= cur {
			break
		}
		cur = next
	}
	if best == nil {
		return nil
	}
	var seqEnts []*logEntry
	for e := bestTail; e != nil; e = r.next(e) {
		seqEnts = append(seqEnts, e)
		if e == best || len(seqEnts) > int(L/logSectorSize) {
			break
		}
	}
	return seqEnts
}

// replayLog reads the log of a file whose current header names a log and
// returns the view with the active sequence applied.
func replayLog(name string, v *view, h header) error {
	logOff, logLen := int64(h.logOffset), int64(h.logLength)
	if logLen == 0 {
		return corrupt(name, "log guid %s set but the log is empty", h.logGUID)
	}
	if logLen > maxLogReplay {
		return unimplemented(name, "vhdx log replay of a %d MiB log (ferry replays logs up to %d MiB)", logLen/mib, maxLogReplay/mib)
	}
	if logOff+logLen > v.fsize {
		return corrupt(name, "log at %#x (%d bytes) beyond end of file (%d bytes)", logOff, logLen, v.fsize)
	}
	lb := make([]byte, logLen)
	if err := v.readAt(lb, logOff); err != nil {
		return fmt.Errorf("vhdx %s: read log: %w", name, err)
	}
	r := &logReplay{lb: lb, guid: h.logGUID, entries: map[int64]*logEntry{}}
	seq := r.active()
	if len(seq) == 0 {
		return corrupt(name, "log guid %s set but the log holds no valid sequence", h.logGUID)
	}
	head := seq[len(seq)-1]
	if v.fsize < head.flushed {
		return corrupt(name, "file of %d bytes is shorter than the %d bytes its log says were flushed (truncated)", v.fsize, head.flushed)
	}
	// Descriptors must not touch the identifier, the headers or the log.
	var ops []logDesc
	for _, e := range seq {
		for _, d := range e.descs {
			if d.fileOff < region1Offset {
				return corrupt(name, "log entry %d writes the file header at %#x", e.seq, d.fileOff)
			}
			if d.fileOff < logOff+logLen && logOff < d.fileOff+d.n {
				return corrupt(name, "log entry %d writes into the log itself at %#x", e.seq, d.fileOff)
			}
			if d.data != nil {
				// Reassemble the sector: 8 leading and 4 trailing
				// bytes come from the descriptor.
				sec := make([]byte, logSectorSize)
				copy(sec, d.data)
				copy(sec[0:8], d.lead[:])
				copy(sec[logSectorSize-4:], d.trail[:])
				d.data = sec
			}
			ops = append(ops, d)
		}
	}
	v.patches = buildPatches(ops)
	v.size = max(v.fsize, head.last)
	for _, p := range v.patches {
		v.size = max(v.size, p.off+p.n)
	}
	return nil
}

// buildPatches turns replay operations, applied in order, into disjoint
// ascending patches: for each range the last operation touching it wins.
// It sweeps the boundaries with a heap of the zero ranges in force, so the
// cost is O(n log n) whatever the overlaps.
func buildPatches(ops []logDesc) []patch {
	type dataOp struct {
		idx  int
		data []byte
	}
	data := map[int64]dataOp{}
	type zeroOp struct {
		idx      int
		off, end int64
	}
	var zeros []zeroOp
	var bounds []int64
	for i, d := range ops {
		if d.data != nil {
			data[d.fileOff] = dataOp{i, d.data}
		} else {
			zeros = append(zeros, zeroOp{i, d.fileOff, d.fileOff + d.n})
			bounds = append(bounds, d.fileOff, d.fileOff+d.n)
		}
	}
	for off := range data {
		bounds = append(bounds, off, off+logSectorSize)
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	slices.SortFunc(zeros, func(a, b zeroOp) int { return cmpInt64(a.off, b.off) })

	h := &zeroHeap{}
	zi := 0
	var out []patch
	add := func(p patch) {
		if n := len(out); n > 0 && p.data == nil && out[n-1].data == nil && out[n-1].off+out[n-1].n == p.off {
			out[n-1].n += p.n
			return
		}
		out = append(out, p)
	}
	for k := 0; k+1 < len(bounds); k++ {
		a, b := bounds[k], bounds[k+1]
		for zi < len(zeros) && zeros[zi].off <= a {
			heap.Push(h, zeroItem{zeros[zi].idx, zeros[zi].end})
			zi++
		}
		for h.Len() > 0 && (*h)[0].end <= a {
			heap.Pop(h)
		}
		zidx := -1
		if h.Len() > 0 {
			zidx = (*h)[0].idx
		}
		// Every boundary is a multiple of 4 KiB, so a data sector starting
		// at a is exactly [a, b).
		ds, hasData := data[a]
		switch {
		case hasData && ds.idx > zidx:
			add(patch{off: a, n: b - a, data: ds.data})
		case zidx >= 0:
			add(patch{off: a, n: b - a})
		}
	}
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// zeroHeap is a max-heap of zero ranges in force, by operation index.
type zeroItem struct {
	idx int
	end int64
}
type zeroHeap []zeroItem

func (h zeroHeap) Len() int           { return len(h) }
func (h zeroHeap) Less(i, j int) bool { return h[i].idx > h[j].idx }
func (h zeroHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *zeroHeap) Push(x any)        { *h = append(*h, x.(zeroItem)) }
func (h *zeroHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
