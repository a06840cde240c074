package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/ferry-project/ferry/internal/disk"
)

const (
	// maxCheckClusters bounds the per-cluster bookkeeping of Check (five
	// bytes a cluster).
	maxCheckClusters = 1 << 27
	maxProblems      = 300
	// qemu's limits on the snapshot table and the bitmap directory
	maxSnapshotTable = 64 << 20
	maxBitmapDir     = 64 << 20
	maxSnapshotExtra = 1024
	bitmapOffsetMask = 0x00fffffffffffe00
	// reserved bits, which qemu-img check reports
	l1Reserved   = 0x7f000000000001ff
	l2Reserved   = 0x3f000000000001fe
	reftReserved = 0x1ff
)

// Uses of a host cluster, for spotting data placed over metadata.
const (
	useMeta = 1 << iota
	useData
	useCompressed
)

var _ disk.Checker = (*image)(nil)

// where names the table entry a reference comes from. It is formatted
// only when a problem is reported, so that the walk costs no allocation.
type where struct {
	snap  int    // snapshot index, -1 for the active image
	table string // "L1 table", "L2 table", ...; "" for none
	off   int64  // the table's offset
	index int64  // entry index, -1 for the table itself
}

func (w where) String() string {
	s := ""
	if w.snap >= 0 {
		s = fmt.Sprintf("snapshot %d ", w.snap)
	}
	if w.table == "" {
		return s + "image"
	}
	if w.index < 0 {
		return fmt.Sprintf("%s%s at %#x", s, w.table, w.off)
	}
	return fmt.Sprintf("%s%s %#x entry %d", s, w.table, w.off, w.index)
}

var top = where{snap: -1, index: -1}

// checker rebuilds the refcounts an image should have.
type checker struct {
	img    *image
	res    *disk.CheckResult
	refs   []uint16 // computed references, saturating
	stored []uint16 // refcounts the image records, saturating
	use    []uint8
	be     binary.ByteOrder
}

func (k *checker) problem(counter *int, format string, args ...any) {
	if counter != nil {
		*counter++
	}
	if len(k.res.Problems) < maxProblems {
		k.res.Problems = append(k.res.Problems, fmt.Sprintf(format, args...))
	}
}

func (k *checker) corruption(format string, args ...any) {
	k.problem(&k.res.Corruptions, "ERROR "+format, args...)
}

// inc counts one reference to every cluster of [off, off+n); w and what
// say where it comes from and what it is.
func (k *checker) inc(off, n int64, use uint8, w where, what string) {
	img := k.img
	if n <= 0 {
		return
	}
	if off < 0 || off > img.fsize+img.cs || off+n-img.fsize >= img.cs {
		k.corruption("%v: %s at %#x (%d bytes) exceeds the end of the file", w, what, off, n)
		return
	}
	for c := off >> img.bits; c <= (off+n-1)>>img.bits; c++ {
		if k.refs[c] < 0xffff {
			k.refs[c]++
		}
		if u := k.use[c]; u&^use != 0 && (use|u)&useMeta != 0 || u|use == useData|useCompressed {
			k.corruption("cluster %d (%#x) is used both as metadata and as data (%v: %s)", c, c<<img.bits, w, what)
		}
		k.use[c] |= use
	}
}

