package vhd

import (
	"container/list"
	"sync"
	"sync/atomic"
)

// bmState summarises a block's sector bitmap over the sectors inside the
// disk.
type bmState uint32

const (
	bmUnknown bmState = iota // not read yet
	bmFull                   // every sector is stored
	bmEmpty                  // no sector is stored
	bmMixed                  // some are: the bits are needed
)

// bitmaps caches sector bitmaps: a two-bit summary for every block (a
// quarter byte per block, read lazily), and the bits themselves of the
// most recently used mixed blocks, bounded to about 8 MiB.
type bitmaps struct {
	states []atomic.Uint32 // 16 summaries per word

	mu    sync.Mutex
	order *list.List // of *bmEntry, most recent first
	byBlk map[int64]*list.Element
	max   int
}

type bmEntry struct {
	blk  int64
	bits []byte
}

func newBitmaps(nblocks, bmSize int64) *bitmaps {
	return &bitmaps{
		states: make([]atomic.Uint32, (nblocks+15)/16),
		order:  list.New(),
		byBlk:  map[int64]*list.Element{},
		max:    int(max(64, (8<<20)/bmSize)),
	}
}

func (b *bitmaps) state(blk int64) bmState {
	return bmState(b.states[blk/16].Load()>>(2*(blk%16))) & 3
}

func (b *bitmaps) setState(blk int64, s bmState) {
	w := &b.states[blk/16]
	sh := 2 * (blk % 16)
	for {
		old := w.Load()
		nw := old&^(3<<sh) | uint32(s)<<sh
		if w.CompareAndSwap(old, nw) {
			return
		}
	}
}

func (b *bitmaps) get(blk int64) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.byBlk[blk]; e != nil {
		b.order.MoveToFront(e)
		return e.Value.(*bmEntry).bits
	}
	return nil
}

func (b *bitmaps) put(blk int64, bits []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.byBlk[blk]; ok {
		return
	}
	b.byBlk[blk] = b.order.PushFront(&bmEntry{blk, bits})
	for b.order.Len() > b.max {
		e := b.order.Back()
		b.order.Remove(e)
		delete(b.byBlk, e.Value.(*bmEntry).blk)
	}
}

// validSectors is the number of sectors of block blk inside the disk.
func (im *image) validSectors(blk int64) int {
	n := min(im.bs, im.size-blk*im.bs)
	return int((n + sectorSize - 1) / sectorSize)
}

// bitmap returns block blk's bitmap summary and, for a mixed block, its
// bits (shared: read only). The block must be allocated.
func (im *image) bitmap(blk int64) (bmState, []byte, error) {
	st := im.bm.state(blk)
	switch st {
	case bmFull, bmEmpty:
		return st, nil, nil
	case bmMixed:
		if bits := im.bm.get(blk); bits != nil {
			return st, bits, nil
		}
	}
	valid := im.validSectors(blk)
	bits := make([]byte, (valid+7)/8)
	if err := readAtFull(im.f, bits, int64(im.bat[blk])*sectorSize, "sector bitmap"); err != nil {
		return 0, nil, err
	}
	st = classify(bits, valid)
	im.bm.setState(blk, st)
	if st == bmMixed {
		im.bm.put(blk, bits)
	}
	return st, bits, nil
}

// classify summarises the first n bits of a bitmap (most significant bit
// first).
func classify(bits []byte, n int) bmState {
	full, empty := true, true
	for i := 0; i < n/8; i++ {
		switch bits[i] {
		case 0xFF:
			empty = false
		case 0:
			full = false
		default:
			return bmMixed
		}
	}
	if r := n % 8; r != 0 {
		mask := byte(0xFF) << (8 - r)
		switch bits[n/8] & mask {
		case mask:
			empty = false
		case 0:
			full = false
		default:
			return bmMixed
		}
	}
	switch {
	case full && empty: // n == 0
		return bmEmpty
	case full:
		return bmFull
	case empty:
		return bmEmpty
	}
	return bmMixed
}

func bitSet(bits []byte, i int) bool { return bits[i>>3]&(0x80>>(i&7)) != 0 }

func setBit(bits []byte, i int) { bits[i>>3] |= 0x80 >> (i & 7) }

// runEnd returns the end of the run of equal bits starting at bit s,
// at most lim.
func runEnd(bits []byte, s, lim int) int {
	v := bitSet(bits, s)
	var same byte
	if v {
		same = 0xFF
	}
	j := s + 1
	for j < lim {
		if j&7 == 0 && j+8 <= lim && bits[j>>3] == same {
			j += 8
			continue
		}
		if bitSet(bits, j) != v {
			break
		}
		j++
	}
	return j
}
