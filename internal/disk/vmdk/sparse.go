package vmdk

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/zlib"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

const (
	// Cache budgets per sparse extent.
	gtCacheBytes    = 32 << 20
	grainCacheBytes = 16 << 20
)

// sparseExtent is a hosted sparse extent file (KDMV): monolithicSparse,
// streamOptimized, or one piece of a twoGbMaxExtentSparse disk.
type sparseExtent struct {
	f        disk.File
	name     string
	h        header
	fileSize int64
	size     int64 // capacity in bytes
	grain    int64 // bytes
	numGTEs  int64
	nGrains  int64
	gtBytes  int64
	gd       []uint32
	stream   bool // the header said GD_AT_END; the footer was used
	// compressed: grains are deflated; markers: each grain starts with
	// {lba, size}; zeroGrain: GTE 1 means a zeroed grain.
	compressed, markers, zeroGrain bool
	desc                           *descriptor // embedded, or nil
	// meta holds the header, descriptor, grain directory and grain
	// tables, sorted and merged, so that grains can be checked against
	// them.
	meta   []span
	gts    *lru[[]uint32]
	grains *lru[[]byte]
	zpool  sync.Pool // zlib readers
	cpool  sync.Pool // compressed grain buffers
}

type span struct{ off, end int64 }

// openSparse reads and checks the header, the footer of a stream, the
// embedded descriptor and the grain directory of a sparse extent file.
func openSparse(f disk.File) (*sparseExtent, error) {
	name := f.Name()
	fsz := f.Size()
	if fsz < sectorSize {
		return nil, fmt.Errorf("vmdk %s: file of %d bytes is too short for a sparse header: %w", name, fsz, errs.ErrCorrupt)
	}
	b := make([]byte, sectorSize)
	if err := readFull(f, b, 0); err != nil {
		return nil, fmt.Errorf("vmdk %s: read header: %w", name, err)
	}
	h, ok := parseHeader(b)
	if !ok {
		return nil, fmt.Errorf("vmdk %s: no sparse extent magic: %w", name, errs.ErrCorrupt)
	}
	e := &sparseExtent{f: f, name: name, fileSize: fsz}
	if h.gdOffset == gdAtEnd {
		fh, err := readFooter(f, fsz)
		if err != nil {
			return nil, err
		}
		h, e.stream = fh, true
	}
	if err := h.validate(name); err != nil {
		return nil, err
	}
	e.h = h
	e.size = int64(h.capacity) * sectorSize
	e.grain = int64(h.grainSize) * sectorSize
	e.numGTEs = int64(h.numGTEs)
	e.gtBytes = e.numGTEs * 4
	e.nGrains = h.numGrains()
	e.compressed = h.compressed()
	e.markers = h.flags&flagMarkers != 0
	e.zeroGrain = h.flags&flagZeroGrain != 0
	e.gts = newLRU[[]uint32](max(64, int(gtCacheBytes/e.gtBytes)))
	e.grains = newLRU[[]byte](max(2, int(grainCacheBytes/e.grain)))

	if h.overhead > uint64(fsz/sectorSize) {
		return nil, fmt.Errorf("vmdk %s: file of %d bytes ends before the first grain at sector %d (truncated?): %w", name, fsz, h.overhead, errs.ErrCorrupt)
	}
	e.meta = append(e.meta, span{0, sectorSize})
	if h.descOffset != 0 && h.descSize != 0 {
		off, err := e.region("embedded descriptor", h.descOffset, int64(h.descSize)*sectorSize)
		if err != nil {
			return nil, err
		}
		text := make([]byte, h.descSize*sectorSize)
		if err := readFull(f, text, off); err != nil {
			return nil, fmt.Errorf("vmdk %s: read embedded descriptor: %w", name, err)
		}
		if e.desc, err = parseDescriptor(name, text); err != nil {
			return nil, err
		}
		e.meta = append(e.meta, span{off, off + int64(len(text))})
	}
	numGTs := h.numGTs()
	if numGTs*4 > maxTableBytes {
		return nil, fmt.Errorf("vmdk %s: grain directory of %d entries is too large: %w", name, numGTs, errs.ErrCorrupt)
	}
	if numGTs > 0 {
		gdOff, err := e.region("grain directory", h.gdOffset, numGTs*4)
		if err != nil {
			return nil, err
		}
		raw := make([]byte, numGTs*4)
		if err := readFull(f, raw, gdOff); err != nil {
			return nil, fmt.Errorf("vmdk %s: read grain directory: %w", name, err)
		}
		e.gd = make([]uint32, numGTs)
		for i := range e.gd {
			e.gd[i] = binary.LittleEndian.Uint32(raw[i*4:])
		}
		e.meta = append(e.meta, span{gdOff, gdOff + int64(len(raw))})
	}
	if err := e.checkTables(); err != nil {
		return nil, err
	}
	return e, nil
}

