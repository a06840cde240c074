package vhdx

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// writer writes a dynamic or fixed VHDX. Layout:
//
//	0        header section (identifier, 2 headers, 2 region tables)
//	1 MiB    log (log_size, left empty: a hole)
//	+log     metadata region (1 MiB)
//	+1 MiB   BAT region (rounded up to 1 MiB)
//	then     payload blocks, 1 MiB aligned: fixed in block order; dynamic
//	         in the order they are first written
type writer struct {
	t    disk.FileTarget
	name string

	size      int64 // virtual size, rounded up to 512
	bs        int64
	fixed     bool
	zeroState bool
	logSize   int64
	ratio     int64
	nBlocks   int64
	metaOff   int64
	batOff    int64
	batBytes  int64 // BAT region length
	dataOff   int64

	mu      sync.Mutex
	blocks  []uint64 // payload BAT entries
	written []bool   // fixed only: block has been written
	next    int64    // dynamic: next free file offset
	done    bool     // committed or closed

	zeroOnce sync.Once
	zeroBuf  []byte // read-only zeros for Zero on allocated blocks
}

const (
	writerLogicalSector  = 512
	writerPhysicalSector = 512 // as qemu; qemu-img reads 4096 ones an order of magnitude slower
	creator              = "ferry"
)

func create(ctx context.Context, t disk.Target, size int64, opts *disk.CreateOptions) (disk.Writer, error) {
	ft, ok := t.(disk.FileTarget)
	if !ok {
		return nil, fmt.Errorf("vhdx: writing needs a seekable file, not a stream: %w", errs.ErrInvalidArgument)
	}
	name := ft.Name()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("vhdx %s: %s: %w", name, fmt.Sprintf(format, args...), errs.ErrInvalidArgument)
	}
	if err := Format().CheckOptions(opts); err != nil {
		return nil, err
	}
	if opts != nil && opts.BackingFile != "" {
		return nil, fmt.Errorf("vhdx %s: writing differencing images (backing file %q): %w", name, opts.BackingFile, errs.ErrUnimplemented)
	}
	if size < 0 {
		return nil, bad("negative size %d", size)
	}
	size = (size + writerLogicalSector - 1) / writerLogicalSector * writerLogicalSector
	if size > maxVirtualSize {
		return nil, bad("size %d is larger than the 64 TiB VHDX allows", size)
	}
	w := &writer{t: ft, name: name, size: size}
	switch s := opts.Opt("subformat", "dynamic"); s {
	case "dynamic":
	case "fixed":
		w.fixed = true
	default:
		return nil, bad("subformat %q (want dynamic or fixed)", s)
	}
	bs, err := parseSize(opts.Opt("block_size", "0"))
	if err != nil {
		return nil, bad("block_size: %v", err)
	}
	if bs == 0 {
		bs = defaultBlockSize(size)
	}
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return nil, bad("block_size %d is not a power of two from 1 MiB to 256 MiB", bs)
	}
	w.bs = bs
	if w.logSize, err = parseSize(opts.Opt("log_size", "1M")); err != nil {
		return nil, bad("log_size: %v", err)
	}
	if w.logSize < mib || w.logSize%mib != 0 || w.logSize >= 4*gib {
		return nil, bad("log_size %d is not a multiple of 1 MiB from 1 MiB to below 4 GiB", w.logSize)
	}
	if w.zeroState, err = parseBool(opts.Opt("block_state_zero", "on")); err != nil {
		return nil, bad("block_state_zero: %v", err)
	}

	w.ratio = chunkRatio(writerLogicalSector, bs)
	w.nBlocks = (size + bs - 1) / bs
	entries := batEntries(w.nBlocks, w.ratio, false)
	if entries*8 > maxBATBytes {
		return nil, bad("a %d-byte disk with %d MiB blocks needs a BAT over %d MiB; choose a larger block_size", size, bs/mib, maxBATBytes/mib)
	}
	w.batBytes = max(mib, (entries*8+mib-1)/mib*mib)
	if w.nBlocks == 0 {
		// qemu computes the entries of an empty disk as 0 + (0-1)/ratio
		// in unsigned 32-bit arithmetic and refuses a BAT region smaller
		// than that; give it one (it stays a hole in the file).
		w.batBytes = (int64(uint32(0xffffffff)/uint32(w.ratio))*8 + mib - 1) / mib * mib
	}
	w.metaOff = headerSectionSize + w.logSize
	w.batOff = w.metaOff + mib
	w.dataOff = w.batOff + w.batBytes
	w.blocks = make([]uint64, w.nBlocks)
	if w.fixed {
		w.written = make([]bool, w.nBlocks)
		for i := range w.blocks {
			w.blocks[i] = uint64(w.dataOff+int64(i)*bs) | stateFull
		}
	}
	w.next = w.dataOff
	return w, nil
}

