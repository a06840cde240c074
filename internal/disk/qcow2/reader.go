package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"maps"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// Cache budgets, in bytes: parsed L2 tables and decompressed clusters.
const (
	l2CacheBytes   = 64 << 20
	dataCacheBytes = 32 << 20
	// maxGroupRead bounds one read of packed compressed clusters.
	maxGroupRead = 16 << 20
)

// image is an opened qcow2 file.
type image struct {
	f       disk.File
	name    string
	h       *header
	bits    uint
	cs      int64
	size    int64
	fsize   int64
	l1      []uint64
	backing disk.Image
	bsize   int64
	info    disk.Info
	workers int
	// the decoder is made on first use: many images hold no compressed
	// cluster
	decOnce sync.Once
	dec     decoder
	decErr  error
	// meta are the host ranges that data must not overlap: the header
	// cluster, the L1 table, the refcount table.
	meta [3][2]int64

	l2c *lru[int64, []byte]
	dc  *lru[int64, []byte]
}

func probe(f disk.File) bool {
	var b [8]byte
	if n, _ := f.ReadAt(b[:], 0); n < len(b) {
		return false
	}
	return binary.BigEndian.Uint32(b[:]) == magic && binary.BigEndian.Uint32(b[4:]) >= 2
}

func open(ctx context.Context, f disk.File, opts *disk.OpenOptions) (disk.Image, error) {
	img, err := openImage(f)
	if err != nil {
		return nil, err
	}
	if opts != nil && opts.Logger != nil {
		if img.h.incompat&(1<<incCorrupt) != 0 {
			opts.Logger.Warn("qcow2 image is marked corrupt; reading it anyway", "disk", img.name)
		}
		if img.h.incompat&(1<<incDirty) != 0 {
			opts.Logger.Info("qcow2 image is marked dirty; its refcounts may be stale", "disk", img.name)
		}
	}
	if img.h.backingFile != "" {
		if opts == nil || opts.OpenBacking == nil {
			return nil, fmt.Errorf("qcow2 %s: backing file %q refused: backing files are not allowed here: %w", img.name, img.h.backingFile, errs.ErrFailedPrecondition)
		}
		b, err := opts.OpenBacking(ctx, img.h.backingFile, img.h.backingFormat)
		if err != nil {
			return nil, fmt.Errorf("qcow2 %s: open backing file %q: %w", img.name, img.h.backingFile, err)
		}
		img.backing = b
		img.bsize = b.Size()
		bi := b.Info()
		img.info.Backing = &bi
	}
	return img, nil
}