// region range-checks a table at a sector offset and returns its byte
// offset.
func (e *sparseExtent) region(what string, sector uint64, n int64) (int64, error) {
	if sector == 0 || sector > uint64(e.fileSize/sectorSize) || int64(sector)*sectorSize+n > e.fileSize {
		return 0, fmt.Errorf("vmdk %s: %s at sector %d (%d bytes) beyond end of file at %d: %w", e.name, what, sector, n, e.fileSize, errs.ErrCorrupt)
	}
	return int64(sector) * sectorSize, nil
}

// checkTables checks that every grain table lies inside the file and that
// no two of them, nor a table and the header, descriptor or directory,
// overlap. It leaves e.meta sorted and merged.
func (e *sparseExtent) checkTables() error {
	type tspan struct {
		span
		gt int // -1: header, descriptor or directory
	}
	all := make([]tspan, 0, len(e.meta)+len(e.gd))
	for _, m := range e.meta {
		all = append(all, tspan{m, -1})
	}
	for i, v := range e.gd {
		if v == 0 {
			continue
		}
		off, err := e.region(fmt.Sprintf("grain table %d", i), uint64(v), e.gtBytes)
		if err != nil {
			return err
		}
		all = append(all, tspan{span{off, off + e.gtBytes}, i})
	}
	slices.SortFunc(all, func(a, b tspan) int { return cmp.Compare(a.off, b.off) })
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if b.off < a.end {
			what := func(t tspan) string {
				if t.gt < 0 {
					return fmt.Sprintf("metadata at %#x", t.off)
				}
				return fmt.Sprintf("grain table %d at %#x", t.gt, t.off)
			}
			return fmt.Errorf("vmdk %s: %s overlaps %s: %w", e.name, what(b), what(a), errs.ErrCorrupt)
		}
	}
	e.meta = e.meta[:0]
	for _, t := range all {
		if n := len(e.meta); n > 0 && e.meta[n-1].end >= t.off {
			e.meta[n-1].end = max(e.meta[n-1].end, t.end)
			continue
		}
		e.meta = append(e.meta, t.span)
	}
	return nil
}

// readFooter reads the footer of a stream whose header says GD_AT_END: a
// footer marker, a copy of the header with the real gdOffset, and an
// end-of-stream marker, in the last three sectors.
func readFooter(f disk.File, fsz int64) (header, error) {
	end := fsz &^ (sectorSize - 1)
	if end < 4*sectorSize {
		return header{}, fmt.Errorf("vmdk %s: stream of %d bytes is too short for its footer (truncated?): %w", f.Name(), fsz, errs.ErrCorrupt)
	}
	b := make([]byte, 3*sectorSize)
	if err := readFull(f, b, end-3*sectorSize); err != nil {
		return header{}, fmt.Errorf("vmdk %s: read footer: %w", f.Name(), err)
	}
	fm, eos := parseMarker(b), parseMarker(b[2*sectorSize:])
	h, ok := parseHeader(b[sectorSize:])
	if !ok || fm.size != 0 || fm.typ != markerFooter || eos != (marker{}) {
		return header{}, fmt.Errorf("vmdk %s: header puts the grain directory at the end but the file does not end with footer and end-of-stream markers (truncated?): %w", f.Name(), errs.ErrCorrupt)
	}
	if h.gdOffset == gdAtEnd {
		return header{}, fmt.Errorf("vmdk %s: footer does not say where the grain directory is: %w", f.Name(), errs.ErrCorrupt)
	}
	return h, nil
}

