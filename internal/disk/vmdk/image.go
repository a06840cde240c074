package vmdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// extentKind is how a descriptor extent stores its bytes.
type extentKind uint8

const (
	extFlat extentKind = iota
	extZero
	extSparse
)

// vext is one extent of the virtual disk.
type vext struct {
	start, size int64 // virtual bytes
	kind        extentKind
	typ         string // as the descriptor names it
	f           disk.File
	fileOff     int64 // flat: where the extent starts in f
	sp          *sparseExtent
	owned       bool // f was opened by the image, from a descriptor
}

func (x *vext) end() int64 { return x.start + x.size }

// image is an opened VMDK: one sparse file, or a descriptor and its
// extents, and the parent of a delta disk.
type image struct {
	name       string
	size       int64
	exts       []vext
	parent     disk.Image
	parentHint string
	files      []disk.File // closed on Close, the opened file included
	desc       *descriptor
	createType string
	log        *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

var (
	_ disk.Image   = (*image)(nil)
	_ disk.Checker = (*image)(nil)
)

// open opens f as a VMDK: a sparse extent file (KDMV) or a descriptor file
// with its extents.
func open(ctx context.Context, f disk.File, opts *disk.OpenOptions) (disk.Image, error) {
	if opts == nil {
		opts = &disk.OpenOptions{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	head := make([]byte, min(f.Size(), 4096))
	if err := readFull(f, head, 0); err != nil {
		return nil, fmt.Errorf("vmdk %s: read: %w", f.Name(), err)
	}
	img := &image{name: f.Name(), log: log}
	switch {
	case len(head) >= 4 && binary.LittleEndian.Uint32(head) == magicKDMV:
		sp, err := openSparse(f)
		if err != nil {
			return nil, err
		}
		img.exts = []vext{{size: sp.size, kind: extSparse, typ: "SPARSE", f: f, sp: sp}}
		img.size = sp.size
		img.desc = sp.desc
		img.createType = "monolithicSparse"
		if sp.compressed {
			img.createType = "streamOptimized"
		}
		if sp.desc != nil && sp.desc.createType != "" {
			// Only reported: the header says how to read the file.
			img.createType = sp.desc.createType
		}
	case len(head) >= 4 && binary.LittleEndian.Uint32(head) == magicCOWD:
		return nil, fmt.Errorf("vmdk %s: vmfsSparse (COWD) extent: %w", f.Name(), errs.ErrUnimplemented)
	case looksLikeDescriptor(head):
		if err := img.openDescriptor(f); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("vmdk %s: neither a sparse extent (KDMV) nor a descriptor: %w", f.Name(), errs.ErrCorrupt)
	}
	if err := img.openParent(ctx, opts); err != nil {
		img.closeExtents()
		return nil, err
	}
	img.files = append(img.files, f)
	return img, nil
}

// refuseCreateType returns an Unimplemented error for the disk types ferry
// does not read.
func refuseCreateType(name, ct string) error {
	switch ct {
	case "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
		"streamOptimized", "vmfs", "vmfsThin", "vmfsPreallocated", "vmfsEagerZeroedThick", "custom":
		return nil
	case "seSparse":
		return fmt.Errorf("vmdk %s: seSparse disk: %w", name, errs.ErrUnimplemented)
	case "vmfsSparse":
		return fmt.Errorf("vmdk %s: vmfsSparse (COWD) redo log: %w", name, errs.ErrUnimplemented)
	case "vmfsRDM", "vmfsRDMP", "vmfsRaw", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "fullDevice", "partitionedDevice":
		return fmt.Errorf("vmdk %s: raw device disk (createType %s): %w", name, ct, errs.ErrUnimplemented)
	case "":
		return fmt.Errorf("vmdk %s: descriptor has no createType: %w", name, errs.ErrCorrupt)
	}
	return fmt.Errorf("vmdk %s: createType %q: %w", name, ct, errs.ErrUnimplemented)
}

// openDescriptor parses a descriptor file and opens its extents relative to
// its directory.
func (img *image) openDescriptor(f disk.File) error {
	name := f.Name()
	if f.Size() > maxDescBytes {
		return fmt.Errorf("vmdk %s: descriptor file of %d bytes is too large: %w", name, f.Size(), errs.ErrCorrupt)
	}
	text := make([]byte, f.Size())
	if err := readFull(f, text, 0); err != nil {
		return fmt.Errorf("vmdk %s: read descriptor: %w", name, err)
	}
	d, err := parseDescriptor(name, text)
	if err != nil {
		return err
	}
	if err := refuseCreateType(name, d.createType); err != nil {
		return err
	}
	if len(d.extents) == 0 {
		return fmt.Errorf("vmdk %s: descriptor lists no extents: %w", name, errs.ErrCorrupt)
	}
	img.desc, img.createType = d, d.createType
	dir := filepath.Dir(name)
	var pos int64
	for _, l := range d.extents {
		x := vext{start: pos, size: l.sectors * sectorSize, typ: l.typ}
		if x.size > maxCapacity-pos {
			img.closeExtents()
			return fmt.Errorf("vmdk %s: extents add up to more than %d bytes: %w", name, maxCapacity, errs.ErrCorrupt)
		}
		if err := img.openExtent(&x, l, dir); err != nil {
			if x.owned {
				x.f.Close()
			}
			img.closeExtents()
			return err
		}
		img.exts = append(img.exts, x)
		pos += x.size
	}
	img.size = pos
	return nil
}

func (img *image) openExtent(x *vext, l extentLine, dir string) error {
	name := img.name
	switch l.typ {
	case "FLAT", "VMFS":
		x.kind = extFlat
	case "ZERO":
		x.kind = extZero
		return nil
	case "SPARSE":
		x.kind = extSparse
	case "VMFSSPARSE":
		return fmt.Errorf("vmdk %s: vmfsSparse (COWD) extent %q: %w", name, l.file, errs.ErrUnimplemented)
	case "SESPARSE":
		return fmt.Errorf("vmdk %s: seSparse extent %q: %w", name, l.file, errs.ErrUnimplemented)
	case "VMFSRDM", "VMFSRAW":
		return fmt.Errorf("vmdk %s: raw device extent %q: %w", name, l.file, errs.ErrUnimplemented)
	default:
		return fmt.Errorf("vmdk %s: extent type %q: %w", name, l.typ, errs.ErrUnimplemented)
	}
	if !filepath.IsLocal(l.file) {
		return fmt.Errorf("vmdk %s: extent file %q is outside the descriptor's directory: %w", name, l.file, errs.ErrUnimplemented)
	}
	f, err := disk.OpenFile(filepath.Join(dir, l.file))
	if err != nil {
		return fmt.Errorf("vmdk %s: extent: %w", name, err)
	}
	x.f, x.owned = f, true
	if x.kind == extFlat {
		x.fileOff = l.offset * sectorSize
		if need := x.fileOff + x.size; f.Size() < need {
			return fmt.Errorf("vmdk %s: flat extent %s holds %d bytes, the descriptor needs %d: %w", name, f.Name(), f.Size(), need, errs.ErrCorrupt)
		}
		return nil
	}
	var magic [4]byte
	if f.Size() >= 4 {
		if err := readFull(f, magic[:], 0); err != nil {
			return fmt.Errorf("vmdk %s: read extent %s: %w", name, f.Name(), err)
		}
	}
	if binary.LittleEndian.Uint32(magic[:]) == magicCOWD {
		return fmt.Errorf("vmdk %s: vmfsSparse (COWD) extent %s: %w", name, f.Name(), errs.ErrUnimplemented)
	}
	sp, err := openSparse(f)
	if err != nil {
		return fmt.Errorf("vmdk %s: %w", name, err)
	}
	if sp.size < x.size {
		return fmt.Errorf("vmdk %s: sparse extent %s holds %d bytes, the descriptor needs %d: %w", name, f.Name(), sp.size, x.size, errs.ErrCorrupt)
	}
	x.sp = sp
	return nil
}

// openParent opens the parent of a delta disk.
func (img *image) openParent(ctx context.Context, opts *disk.OpenOptions) error {
	d := img.desc
	if d == nil || d.parentCID == noParent {
		return nil
	}
	if d.parentHint == "" {
		return fmt.Errorf("vmdk %s: delta disk (parentCID %08x) names no parent file: %w", img.name, d.parentCID, errs.ErrCorrupt)
	}
	if opts.OpenBacking == nil {
		return fmt.Errorf("vmdk %s: delta disk needs its parent %s, and backing files are not allowed here: %w", img.name, d.parentHint, errs.ErrFailedPrecondition)
	}
	p, err := opts.OpenBacking(ctx, d.parentHint, "vmdk")
	if err != nil {
		return fmt.Errorf("vmdk %s: parent %s: %w", img.name, d.parentHint, err)
	}
	if pi := p.Info(); pi.Format == "vmdk" {
		if cid, ok := pi.Specific["cid"].(int64); ok && uint32(cid) != d.parentCID {
			img.log.Warn("vmdk parent content ID differs: the parent changed after the delta was made",
				"disk", img.name, "parent", d.parentHint, "parent_cid", fmt.Sprintf("%08x", cid), "want", fmt.Sprintf("%08x", d.parentCID))
		}
	}
	img.parent, img.parentHint = p, d.parentHint
	return nil
}

func (img *image) closeExtents() {
	for _, f := range img.extentFiles() {
		f.Close()
	}
}

// extentFiles are the files the image opened itself (not the file it was
// given).
func (img *image) extentFiles() []disk.File {
	var fs []disk.File
	for _, x := range img.exts {
		if x.owned {
			fs = append(fs, x.f)
		}
	}
	return fs
}

func (img *image) Size() int64 { return img.size }

func (img *image) Close() error {
	img.closeOnce.Do(func() {
		var errsList []error
		if img.parent != nil {
			errsList = append(errsList, img.parent.Close())
		}
		for _, f := range img.extentFiles() {
			errsList = append(errsList, f.Close())
		}
		for _, f := range img.files {
			errsList = append(errsList, f.Close())
		}
		img.closeErr = errors.Join(errsList...)
	})
	return img.closeErr
}

// ReadAt reads the virtual disk.
func (img *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vmdk %s: read at negative offset %d: %w", img.name, off, errs.ErrInvalidArgument)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > img.size-off {
		p, eof = p[:img.size-off], io.EOF
	}
	i := img.extentAt(off)
	for done := 0; done < len(p); i++ {
		x := &img.exts[i]
		o := off + int64(done)
		n := int(min(int64(len(p)-done), x.end()-o))
		q := p[done : done+n]
		if err := img.readExtent(x, q, o); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), eof
}

// extentAt returns the index of the extent holding virtual offset off.
func (img *image) extentAt(off int64) int {
	lo, hi := 0, len(img.exts)
	for lo < hi {
		m := (lo + hi) / 2
		if img.exts[m].end() <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func (img *image) readExtent(x *vext, q []byte, o int64) error {
	switch x.kind {
	case extZero:
		clear(q)
		return nil
	case extFlat:
		if err := readFull(x.f, q, x.fileOff+o-x.start); err != nil {
			return fmt.Errorf("vmdk %s: read flat extent %s at %d: %w", img.name, x.f.Name(), x.fileOff+o-x.start, err)
		}
		return nil
	}
	return x.sp.readAt(q, o-x.start, func(p []byte, lo int64) error {
		return img.readUnder(p, x.start+lo)
	})
}

// readUnder fills p with what lies under unallocated grains at virtual
// offset off: the parent's bytes, zeros past its end or without one.
func (img *image) readUnder(p []byte, off int64) error {
	if img.parent == nil || off >= img.parent.Size() {
		clear(p)
		return nil
	}
	n := int(min(int64(len(p)), img.parent.Size()-off))
	if err := readFull(img.parent, p[:n], off); err != nil {
		return fmt.Errorf("vmdk %s: read parent %s at %d: %w", img.name, img.parentHint, off, err)
	}
	clear(p[n:])
	return nil
}

// Extents reports the kinds of [off, off+n): sparse extents by grain,
// with unallocated grains as the parent reports them; flat extents as data,
// except holes of a flat file on a file system that reports them; zero
// extents as zero.
func (img *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		off = max(off, 0)
		end := min(off+n, img.size)
		if off >= end {
			return
		}
		m := merger{yield: yield}
		for i := img.extentAt(off); i < len(img.exts) && img.exts[i].start < end; i++ {
			x := &img.exts[i]
			s, e := max(off, x.start), min(end, x.end())
			if !img.extentRuns(ctx, x, s, e, &m) {
				return
			}
		}
		m.flush()
	}
}

// merger joins adjacent extents of the same kind before yielding them.
type merger struct {
	cur   disk.Extent
	yield func(disk.Extent, error) bool
	done  bool
}

func (m *merger) add(e disk.Extent) bool {
	if m.done || e.Len <= 0 {
		return !m.done
	}
	if m.cur.Len > 0 && m.cur.Kind == e.Kind && m.cur.End() == e.Off {
		m.cur.Len += e.Len
		return true
	}
	if m.cur.Len > 0 && !m.yield(m.cur, nil) {
		m.done = true
		return false
	}
	m.cur = e
	return true
}

func (m *merger) fail(err error) {
	if !m.done {
		m.done = true
		m.yield(disk.Extent{}, err)
	}
}

func (m *merger) flush() {
	if !m.done && m.cur.Len > 0 {
		m.done = !m.yield(m.cur, nil)
	}
}

func (img *image) extentRuns(ctx context.Context, x *vext, s, e int64, m *merger) bool {
	switch x.kind {
	case extZero:
		return m.add(disk.Extent{Off: s, Len: e - s, Kind: disk.Zero})
	case extFlat:
		return img.flatRuns(x, s, e, m)
	}
	for r, err := range x.sp.runs(ctx, s-x.start, e-s) {
		if err != nil {
			m.fail(err)
			return false
		}
		r.Off += x.start
		if r.Kind != disk.Unallocated || img.parent == nil {
			if !m.add(r) {
				return false
			}
			continue
		}
		if !img.parentRuns(ctx, r, m) {
			return false
		}
	}
	return true
}

// parentRuns reports an unallocated range as the parent reports it.
func (img *image) parentRuns(ctx context.Context, r disk.Extent, m *merger) bool {
	psz := img.parent.Size()
	if r.Off < psz {
		for pe, err := range img.parent.Extents(ctx, r.Off, min(r.End(), psz)-r.Off) {
			if err != nil {
				m.fail(fmt.Errorf("vmdk %s: parent %s: %w", img.name, img.parentHint, err))
				return false
			}
			if !m.add(pe) {
				return false
			}
		}
	}
	if r.End() > psz {
		s := max(r.Off, psz)
		return m.add(disk.Extent{Off: s, Len: r.End() - s, Kind: disk.Unallocated})
	}
	return true
}

// flatRuns reports a flat extent's holes as zero where the file system can
// tell (SEEK_DATA), and everything else as data.
func (img *image) flatRuns(x *vext, s, e int64, m *merger) bool {
	of, ok := disk.OSFile(x.f)
	if !ok {
		return m.add(disk.Extent{Off: s, Len: e - s, Kind: disk.Data})
	}
	delta := x.fileOff - x.start // file offset = virtual + delta
	for o := s; o < e; {
		data, err := of.Seek(o+delta, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				return m.add(disk.Extent{Off: o, Len: e - o, Kind: disk.Zero})
			}
			// No hole support: all data.
			return m.add(disk.Extent{Off: o, Len: e - o, Kind: disk.Data})
		}
		data = min(max(data-delta, o), e)
		if data > o && !m.add(disk.Extent{Off: o, Len: data - o, Kind: disk.Zero}) {
			return false
		}
		if data >= e {
			return true
		}
		hole, err := of.Seek(data+delta, unix.SEEK_HOLE)
		if err != nil {
			hole = e + delta
		}
		hole = min(max(hole-delta, data+1), e)
		// Report whole sectors; a hole inside a sector reads as zero
		// anyway.
		if !m.add(disk.Extent{Off: data, Len: hole - data, Kind: disk.Data}) {
			return false
		}
		o = hole
	}
	return true
}

// Info describes the image as qemu-img info does.
func (img *image) Info() disk.Info {
	info := disk.Info{Filename: img.name, Format: "vmdk", VirtualSize: img.size}
	var list []map[string]any
	for _, x := range img.exts {
		e := map[string]any{"format": x.typ, "virtual-size": x.size}
		if x.f != nil {
			e["filename"] = x.f.Name()
		}
		if x.sp != nil {
			e["cluster-size"] = x.sp.grain
			if info.ClusterSize == 0 {
				info.ClusterSize = x.sp.grain
			}
			if x.sp.compressed {
				e["compressed"] = true
			}
		}
		list = append(list, e)
	}
	cid, pcid := int64(0), int64(noParent)
	if img.desc != nil {
		cid, pcid = int64(img.desc.cid), int64(img.desc.parentCID)
	}
	info.Specific = map[string]any{
		"create-type": img.createType,
		"cid":         cid,
		"parent-cid":  pcid,
		"extents":     list,
	}
	if img.parent != nil {
		info.BackingFile, info.BackingFormat = img.parentHint, "vmdk"
		pi := img.parent.Info()
		info.Backing = &pi
	}
	return info
}