// openImage parses and validates everything but the backing file.
func openImage(f disk.File) (*image, error) {
	name := f.Name()
	fsize := max(f.Size(), 0)
	first := make([]byte, min(fsize, 4096))
	if err := readFull(f, first, 0); err != nil {
		return nil, fmt.Errorf("qcow2 %s: read header: %w", name, err)
	}
	h, err := parseHeader(name, first)
	if err != nil {
		return nil, err
	}
	bits := uint(h.clusterBits)
	cs := int64(1) << bits
	hc := first[:min(int64(len(first)), cs)]
	if int64(len(hc)) < min(cs, fsize) {
		hc = make([]byte, min(cs, fsize))
		if err := readFull(f, hc, 0); err != nil {
			return nil, fmt.Errorf("qcow2 %s: read header cluster: %w", name, err)
		}
	}
	if err := h.parseExtensions(name, hc); err != nil {
		return nil, err
	}
	if err := h.checkFeatures(name); err != nil {
		return nil, err
	}
	if h.size > uint64(maxVirtualSize) {
		return nil, corrupt(name, "virtual size %d is absurd (over %d)", h.size, maxVirtualSize)
	}
	size := int64(h.size)
	l2Cover := cs * (cs / 8) // virtual bytes one L2 table maps
	needL1 := (size + l2Cover - 1) / l2Cover
	if int64(h.l1Size) > maxL1Bytes/8 {
		return nil, corrupt(name, "L1 table of %d entries is too large", h.l1Size)
	}
	if int64(h.l1Size) < needL1 {
		return nil, corrupt(name, "L1 table of %d entries is too small for a %d-byte disk", h.l1Size, size)
	}
	l1Bytes := int64(h.l1Size) * 8
	if h.l1Size > 0 {
		if err := checkTable(name, "L1 table", h.l1Off, l1Bytes, cs, fsize); err != nil {
			return nil, err
		}
	}
	if h.refClusters == 0 {
		return nil, corrupt(name, "no refcount table")
	}
	if int64(h.refClusters) > maxReftableBytes/cs {
		return nil, corrupt(name, "refcount table of %d clusters is too large", h.refClusters)
	}
	refBytes := int64(h.refClusters) * cs
	if err := checkTable(name, "refcount table", h.refOff, refBytes, cs, fsize); err != nil {
		return nil, err
	}
	if h.l1Size > 0 && overlaps(int64(h.l1Off), l1Bytes, int64(h.refOff), refBytes) {
		return nil, corrupt(name, "L1 table at %#x overlaps the refcount table at %#x", h.l1Off, h.refOff)
	}
	if h.nbSnapshots > maxSnapshots {
		return nil, corrupt(name, "%d snapshots is too many", h.nbSnapshots)
	}
	img := &image{
		f: f, name: name, h: h, bits: bits, cs: cs, size: size, fsize: fsize,
		workers: runtime.GOMAXPROCS(0),
		meta:    [3][2]int64{{0, cs}, {int64(h.l1Off), l1Bytes}, {int64(h.refOff), refBytes}},
		l2c:     newLRU[int64, []byte](int(max(16, l2CacheBytes/cs))),
		dc:      newLRU[int64, []byte](int(max(8, dataCacheBytes/cs))),
	}
	if h.l1Size > 0 {
		raw := make([]byte, l1Bytes)
		if err := readFull(f, raw, int64(h.l1Off)); err != nil {
			return nil, fmt.Errorf("qcow2 %s: read L1 table: %w", name, err)
		}
		img.l1 = make([]uint64, h.l1Size)
		var l2s []int64
		for i := range img.l1 {
			e := binary.BigEndian.Uint64(raw[i*8:])
			img.l1[i] = e
			off := int64(e & offsetMask)
			if off == 0 {
				continue
			}
			if off&(cs-1) != 0 {
				return nil, corrupt(name, "L1 entry %d: L2 table offset %#x is not cluster aligned", i, off)
			}
			if off+cs > fsize {
				return nil, corrupt(name, "L1 entry %d: L2 table at %#x is beyond the end of the file", i, off)
			}
			if img.overlapsMeta(off, cs) {
				return nil, corrupt(name, "L1 entry %d: L2 table at %#x overlaps the header or a table", i, off)
			}
			l2s = append(l2s, off)
		}
		slices.Sort(l2s)
		for i := 1; i < len(l2s); i++ {
			if l2s[i] == l2s[i-1] {
				return nil, corrupt(name, "L2 table at %#x is used by two L1 entries", l2s[i])
			}
		}
	}
	img.info = disk.Info{
		Filename:      name,
		Format:        "qcow2",
		VirtualSize:   size,
		ClusterSize:   cs,
		BackingFile:   h.backingFile,
		BackingFormat: h.backingFormat,
		Specific:      h.specific(),
	}
	return img, nil
}

// specific is the format-specific part of Info, keyed as qemu-img info.
func (h *header) specific() map[string]any {
	ct := "zlib"
	if h.compression == compressionZstd {
		ct = "zstd"
	}
	if h.version == 2 {
		return map[string]any{"compat": "0.10", "compression-type": ct, "refcount-bits": 16}
	}
	m := map[string]any{
		"compat":           "1.1",
		"compression-type": ct,
		"lazy-refcounts":   h.compat&(1<<compatLazyRefcounts) != 0,
		"refcount-bits":    1 << h.refcountOrder,
		"corrupt":          h.incompat&(1<<incCorrupt) != 0,
		"extended-l2":      h.incompat&(1<<incExtendedL2) != 0,
	}
	if h.incompat&(1<<incDirty) != 0 {
		// qemu-img shows this as the top-level "dirty-flag"
		m["dirty-flag"] = true
	}
	return m
}