// gt returns grain table idx, loaded, checked and cached; nil when the
// directory entry is 0 (no table: every grain unallocated).
func (e *sparseExtent) gt(idx int64) ([]uint32, error) {
	if e.gd[idx] == 0 {
		return nil, nil
	}
	if t, ok := e.gts.get(idx); ok {
		return t, nil
	}
	t, err := e.loadGT(idx)
	if err != nil {
		return nil, err
	}
	e.gts.put(idx, t)
	return t, nil
}

// loadGT reads grain table idx and checks every entry that maps a grain
// inside the capacity: the grain must lie in the file and outside the
// metadata.
func (e *sparseExtent) loadGT(idx int64) ([]uint32, error) {
	raw := make([]byte, e.gtBytes)
	if err := readFull(e.f, raw, int64(e.gd[idx])*sectorSize); err != nil {
		return nil, fmt.Errorf("vmdk %s: read grain table %d: %w", e.name, idx, err)
	}
	t := make([]uint32, e.numGTEs)
	for j := range t {
		t[j] = binary.LittleEndian.Uint32(raw[j*4:])
	}
	for j, v := range t {
		g := idx*e.numGTEs + int64(j)
		if g >= e.nGrains {
			break
		}
		if err := e.checkGTE(g, v); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// grainFootprint is the part of the file a grain entry must own: the whole
// grain (within the capacity) when uncompressed, the marker sector when
// compressed.
func (e *sparseExtent) grainFootprint(g int64, v uint32) span {
	off := int64(v) * sectorSize
	if e.compressed {
		return span{off, off + min(sectorSize, e.fileSize-off)}
	}
	return span{off, off + min(e.grain, e.size-g*e.grain)}
}

func (e *sparseExtent) checkGTE(g int64, v uint32) error {
	if v == 0 || (v == 1 && e.zeroGrain) {
		return nil
	}
	off := int64(v) * sectorSize
	if off >= e.fileSize {
		return fmt.Errorf("vmdk %s: grain %d at sector %d beyond end of file: %w", e.name, g, v, errs.ErrCorrupt)
	}
	fp := e.grainFootprint(g, v)
	if fp.end > e.fileSize {
		return fmt.Errorf("vmdk %s: grain %d at sector %d runs past end of file: %w", e.name, g, v, errs.ErrCorrupt)
	}
	if e.overlapsMeta(fp) {
		return fmt.Errorf("vmdk %s: grain %d at sector %d overlaps the extent's metadata: %w", e.name, g, v, errs.ErrCorrupt)
	}
	return nil
}

func (e *sparseExtent) overlapsMeta(s span) bool {
	i, _ := slices.BinarySearchFunc(e.meta, s.off, func(m span, off int64) int {
		if m.end <= off {
			return -1
		}
		if m.off > off {
			return 1
		}
		return 0
	})
	return i < len(e.meta) && e.meta[i].off < s.end
}

// gte returns the grain table entry of grain g.
func (e *sparseExtent) gte(g int64) (uint32, error) {
	t, err := e.gt(g / e.numGTEs)
	if err != nil || t == nil {
		return 0, err
	}
	return t[g%e.numGTEs], nil
}

// grainKind classifies a grain table entry.
func (e *sparseExtent) grainKind(v uint32) disk.ExtentKind {
	switch {
	case v == 0:
		return disk.Unallocated
	case v == 1 && e.zeroGrain:
		return disk.Zero
	}
	return disk.Data
}

// readAt fills p with the extent's bytes at off (extent-relative, inside
// the capacity). Unallocated runs are passed to under. Contiguous
// uncompressed grains are read with one ReadAt; compressed grains are
// inflated in parallel.
func (e *sparseExtent) readAt(p []byte, off int64, under func(p []byte, off int64) error) error {
	type job struct {
		g   int64
		v   uint32
		in  int64
		dst []byte
	}
	var jobs []job
	// the pending run of unallocated, zero or contiguous raw grains
	var (
		runKind  disk.ExtentKind
		runStart int   // index in p
		runHost  int64 // file offset of the run's first byte (raw data)
		runLen   int
	)
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		q := p[runStart : runStart+runLen]
		runLen = 0
		switch runKind {
		case disk.Unallocated:
			return under(q, off+int64(runStart))
		case disk.Zero:
			clear(q)
			return nil
		}
		if err := readFull(e.f, q, runHost); err != nil {
			return fmt.Errorf("vmdk %s: read grain data at %#x: %w", e.name, runHost, err)
		}
		return nil
	}
	for pos := 0; pos < len(p); {
		o := off + int64(pos)
		g, in := o/e.grain, o%e.grain
		n := int(min(e.grain-in, int64(len(p)-pos)))
		v, err := e.gte(g)
		if err != nil {
			return err
		}
		kind := e.grainKind(v)
		switch {
		case kind == disk.Data && e.compressed:
			if err := flush(); err != nil {
				return err
			}
			jobs = append(jobs, job{g, v, in, p[pos : pos+n]})
		case kind == disk.Data:
			host := int64(v)*sectorSize + in
			if runLen > 0 && (runKind != disk.Data || runHost+int64(runLen) != host) {
				if err := flush(); err != nil {
					return err
				}
			}
			if runLen == 0 {
				runKind, runStart, runHost = disk.Data, pos, host
			}
			runLen += n
		default:
			if runLen > 0 && runKind != kind {
				if err := flush(); err != nil {
					return err
				}
			}
			if runLen == 0 {
				runKind, runStart = kind, pos
			}
			runLen += n
		}
		pos += n
	}
	if err := flush(); err != nil {
		return err
	}
	switch len(jobs) {
	case 0:
		return nil
	case 1:
		j := jobs[0]
		return e.readCompressed(j.g, j.v, j.in, j.dst)
	}
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, j := range jobs {
		g.Go(func() error { return e.readCompressed(j.g, j.v, j.in, j.dst) })
	}
	return g.Wait()
}

// readCompressed copies [in, in+len(dst)) of compressed grain g into dst.
// A whole grain is inflated straight into dst; a part of one goes through
// the grain cache.
func (e *sparseExtent) readCompressed(g int64, v uint32, in int64, dst []byte) error {
	if b, ok := e.grains.get(g); ok {
		copy(dst, b[in:])
		return nil
	}
	need := min(e.grain, e.size-g*e.grain)
	if in == 0 && int64(len(dst)) == need {
		return e.inflate(g, v, dst)
	}
	b := make([]byte, need)
	if err := e.inflate(g, v, b); err != nil {
		return err
	}
	e.grains.put(g, b)
	copy(dst, b[in:])
	return nil
}

// inflate decompresses grain g, stored at sector v, into out (the grain's
// bytes within the capacity). A stream that ends early leaves zeros, as
// writers compress only the part of the last grain inside the capacity.
func (e *sparseExtent) inflate(g int64, v uint32, out []byte) error {
	off := int64(v) * sectorSize
	avail := e.fileSize - off
	bp := e.compBuf()
	defer e.cpool.Put(bp)
	var comp []byte
	if e.markers {
		// Most compressed grains are smaller than a grain: one read.
		buf := (*bp)[:min(avail, e.grain+sectorSize)]
		if err := readFull(e.f, buf, off); err != nil {
			return fmt.Errorf("vmdk %s: read grain %d: %w", e.name, g, err)
		}
		if len(buf) < grainMarkerSize {
			return fmt.Errorf("vmdk %s: grain %d at sector %d: marker runs past end of file: %w", e.name, g, v, errs.ErrCorrupt)
		}
		m := parseMarker(buf)
		if m.size == 0 || int64(m.size) > 2*e.grain+sectorSize {
			return fmt.Errorf("vmdk %s: grain %d at sector %d: bad grain marker (compressed size %d): %w", e.name, g, v, m.size, errs.ErrCorrupt)
		}
		if m.val != uint64(g)*e.h.grainSize {
			return fmt.Errorf("vmdk %s: grain %d at sector %d: marker says LBA %d, want %d: %w", e.name, g, v, m.val, uint64(g)*e.h.grainSize, errs.ErrCorrupt)
		}
		total := grainMarkerSize + int64(m.size)
		if total > avail {
			return fmt.Errorf("vmdk %s: grain %d at sector %d: compressed data runs past end of file: %w", e.name, g, v, errs.ErrCorrupt)
		}
		if total > int64(len(buf)) {
			more := (*bp)[len(buf):total]
			if err := readFull(e.f, more, off+int64(len(buf))); err != nil {
				return fmt.Errorf("vmdk %s: read grain %d: %w", e.name, g, err)
			}
		}
		comp = (*bp)[grainMarkerSize:total]
	} else {
		comp = (*bp)[:min(avail, 2*e.grain)]
		if err := readFull(e.f, comp, off); err != nil {
			return fmt.Errorf("vmdk %s: read grain %d: %w", e.name, g, err)
		}
	}
	if err := e.decompress(comp, out); err != nil {
		return fmt.Errorf("vmdk %s: grain %d at sector %d: %w", e.name, g, v, err)
	}
	return nil
}

// compBuf returns a buffer for a compressed grain: up to two grains and a
// sector, the most a marker may claim, plus the marker.
func (e *sparseExtent) compBuf() *[]byte {
	if b, ok := e.cpool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 2*e.grain+2*sectorSize)
	return &b
}