func (w *writer) Size() int64      { return w.size }
func (w *writer) Sequential() bool { return false }

func (w *writer) checkRange(op string, off, n int64) error {
	if off < 0 || n < 0 || off > w.size || n > w.size-off {
		return fmt.Errorf("vhdx %s: %s %d bytes at %d outside the %d-byte disk: %w", w.name, op, n, off, w.size, errs.ErrInvalidArgument)
	}
	return nil
}

// hostRuns maps [off, off+n) to file ranges, merging blocks that follow
// each other in the file, and calls fn for each run with the offset into
// the virtual range.
func (w *writer) hostRuns(off, n int64, hosts []int64, fn func(rel, host, n int64) error) error {
	var runRel, runHost, runLen int64
	for pos, k := off, 0; pos < off+n; k++ {
		within := pos % w.bs
		m := min(w.bs-within, off+n-pos)
		h := hosts[k]
		if h < 0 { // nothing to write in this block
			pos += m
			continue
		}
		h += within
		if runLen > 0 && runHost+runLen == h && runRel+runLen == pos-off {
			runLen += m
		} else {
			if runLen > 0 {
				if err := fn(runRel, runHost, runLen); err != nil {
					return err
				}
			}
			runRel, runHost, runLen = pos-off, h, m
		}
		pos += m
	}
	if runLen > 0 {
		return fn(runRel, runHost, runLen)
	}
	return nil
}