// Check walks the L1 and L2 tables (of the active image and of internal
// snapshots), the refcount structures and bitmaps, rebuilds the refcounts
// the image should have and compares them with the stored ones, as
// qemu-img check does.
func (img *image) Check(ctx context.Context) (disk.CheckResult, error) {
	res := disk.CheckResult{Filename: img.name, Format: "qcow2"}
	n := (img.fsize+img.cs-1)>>img.bits + 1
	if n > maxCheckClusters {
		return res, fmt.Errorf("qcow2 %s: file of %d clusters is too large to check", img.name, n)
	}
	k := &checker{img: img, res: &res, refs: make([]uint16, n), stored: make([]uint16, n), use: make([]uint8, n), be: binary.BigEndian}
	h := img.h
	k.inc(0, img.cs, useMeta, top, "header")
	// active L1
	var allocated int64
	if h.l1Size > 0 {
		l1 := where{snap: -1, table: "L1 table", off: int64(h.l1Off), index: -1}
		k.inc(l1.off, int64(h.l1Size)*8, useMeta, l1, "L1 table")
		for i, e := range img.l1 {
			if i%256 == 0 {
				if err := ctx.Err(); err != nil {
					return res, err
				}
			}
			l1.index = int64(i)
			allocated += k.l2(k.l1Entry(e, l1))
		}
	}
	if err := k.snapshots(ctx); err != nil {
		return res, err
	}
	k.inc(int64(h.refOff), int64(h.refClusters)*img.cs, useMeta, top, "refcount table")
	k.bitmaps()
	k.refblocks()
	// compare
	highest := int64(-1)
	fileClusters := (img.fsize + img.cs - 1) >> img.bits
	for c := range k.refs {
		s, r := k.stored[c], k.refs[c]
		if int64(c) >= fileClusters && r == 0 {
			break // past the end of the file: qemu looks no further
		}
		if s > 0 || r > 0 {
			highest = int64(c)
		}
		switch {
		case s < r:
			k.corruption("cluster %d refcount=%d reference=%d (refcount lower than its uses)", c, s, r)
		case s > r:
			k.problem(&res.Leaks, "Leaked cluster %d refcount=%d reference=%d", c, s, r)
		}
	}
	k.copied(ctx)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.ImageEndOffset = (highest + 1) * img.cs
	res.TotalClusters = (img.size + img.cs - 1) >> img.bits
	res.AllocatedClusts = allocated
	res.AllocatedBytes = allocated * img.cs
	return res, nil
}

// readTable reads a table for the check; a failure is a check error.
func (k *checker) readTable(off, n int64, what string) []byte {
	if off < 0 || n < 0 || off > k.img.fsize || n > k.img.fsize-off {
		return nil // reported by inc
	}
	b := make([]byte, n)
	if err := readFull(k.img.f, b, off); err != nil {
		k.problem(&k.res.CheckErrors, "cannot read %s at %#x: %v", what, off, err)
		return nil
	}
	return b
}

// l1Entry reports reserved bits of an L1 entry and returns its L2 offset.
func (k *checker) l1Entry(e uint64, w where) (int64, where) {
	if e&l1Reserved != 0 {
		k.corruption("%v: reserved bits set in %#x", w, e)
	}
	return int64(e & offsetMask), w
}

// l2 counts an L2 table and the clusters it maps; it returns how many
// virtual clusters it allocates.
func (k *checker) l2(off int64, from where) int64 {
	img := k.img
	if off == 0 {
		return 0
	}
	if off&(img.cs-1) != 0 {
		k.corruption("%v: L2 table offset %#x is not cluster aligned", from, off)
		return 0
	}
	k.inc(off, img.cs, useMeta, from, "L2 table")
	t := k.readTable(off, img.cs, "L2 table")
	var allocated int64
	w := where{snap: from.snap, table: "L2 table", off: off}
	for i := 0; i < len(t); i += 8 {
		e := k.be.Uint64(t[i:])
		if e == 0 {
			continue
		}
		w.index = int64(i / 8)
		if e&flagCompressed != 0 {
			if e&flagCopied != 0 {
				k.corruption("%v: compressed cluster has the COPIED flag", w)
			}
			x := compressedShift - (img.bits - 8)
			coff := int64(e & (1<<x - 1))
			nsec := int64(e>>x) & (1<<(img.bits-8) - 1)
			k.inc(coff, (nsec+1)*512-coff&511, useCompressed, w, "compressed cluster")
			allocated++
			continue
		}
		if e&l2Reserved != 0 {
			k.corruption("%v: reserved bits set in %#x", w, e)
		}
		host := int64(e & offsetMask)
		if host == 0 {
			continue
		}
		allocated++
		if host&(img.cs-1) != 0 {
			// counted anyway, over the clusters it touches, as qemu does
			k.corruption("%v: data cluster offset %#x is not cluster aligned", w, host)
		}
		k.inc(host, img.cs, useData, w, "data cluster")
	}
	return allocated
}