// checkTable checks that a table lies cluster-aligned inside the file and
// after the header cluster.
func checkTable(name, what string, off uint64, n, cs, fsize int64) error {
	if off&uint64(cs-1) != 0 {
		return corrupt(name, "%s offset %#x is not cluster aligned", what, off)
	}
	if off < uint64(cs) {
		return corrupt(name, "%s at %#x overlaps the header", what, off)
	}
	if off > uint64(fsize) || uint64(n) > uint64(fsize)-off {
		return corrupt(name, "%s at %#x (%d bytes) is beyond the end of the file", what, off, n)
	}
	return nil
}

func overlaps(a, an, b, bn int64) bool { return a < b+bn && b < a+an }

func (img *image) overlapsMeta(off, n int64) bool {
	for _, m := range img.meta {
		if m[1] > 0 && overlaps(off, n, m[0], m[1]) {
			return true
		}
	}
	return false
}

// readFull reads len(p) bytes at off; a short read is an error.
func readFull(f io.ReaderAt, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Cluster kinds as the image's own layer maps them.
const (
	kUnalloc = iota
	kZero
	kData
	kCompressed
)

// run is a stretch of the virtual disk with one mapping.
type run struct {
	off, n int64
	kind   int
	host   int64 // kData: host offset of off; kCompressed: offset of the compressed bytes
	csize  int64 // kCompressed: length of the compressed byte range
	inoff  int64 // kCompressed: offset of off within its cluster
}

// classify decodes and checks one L2 entry.
func (img *image) classify(e uint64) (kind int, host, csize int64, err error) {
	if e&flagCompressed != 0 {
		x := compressedShift - (img.bits - 8)
		coff := int64(e & (1<<x - 1))
		nsec := int64(e>>x) & (1<<(img.bits-8) - 1)
		csize = (nsec+1)*512 - coff&511
		if coff < img.cs || coff >= img.fsize {
			return 0, 0, 0, corrupt(img.name, "compressed cluster at %#x is outside the data area", coff)
		}
		if img.overlapsMeta(coff, min(csize, img.fsize-coff)) {
			return 0, 0, 0, corrupt(img.name, "compressed cluster at %#x overlaps the header or a table", coff)
		}
		return kCompressed, coff, csize, nil
	}
	host = int64(e & offsetMask)
	if host != 0 {
		if host&(img.cs-1) != 0 {
			return 0, 0, 0, corrupt(img.name, "data cluster offset %#x is not cluster aligned", host)
		}
		if host >= img.fsize {
			return 0, 0, 0, corrupt(img.name, "data cluster at %#x is beyond the end of the file", host)
		}
		if img.overlapsMeta(host, img.cs) {
			return 0, 0, 0, corrupt(img.name, "data cluster at %#x overlaps the header or a table", host)
		}
	}
	if e&flagZero != 0 {
		return kZero, 0, 0, nil
	}
	if host == 0 {
		return kUnalloc, 0, 0, nil
	}
	return kData, host, 0, nil
}

// table returns the L2 table of L1 entry idx, or nil if there is none.
func (img *image) table(idx int64) ([]byte, error) {
	off := int64(img.l1[idx] & offsetMask)
	if off == 0 {
		return nil, nil
	}
	if t, ok := img.l2c.get(idx); ok {
		return t, nil
	}
	t := make([]byte, img.cs)
	if err := readFull(img.f, t, off); err != nil {
		return nil, fmt.Errorf("qcow2 %s: read L2 table at %#x: %w", img.name, off, err)
	}
	img.l2c.put(idx, t)
	return t, nil
}

// walk calls fn with the runs of [off, end), in order. Adjacent runs of
// one kind are merged (data runs only when contiguous in the file);
// compressed clusters come one by one.
func (img *image) walk(off, end int64, fn func(run) error) error {
	var cur run
	have := false
	emit := func(r run) error {
		if have && cur.kind == r.kind && r.kind != kCompressed && (r.kind != kData || cur.host+cur.n == r.host) {
			cur.n += r.n
			return nil
		}
		if have {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur, have = r, true
		return nil
	}
	l2Bits := 2*img.bits - 3
	for off < end {
		idx := off >> l2Bits
		tEnd := min((idx+1)<<l2Bits, end)
		t, err := img.table(idx)
		if err != nil {
			return err
		}
		if t == nil {
			if err := emit(run{off: off, n: tEnd - off, kind: kUnalloc}); err != nil {
				return err
			}
			off = tEnd
			continue
		}
		for off < tEnd {
			cstart := off &^ (img.cs - 1)
			cend := min(cstart+img.cs, tEnd)
			i := (off - idx<<l2Bits) >> img.bits
			kind, host, csize, err := img.classify(binary.BigEndian.Uint64(t[i*8:]))
			if err != nil {
				return err
			}
			r := run{off: off, n: cend - off, kind: kind}
			switch kind {
			case kData:
				r.host = host + off - cstart
			case kCompressed:
				r.host, r.csize, r.inoff = host, csize, off-cstart
			}
			if err := emit(r); err != nil {
				return err
			}
			off = cend
		}
	}
	if have {
		return fn(cur)
	}
	return nil
}

func (img *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2 %s: read at negative offset %d: %w", img.name, off, errs.ErrInvalidArgument)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), img.size-off)
	var comp []run
	err := img.walk(off, off+n, func(r run) error {
		dst := p[r.off-off : r.off-off+r.n]
		switch r.kind {
		case kZero:
			clear(dst)
		case kUnalloc:
			return img.readBacking(dst, r.off)
		case kData:
			return img.readHost(dst, r.host)
		case kCompressed:
			comp = append(comp, r)
		}
		return nil
	})
	if err == nil && len(comp) > 0 {
		err = img.readCompressed(p, off, comp)
	}
	if err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readHost reads data clusters; bytes past the end of the file read as
// zeros (the last cluster of a file may be short).
func (img *image) readHost(dst []byte, host int64) error {
	k, err := img.f.ReadAt(dst, host)
	if k == len(dst) {
		return nil
	}
	if (err == nil || errors.Is(err, io.EOF)) && host+int64(k) >= img.fsize {
		clear(dst[k:])
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("qcow2 %s: read data at %#x: %w", img.name, host, err)
}

// readBacking fills dst with the backing image's bytes at off, zeros past
// its end or without one.
func (img *image) readBacking(dst []byte, off int64) error {
	if img.backing == nil || off >= img.bsize {
		clear(dst)
		return nil
	}
	k := min(int64(len(dst)), img.bsize-off)
	n, err := img.backing.ReadAt(dst[:k], off)
	if int64(n) == k {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("qcow2 %s: read backing file %q at %d: %w", img.name, img.h.backingFile, off, err)
	}
	clear(dst[k:])
	return nil
}

// readCompressed fills the compressed runs of p (which starts at virtual
// offset base): packed clusters are read with one file read per group,
// then inflated in parallel.
func (img *image) readCompressed(p []byte, base int64, runs []run) error {
	type job struct {
		run
		dst []byte
		src []byte
	}
	img.decOnce.Do(func() { img.dec, img.decErr = newDecoder(img.h.compression, img.workers) })
	if img.decErr != nil {
		return fmt.Errorf("qcow2 %s: %w", img.name, img.decErr)
	}
	jobs := make([]job, 0, len(runs))
	for _, r := range runs {
		dst := p[r.off-base : r.off-base+r.n]
		if c, ok := img.dc.get(r.host); ok {
			copy(dst, c[r.inoff:])
			continue
		}
		jobs = append(jobs, job{run: r, dst: dst})
	}
	// group jobs whose byte ranges are close in the file
	for i := 0; i < len(jobs); {
		gs := jobs[i].host
		ge := min(gs+jobs[i].csize, img.fsize)
		j := i + 1
		for ; j < len(jobs); j++ {
			s, e := jobs[j].host, min(jobs[j].host+jobs[j].csize, img.fsize)
			if s < gs || s > ge+img.cs || max(e, ge)-gs > maxGroupRead {
				break
			}
			ge = max(e, ge)
		}
		buf := make([]byte, ge-gs)
		if err := readFull(img.f, buf, gs); err != nil {
			return fmt.Errorf("qcow2 %s: read compressed clusters at %#x: %w", img.name, gs, err)
		}
		for k := i; k < j; k++ {
			s := jobs[k].host - gs
			jobs[k].src = buf[s:min(s+jobs[k].csize, int64(len(buf)))]
		}
		i = j
	}
	inflate := func(jb *job) error {
		if jb.inoff == 0 && int64(len(jb.dst)) == img.cs {
			if err := img.dec.decode(jb.dst, jb.src); err != nil {
				return corrupt(img.name, "compressed cluster at %#x: %v", jb.host, err)
			}
			return nil
		}
		c := make([]byte, img.cs)
		if err := img.dec.decode(c, jb.src); err != nil {
			return corrupt(img.name, "compressed cluster at %#x: %v", jb.host, err)
		}
		copy(jb.dst, c[jb.inoff:])
		img.dc.put(jb.host, c)
		return nil
	}
	// one goroutine per worker, each with a share of the clusters
	n := min(img.workers, len(jobs))
	if n <= 1 {
		for i := range jobs {
			if err := inflate(&jobs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	var g errgroup.Group
	for w := range n {
		g.Go(func() error {
			for i := w * len(jobs) / n; i < (w+1)*len(jobs)/n; i++ {
				if err := inflate(&jobs[i]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

var errStop = errors.New("stop")

func (img *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		off = max(off, 0)
		end := min(off+n, img.size)
		if off >= end {
			return
		}
		m := disk.NewMerger(yield)
		push := func(e disk.Extent) error {
			if !m.Push(e) {
				return errStop
			}
			return nil
		}
		err := img.walk(off, end, func(r run) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			switch r.kind {
			case kData, kCompressed:
				return push(disk.Extent{Off: r.off, Len: r.n, Kind: disk.Data})
			case kZero:
				return push(disk.Extent{Off: r.off, Len: r.n, Kind: disk.Zero})
			}
			rend := r.off + r.n
			bend := min(rend, img.bsize)
			if img.backing != nil && r.off < bend {
				next := r.off
				for e, err := range img.backing.Extents(ctx, r.off, bend-r.off) {
					if err != nil {
						return fmt.Errorf("qcow2 %s: backing file %q: %w", img.name, img.h.backingFile, err)
					}
					s, t := max(e.Off, next), min(e.End(), bend)
					if s != next || t <= s {
						return fmt.Errorf("qcow2 %s: backing file %q reported extent %+v out of order", img.name, img.h.backingFile, e)
					}
					if err := push(disk.Extent{Off: s, Len: t - s, Kind: e.Kind}); err != nil {
						return err
					}
					next = t
				}
				if next != bend {
					return fmt.Errorf("qcow2 %s: backing file %q extents end at %d, want %d", img.name, img.h.backingFile, next, bend)
				}
				if bend == rend {
					return nil
				}
				return push(disk.Extent{Off: bend, Len: rend - bend, Kind: disk.Unallocated})
			}
			return push(disk.Extent{Off: r.off, Len: r.n, Kind: disk.Unallocated})
		})
		if errors.Is(err, errStop) {
			return
		}
		if err != nil {
			yield(disk.Extent{}, err)
			return
		}
		m.Flush()
	}
}

func (img *image) Size() int64 { return img.size }

// Info describes the image; the caller may keep and change it.
func (img *image) Info() disk.Info {
	i := img.info
	i.Specific = maps.Clone(i.Specific)
	return i
}

func (img *image) Close() error {
	img.decOnce.Do(func() {})
	if img.dec != nil {
		img.dec.close()
	}
	var err error
	if img.backing != nil {
		err = img.backing.Close()
	}
	return errors.Join(err, img.f.Close())
}