func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	if err := w.checkRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	first, last := off/w.bs, (off+int64(len(p))-1)/w.bs
	var small [4]int64
	hosts := small[:0]
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return 0, fmt.Errorf("vhdx %s: write after commit or close: %w", w.name, errs.ErrFailedPrecondition)
	}
	for i := first; i <= last; i++ {
		e := w.blocks[i]
		if w.fixed {
			w.written[i] = true
		} else if e&batStateMask != stateFull {
			e = uint64(w.next) | stateFull
			w.blocks[i] = e
			w.next += w.bs
		}
		hosts = append(hosts, int64(e>>batOffsetShift)*mib)
	}
	w.mu.Unlock()
	err := w.hostRuns(off, int64(len(p)), hosts, func(rel, host, n int64) error {
		k, err := w.t.WriteAt(p[rel:rel+n], host)
		if err == nil && int64(k) < n {
			err = io.ErrShortWrite
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("vhdx %s: write %d bytes at %d: %w", w.name, len(p), off, err)
	}
	return len(p), nil
}

func (w *writer) Zero(off, n int64) error {
	if err := w.checkRange("zero", off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	first, last := off/w.bs, (off+n-1)/w.bs
	var small [4]int64
	hosts := small[:0]
	needWrite := false
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return fmt.Errorf("vhdx %s: zero after commit or close: %w", w.name, errs.ErrFailedPrecondition)
	}
	for i := first; i <= last; i++ {
		e := w.blocks[i]
		bStart, bEnd := i*w.bs, min((i+1)*w.bs, w.size)
		whole := off <= bStart && off+n >= bEnd
		switch {
		case w.fixed && w.written[i], !w.fixed && e&batStateMask == stateFull:
			// Allocated: the bytes must be overwritten.
			hosts = append(hosts, int64(e>>batOffsetShift)*mib)
			needWrite = true
			continue
		case !w.fixed && whole && w.zeroState:
			w.blocks[i] = stateZero
		}
		hosts = append(hosts, -1) // reads as zeros already
	}
	w.mu.Unlock()
	if !needWrite {
		return nil
	}
	w.zeroOnce.Do(func() { w.zeroBuf = make([]byte, mib) })
	err := w.hostRuns(off, n, hosts, func(_, host, n int64) error {
		for n > 0 {
			m := min(n, int64(len(w.zeroBuf)))
			k, err := w.t.WriteAt(w.zeroBuf[:m], host)
			if err == nil && int64(k) < m {
				err = io.ErrShortWrite
			}
			if err != nil {
				return err
			}
			host, n = host+m, n-m
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vhdx %s: zero %d bytes at %d: %w", w.name, n, off, err)
	}
	return nil
}

func (w *writer) Commit(ctx context.Context) error {
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return fmt.Errorf("vhdx %s: commit after commit or close: %w", w.name, errs.ErrFailedPrecondition)
	}
	w.done = true
	end := w.next
	if w.fixed {
		end = w.dataOff + w.nBlocks*w.bs
	}
	w.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("vhdx %s: write %s: %w", w.name, what, err)
	}

	// BAT: payload entries with a (not present) sector bitmap entry after
	// every chunk ratio of them.
	entries := batEntries(w.nBlocks, w.ratio, false)
	bat := make([]byte, entries*8)
	for i, e := range w.blocks {
		binary.LittleEndian.PutUint64(bat[8*payloadIndex(int64(i), w.ratio):], e)
	}
	if err := w.put(bat, w.batOff); err != nil {
		return fail("BAT", err)
	}

	var params [8]byte
	binary.LittleEndian.PutUint32(params[0:], uint32(w.bs))
	if w.fixed {
		binary.LittleEndian.PutUint32(params[4:], paramLeaveBlocksAllocated)
	}
	var vsize [8]byte
	binary.LittleEndian.PutUint64(vsize[:], uint64(w.size))
	var lss, pss [4]byte
	binary.LittleEndian.PutUint32(lss[:], writerLogicalSector)
	binary.LittleEndian.PutUint32(pss[:], writerPhysicalSector)
	diskID, err := newGUID()
	if err != nil {
		return fail("metadata", err)
	}
	meta := encodeMetadata([]metaItem{
		{guidFileParameters, metaIsRequired, params[:]},
		{guidVirtualSize, metaIsRequired | metaIsVirtualDisk, vsize[:]},
		{guidPage83, metaIsRequired | metaIsVirtualDisk, diskID[:]},
		{guidLogicalSector, metaIsRequired | metaIsVirtualDisk, lss[:]},
		{guidPhysicalSector, metaIsRequired | metaIsVirtualDisk, pss[:]},
	})
	if err := w.put(meta, w.metaOff); err != nil {
		return fail("metadata", err)
	}

	hs := make([]byte, region2Offset+regionTableSize)
	copy(hs, identSignature)
	copy(hs[8:], encodeUTF16(creator))
	fileWrite, err1 := newGUID()
	dataWrite, err2 := newGUID()
	if err1 != nil || err2 != nil {
		return fail("headers", fmt.Errorf("random guid: %w", errors.Join(err1, err2)))
	}
	h := header{seq: 1, fileWrite: fileWrite, dataWrite: dataWrite, version: 1,
		logLength: uint32(w.logSize), logOffset: uint64(headerSectionSize)}
	h.encode(hs[header1Offset:])
	h.seq++
	h.encode(hs[header2Offset:])
	regions := []regionEntry{
		{id: guidBATRegion, off: uint64(w.batOff), length: uint32(w.batBytes), required: true},
		{id: guidMetadataRegion, off: uint64(w.metaOff), length: uint32(mib), required: true},
	}
	encodeRegionTable(hs[region1Offset:], regions)
	encodeRegionTable(hs[region2Offset:], regions)
	if err := w.put(hs, 0); err != nil {
		return fail("header section", err)
	}
	if err := w.t.Truncate(max(end, w.dataOff)); err != nil {
		return fail("file size", err)
	}
	return nil
}

func (w *writer) put(b []byte, off int64) error {
	if len(b) == 0 {
		return nil
	}
	n, err := w.t.WriteAt(b, off)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// Close releases the writer; without Commit the output is abandoned (the
// registry removes the file).
func (w *writer) Close() error {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
	return nil
}

// newGUID returns a random (version 4) GUID.
func newGUID() (guid, error) {
	var g guid
	if _, err := rand.Read(g[:]); err != nil {
		return g, err
	}
	g[7] = g[7]&0x0f | 0x40 // version 4, high nibble of the third field
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g, nil
}