// l1 counts a snapshot's L1 table and everything it maps.
func (k *checker) l1(off int64, size uint32, snap int) {
	img := k.img
	w := where{snap: snap, table: "L1 table", off: off, index: -1}
	if int64(size) > maxL1Bytes/8 {
		k.corruption("%v: %d entries is too many", w, size)
		return
	}
	if off&(img.cs-1) != 0 {
		k.corruption("%v: offset not cluster aligned", w)
		return
	}
	k.inc(off, int64(size)*8, useMeta, w, "L1 table")
	t := k.readTable(off, int64(size)*8, "snapshot L1 table")
	for i := 0; i < len(t); i += 8 {
		w.index = int64(i / 8)
		k.l2(k.l1Entry(k.be.Uint64(t[i:]), w))
	}
}

// snapshots counts the snapshot table and every snapshot's tables.
func (k *checker) snapshots(ctx context.Context) error {
	h, img := k.img.h, k.img
	if h.nbSnapshots == 0 {
		return nil
	}
	if int64(h.snapOff)&(img.cs-1) != 0 || h.snapOff == 0 {
		k.corruption("snapshot table offset %#x is not cluster aligned", h.snapOff)
		return nil
	}
	off := int64(h.snapOff)
	for i := range h.nbSnapshots {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr := k.readTable(off, 40, "snapshot header")
		if hdr == nil {
			k.corruption("snapshot %d header at %#x is beyond the end of the file", i, off)
			return nil
		}
		l1Off := int64(k.be.Uint64(hdr))
		l1Size := k.be.Uint32(hdr[8:])
		idLen := int64(k.be.Uint16(hdr[12:]))
		nameLen := int64(k.be.Uint16(hdr[14:]))
		extra := int64(k.be.Uint32(hdr[36:]))
		if extra > maxSnapshotExtra {
			k.corruption("snapshot %d: extra data of %d bytes is too large", i, extra)
			return nil
		}
		k.l1(l1Off, l1Size, int(i))
		off += (40 + extra + idLen + nameLen + 7) &^ 7
		if off-int64(h.snapOff) > maxSnapshotTable {
			k.corruption("snapshot table is too large")
			return nil
		}
	}
	k.inc(int64(h.snapOff), off-int64(h.snapOff), useMeta, top, "snapshot table")
	return nil
}

// bitmaps counts the bitmap directory, bitmap tables and bitmap data.
func (k *checker) bitmaps() {
	h, img := k.img.h, k.img
	if !h.hasBitmaps || h.nbBitmaps == 0 {
		return
	}
	if h.bmDirSize > maxBitmapDir || int64(h.bmDirOff)&(img.cs-1) != 0 {
		k.corruption("bitmap directory at %#x (%d bytes) is invalid", h.bmDirOff, h.bmDirSize)
		return
	}
	dirOff, dirSize := int64(h.bmDirOff), int64(h.bmDirSize)
	k.inc(dirOff, dirSize, useMeta, top, "bitmap directory")
	dir := k.readTable(dirOff, dirSize, "bitmap directory")
	for i, p := uint32(0), int64(0); i < h.nbBitmaps && dir != nil; i++ {
		if p+24 > int64(len(dir)) {
			k.corruption("bitmap directory ends inside entry %d", i)
			return
		}
		e := dir[p:]
		tOff := int64(k.be.Uint64(e) & bitmapOffsetMask)
		tSize := int64(k.be.Uint32(e[8:]))
		nameLen := int64(k.be.Uint16(e[18:]))
		extra := int64(k.be.Uint32(e[20:]))
		p += (24 + extra + nameLen + 7) &^ 7
		if tSize*8 > maxL1Bytes || tOff&(img.cs-1) != 0 {
			k.corruption("bitmap %d: table at %#x (%d entries) is invalid", i, tOff, tSize)
			continue
		}
		w := where{snap: -1, table: "bitmap table", off: tOff, index: -1}
		k.inc(tOff, tSize*8, useMeta, w, "bitmap table")
		t := k.readTable(tOff, tSize*8, "bitmap table")
		for j := 0; j < len(t); j += 8 {
			if off := int64(k.be.Uint64(t[j:]) & bitmapOffsetMask); off != 0 {
				w.index = int64(j / 8)
				k.inc(off, img.cs, useMeta, w, "bitmap data")
			}
		}
	}
}