// decompress inflates the zlib stream comp into out. The stream may hold
// up to a whole grain; out may be shorter (the last grain).
func (e *sparseExtent) decompress(comp, out []byte) error {
	return inflateInto(&e.zpool, comp, out, e.grain)
}

func inflateInto(pool *sync.Pool, comp, out []byte, grain int64) error {
	src := bytes.NewReader(comp)
	var zr io.ReadCloser
	if r, ok := pool.Get().(io.ReadCloser); ok {
		if err := r.(zlib.Resetter).Reset(src, nil); err != nil {
			return fmt.Errorf("bad zlib stream: %v: %w", err, errs.ErrCorrupt)
		}
		zr = r
	} else {
		r, err := zlib.NewReader(src)
		if err != nil {
			return fmt.Errorf("bad zlib stream: %v: %w", err, errs.ErrCorrupt)
		}
		zr = r
	}
	n, err := io.ReadFull(zr, out)
	switch {
	case err == nil:
		// The rest of the stream may hold the grain's bytes past the
		// capacity, never more than a grain; reading to its end checks
		// the Adler-32.
		extra := grain - int64(len(out))
		m, err := io.CopyN(io.Discard, zr, extra+1)
		if err != nil && err != io.EOF {
			return fmt.Errorf("bad zlib stream: %v: %w", err, errs.ErrCorrupt)
		}
		if m > extra {
			return fmt.Errorf("grain inflates to more than the grain size: %w", errs.ErrCorrupt)
		}
	case errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF:
		clear(out[n:])
	default:
		return fmt.Errorf("bad zlib stream: %v: %w", err, errs.ErrCorrupt)
	}
	pool.Put(zr)
	return nil
}

// runs reports the grain kinds of [off, off+n) (extent-relative) in
// ascending order, adjacent same kinds merged.
func (e *sparseExtent) runs(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		m := disk.NewMerger(yield)
		emit := m.Push
		end := off + n
		span := e.grain * e.numGTEs
		for o := off; o < end; {
			if err := ctx.Err(); err != nil {
				yield(disk.Extent{}, err)
				return
			}
			ti := o / span
			t, err := e.gt(ti)
			if err != nil {
				yield(disk.Extent{}, err)
				return
			}
			tEnd := min((ti+1)*span, end)
			if t == nil {
				if !emit(disk.Extent{Off: o, Len: tEnd - o, Kind: disk.Unallocated}) {
					return
				}
				o = tEnd
				continue
			}
			for o < tEnd {
				g := o / e.grain
				gEnd := min((g+1)*e.grain, tEnd)
				if !emit(disk.Extent{Off: o, Len: gEnd - o, Kind: e.grainKind(t[g%e.numGTEs])}) {
					return
				}
				o = gEnd
			}
		}
		m.Flush()
	}
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}