// refblocks counts the refcount blocks and reads the stored refcounts.
func (k *checker) refblocks() {
	h, img := k.img.h, k.img
	reft := k.readTable(int64(h.refOff), int64(h.refClusters)*img.cs, "refcount table")
	order := h.refcountOrder
	perBlock := img.cs * 8 >> order
	for i := 0; i < len(reft); i += 8 {
		e := k.be.Uint64(reft[i:])
		off := int64(e & reftOffsetMask)
		if off == 0 {
			continue
		}
		idx := int64(i / 8)
		counted := true
		if e&reftReserved != 0 {
			// qemu reads the block but does not count it
			k.corruption("refcount table entry %d has reserved bits set", idx)
			counted = false
		}
		if off&(img.cs-1) != 0 {
			k.corruption("refcount block %d offset %#x is not cluster aligned", idx, off)
			continue
		}
		if off >= img.fsize {
			k.corruption("refcount block %d at %#x is outside the image", idx, off)
			continue
		}
		if counted {
			k.inc(off, img.cs, useMeta, where{snap: -1, table: "refcount table", off: int64(h.refOff), index: idx}, "refcount block")
		}
		blk := k.readTable(off, img.cs, "refcount block")
		if blk == nil {
			continue
		}
		base := idx * perBlock
		for j := range perBlock {
			c := base + j
			if c >= int64(len(k.stored)) {
				break
			}
			k.stored[c] = uint16(min(refcount(blk, j, order), 0xffff))
		}
	}
}

// refcount reads entry i of a refcount block with 2^order-bit entries.
func refcount(b []byte, i int64, order uint32) uint64 {
	switch order {
	case 0, 1, 2:
		w := int64(1) << order
		per := 8 / w
		return uint64(b[i/per]>>((i%per)*w)) & (1<<w - 1)
	case 3:
		return uint64(b[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	default:
		return binary.BigEndian.Uint64(b[i*8:])
	}
}

// copied checks that the COPIED flags of the active tables say exactly
// which clusters have refcount 1.
func (k *checker) copied(ctx context.Context) {
	img := k.img
	stored := func(off int64) uint16 {
		if c := off >> img.bits; c < int64(len(k.stored)) {
			return k.stored[c]
		}
		return 0
	}
	for i, e := range img.l1 {
		if ctx.Err() != nil {
			return
		}
		off := int64(e & offsetMask)
		if off == 0 || off&(img.cs-1) != 0 || off+img.cs > img.fsize {
			continue
		}
		if rc := stored(off); (rc == 1) != (e&flagCopied != 0) {
			k.corruption("OFLAG_COPIED L2 cluster: L1 entry %d (%#x) refcount=%d", i, off, rc)
		}
		t := k.readTable(off, img.cs, "L2 table")
		for j := 0; j < len(t); j += 8 {
			d := k.be.Uint64(t[j:])
			host := int64(d & offsetMask)
			if d&flagCompressed != 0 || host == 0 || host&(img.cs-1) != 0 {
				continue
			}
			if rc := stored(host); (rc == 1) != (d&flagCopied != 0) {
				k.corruption("OFLAG_COPIED data cluster: L2 table %#x entry %d (%#x) refcount=%d", off, j/8, host, rc)
			}
		}
	}
}
