package vhd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// image is an opened VHD of any subformat.
type image struct {
	f    disk.File
	name string
	log  *slog.Logger

	ft   footer
	size int64
	// fileEnd is where the trailing footer starts, or the file size when
	// the footer copy at offset 0 had to be used.
	fileEnd     int64
	footerAtEnd bool

	// Dynamic and differencing disks.
	hdrOff int64
	hdr    dynHeader
	bs     int64    // block size
	bmSize int64    // sector bitmap bytes, padded to a sector
	bat    []uint32 // the entries covering the disk
	bm     *bitmaps

	// Differencing disks.
	parent     disk.Image
	parentPath string

	// Fixed disks on a plain file: holes are found with SEEK_DATA.
	osf *os.File

	closeOnce sync.Once
	closeErr  error
}

var (
	_ disk.Image   = (*image)(nil)
	_ disk.Checker = (*image)(nil)
)

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// probe claims files with a VHD footer at the end (512 or the old 511
// bytes) or, for dynamic and differencing disks, a footer copy at offset 0.
func probe(f disk.File) bool {
	size := f.Size()
	b := make([]byte, footerSize)
	plausible := func(b []byte, copyAt0 bool) bool {
		ft, ok, _ := parseFooter(b)
		if !ok {
			return false
		}
		switch ft.diskType {
		case typeFixed:
			return !copyAt0
		case typeDynamic, typeDiff:
			return true
		}
		return false
	}
	if size >= footerSize {
		if n, _ := f.ReadAt(b, size-footerSize); n == footerSize && plausible(b, false) {
			return true
		}
	}
	if size >= footerSize-1 {
		clear(b)
		if n, _ := f.ReadAt(b[:footerSize-1], size-(footerSize-1)); n == footerSize-1 && plausible(b, false) {
			return true
		}
	}
	if size >= footerSize {
		if n, _ := f.ReadAt(b, 0); n == footerSize && plausible(b, true) {
			return true
		}
	}
	return false
}

func corrupt(name, format string, a ...any) error {
	return fmt.Errorf("vhd %s: %s: %w", name, fmt.Sprintf(format, a...), errs.ErrCorrupt)
}

// readAtFull reads len(b) bytes at off, treating a short read as corruption.
func readAtFull(f disk.File, b []byte, off int64, what string) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corrupt(f.Name(), "%s at %#x: file ends after %d of %d bytes", what, off, n, len(b))
	}
	return fmt.Errorf("vhd %s: read %s at %#x: %w", f.Name(), what, off, err)
}

// footerInfo is the outcome of locating the footer.
type footerInfo struct {
	ft      footer
	raw     []byte
	fileEnd int64
	atEnd   bool
}

// findFooter reads the footer at the end of the file (512 bytes, or the
// old 511), falling back to the copy at offset 0 of dynamic and
// differencing disks when the end is missing or damaged.
func findFooter(f disk.File) (footerInfo, error) {
	name, size := f.Name(), f.Size()
	if size < footerSize-1 {
		return footerInfo{}, corrupt(name, "file of %d bytes is too small to hold a footer", size)
	}
	var endFault string
	b := make([]byte, footerSize)
	if size >= footerSize {
		if err := readAtFull(f, b, size-footerSize, "footer"); err != nil {
			return footerInfo{}, err
		}
		ft, ok, sumOK := parseFooter(b)
		switch {
		case ok && sumOK:
			return footerInfo{ft: ft, raw: b, fileEnd: size - footerSize, atEnd: true}, nil
		case ok:
			endFault = fmt.Sprintf("footer checksum mismatch at %#x (stored %#x, computed %#x)", size-footerSize, ft.checksum, checksumOf(b, 64))
		}
	}
	if endFault == "" {
		b511 := make([]byte, footerSize)
		if err := readAtFull(f, b511[:footerSize-1], size-(footerSize-1), "footer"); err != nil {
			return footerInfo{}, err
		}
		ft, ok, sumOK := parseFooter(b511)
		switch {
		case ok && sumOK:
			return footerInfo{ft: ft, raw: b511, fileEnd: size - (footerSize - 1), atEnd: true}, nil
		case ok:
			endFault = fmt.Sprintf("511-byte footer checksum mismatch (stored %#x, computed %#x)", ft.checksum, checksumOf(b511, 64))
		}
	}
	var copyFault string
	if size >= footerSize {
		c := make([]byte, footerSize)
		if err := readAtFull(f, c, 0, "footer copy"); err != nil {
			return footerInfo{}, err
		}
		ft, ok, sumOK := parseFooter(c)
		switch {
		case ok && sumOK && (ft.diskType == typeDynamic || ft.diskType == typeDiff):
			return footerInfo{ft: ft, raw: c, fileEnd: size, atEnd: false}, nil
		case ok && !sumOK:
			copyFault = fmt.Sprintf("footer copy checksum mismatch at 0 (stored %#x, computed %#x)", ft.checksum, checksumOf(c, 64))
		}
	}
	switch {
	case endFault != "" && copyFault != "":
		return footerInfo{}, corrupt(name, "%s; %s", endFault, copyFault)
	case endFault != "":
		return footerInfo{}, corrupt(name, "%s", endFault)
	case copyFault != "":
		return footerInfo{}, corrupt(name, "no footer at the end of the file and %s", copyFault)
	}
	return footerInfo{}, corrupt(name, "no footer (cookie %q) at the end of the file nor a footer copy at offset 0", footerCookie)
}

// open implements Format.Open.
func open(ctx context.Context, f disk.File, opts *disk.OpenOptions) (disk.Image, error) {
	if opts == nil {
		opts = &disk.OpenOptions{}
	}
	fi, err := findFooter(f)
	if err != nil {
		return nil, err
	}
	im := &image{f: f, name: f.Name(), log: logger(opts.Logger), ft: fi.ft, fileEnd: fi.fileEnd, footerAtEnd: fi.atEnd}
	if !fi.atEnd {
		im.log.Warn("vhd footer at the end of the file is missing or damaged; using the copy at offset 0", "disk", im.name)
	}
	if err := im.checkSize(); err != nil {
		return nil, err
	}
	switch im.ft.diskType {
	case typeFixed:
		if im.size > im.fileEnd {
			return nil, corrupt(im.name, "fixed disk of %d bytes but the file holds only %d bytes before its footer", im.size, im.fileEnd)
		}
		if osf, ok := disk.OSFile(f); ok {
			if st, err := osf.Stat(); err == nil && st.Mode().IsRegular() {
				im.osf = osf
			}
		}
		return im, nil
	case typeDynamic, typeDiff:
	case 0, 1, 5, 6: // "none" and the deprecated reserved types
		return nil, fmt.Errorf("vhd %s: disk type %d (none or reserved) is not supported: %w", im.name, im.ft.diskType, errs.ErrUnimplemented)
	default:
		return nil, corrupt(im.name, "unknown disk type %d", im.ft.diskType)
	}
	if err := im.openDynamic(); err != nil {
		return nil, err
	}
	if im.ft.diskType == typeDiff {
		if err := im.openParent(ctx, opts); err != nil {
			return nil, err
		}
	}
	return im, nil
}

// checkHeader validates a dynamic header's block size and BAT size for a
// disk of size bytes and returns the block size and the number of blocks.
func checkHeader(name string, h *dynHeader, size int64) (bs, nblocks int64, err error) {
	bs = int64(h.blockSize)
	if !isPow2(bs) || bs < sectorSize {
		return 0, 0, corrupt(name, "block size %d is not a power of two of at least 512", bs)
	}
	if bs > maxBlockSize {
		return 0, 0, fmt.Errorf("vhd %s: block size %d larger than %d is not supported: %w", name, bs, maxBlockSize, errs.ErrUnimplemented)
	}
	nblocks = (size + bs - 1) / bs
	if nblocks > int64(h.maxEntries) {
		return 0, 0, corrupt(name, "BAT has %d entries but the %d-byte disk needs %d", h.maxEntries, size, nblocks)
	}
	if int64(h.maxEntries)*4 > maxBATBytes {
		return 0, 0, corrupt(name, "BAT of %d entries is larger than %d bytes", h.maxEntries, maxBATBytes)
	}
	return bs, nblocks, nil
}

func (im *image) checkSize() error {
	if im.ft.curSize > maxReadSize {
		return corrupt(im.name, "claims a virtual size of %d bytes, more than %d", im.ft.curSize, int64(maxReadSize))
	}
	im.size = int64(im.ft.curSize)
	return nil
}

// span is a byte range of the file.
type span struct {
	off, end int64
	what     string
}

// openDynamic reads and checks the dynamic header and the BAT.
func (im *image) openDynamic() error {
	if im.ft.dataOffset > uint64(im.fileEnd) || im.ft.dataOffset < footerSize || int64(im.ft.dataOffset)+headerSize > im.fileEnd {
		return corrupt(im.name, "dynamic header offset %#x out of range (file data ends at %#x)", im.ft.dataOffset, im.fileEnd)
	}
	im.hdrOff = int64(im.ft.dataOffset)
	b := make([]byte, headerSize)
	if err := readAtFull(im.f, b, im.hdrOff, "dynamic header"); err != nil {
		return err
	}
	h, ok, sumOK := parseHeader(b)
	if !ok {
		return corrupt(im.name, "no dynamic header (cookie %q) at %#x", headerCookie, im.hdrOff)
	}
	if !sumOK {
		return corrupt(im.name, "dynamic header checksum mismatch at %#x (stored %#x, computed %#x)", im.hdrOff, h.checksum, checksumOf(b, 36))
	}
	im.hdr = h
	bs, nblocks, err := checkHeader(im.name, &h, im.size)
	if err != nil {
		return err
	}
	im.bs = bs
	im.bmSize = bitmapBytes(bs)
	if h.tableOffset > uint64(im.fileEnd) || int64(h.tableOffset)+int64(h.maxEntries)*4 > im.fileEnd {
		return corrupt(im.name, "BAT at %#x of %d bytes beyond the end of the file data at %#x", h.tableOffset, int64(h.maxEntries)*4, im.fileEnd)
	}
	raw := make([]byte, nblocks*4)
	if err := readAtFull(im.f, raw, int64(h.tableOffset), "BAT"); err != nil {
		return err
	}
	im.bat = make([]uint32, nblocks)
	for i := range im.bat {
		im.bat[i] = uint32(raw[4*i])<<24 | uint32(raw[4*i+1])<<16 | uint32(raw[4*i+2])<<8 | uint32(raw[4*i+3])
	}
	if probs := im.layoutProblems(im.bat, 1); len(probs) > 0 {
		return corrupt(im.name, "%s", probs[0])
	}
	im.bm = newBitmaps(nblocks, im.bmSize)
	return nil
}

// metadataSpans are the file ranges of the footer copy, the dynamic
// header, the BAT and the trailing footer.
func (im *image) metadataSpans() []span {
	batEnd := roundUp(int64(im.hdr.tableOffset)+int64(im.hdr.maxEntries)*4, sectorSize)
	return []span{
		{0, footerSize, "the footer copy"},
		{im.hdrOff, im.hdrOff + headerSize, "the dynamic header"},
		{int64(im.hdr.tableOffset), batEnd, "the BAT"},
		{im.fileEnd, im.f.Size(), "the footer"},
	}
}

// layoutProblems lists blocks beyond the file or overlapping each other or
// the metadata, and metadata overlapping itself; at most max (0: all, up
// to a few hundred).
func (im *image) layoutProblems(bat []uint32, max int) []string {
	if max <= 0 {
		max = 300
	}
	var out []string
	add := func(format string, a ...any) bool {
		out = append(out, fmt.Sprintf(format, a...))
		return len(out) < max
	}
	meta := im.metadataSpans()
	for i := 1; i < len(meta)-1; i++ {
		for j := 0; j < i; j++ {
			if meta[i].off < meta[j].end && meta[j].off < meta[i].end {
				if !add("%s at %#x overlaps %s at %#x", meta[i].what, meta[i].off, meta[j].what, meta[j].off) {
					return out
				}
			}
		}
	}
	span := im.bmSize + im.bs
	type blk struct {
		off int64
		idx int
	}
	var blocks []blk
	for i, e := range bat {
		if e == unallocated {
			continue
		}
		off := int64(e) * sectorSize
		if off+span > im.fileEnd {
			if !add("block %d at %#x (%d bytes) extends beyond the end of the file data at %#x", i, off, span, im.fileEnd) {
				return out
			}
			continue
		}
		for _, m := range meta {
			if off < m.end && m.off < off+span {
				if !add("block %d at %#x overlaps %s at %#x", i, off, m.what, m.off) {
					return out
				}
			}
		}
		blocks = append(blocks, blk{off, i})
	}
	slices.SortFunc(blocks, func(a, b blk) int {
		switch {
		case a.off < b.off:
			return -1
		case a.off > b.off:
			return 1
		}
		return a.idx - b.idx
	})
	for k := 1; k < len(blocks); k++ {
		if blocks[k].off < blocks[k-1].off+span {
			if !add("block %d at %#x overlaps block %d at %#x", blocks[k].idx, blocks[k].off, blocks[k-1].idx, blocks[k-1].off) {
				return out
			}
		}
	}
	return out
}

func (im *image) Size() int64 { return im.size }

func (im *image) Close() error {
	im.closeOnce.Do(func() {
		var err error
		if im.parent != nil {
			err = im.parent.Close()
		}
		im.closeErr = errors.Join(err, im.f.Close())
	})
	return im.closeErr
}

func (im *image) Info() disk.Info {
	info := describe(im.name, &im.ft, im.size, im.bs, &im.hdr)
	if im.parent != nil {
		info.BackingFile = im.parentPath
		info.BackingFormat = "vhd"
		pi := im.parent.Info()
		info.Backing = &pi
	}
	return info
}

// describe builds the Info of a VHD from its footer and, for dynamic and
// differencing disks, its header and block size.
func describe(name string, ft *footer, size, bs int64, hdr *dynHeader) disk.Info {
	spec := map[string]any{
		"subformat":       subformatName(ft.diskType),
		"creator":         printable(ft.creatorApp[:]),
		"creator-version": fmt.Sprintf("%d.%d", ft.creatorVersion>>16, ft.creatorVersion&0xFFFF),
		"creator-os":      printable(ft.creatorOS[:]),
		"uuid":            formatUUID(ft.uuid),
		"timestamp":       vhdTime(ft.timestamp),
		"cylinders":       int(ft.cylinders),
		"heads":           int(ft.heads),
		"sectors":         int(ft.sectors),
	}
	info := disk.Info{Filename: name, Format: "vhd", VirtualSize: size, Specific: spec}
	if ft.diskType != typeFixed {
		spec["block-size"] = bs
		info.ClusterSize = bs
	}
	if ft.diskType == typeDiff {
		spec["parent-uuid"] = formatUUID(hdr.parentUUID)
		spec["parent-timestamp"] = vhdTime(hdr.parentTimestamp)
		if n := decodeUTF16(hdr.parentName[:], binary.BigEndian); n != "" {
			spec["parent-name"] = n
		}
	}
	return info
}

// segKind tells where a piece of the virtual disk reads from.
type segKind uint8

const (
	segData   segKind = iota // the file, at fileOff
	segZero                  // zeros (unallocated in a dynamic disk)
	segParent                // the parent image, same offset
)

// walk calls fn for the pieces of [off, end) of a dynamic or differencing
// disk in ascending order. Touching pieces of the same kind are merged,
// data pieces only when they are also contiguous in the file.
func (im *image) walk(ctx context.Context, off, end int64, fn func(k segKind, off, n, fileOff int64) error) error {
	var (
		pk             segKind
		poff, pn, pfil int64
		has            bool
	)
	emit := func(k segKind, o, n, fo int64) error {
		if has && k == pk && poff+pn == o && (k != segData || pfil+pn == fo) {
			pn += n
			return nil
		}
		if has {
			if err := fn(pk, poff, pn, pfil); err != nil {
				return err
			}
		}
		pk, poff, pn, pfil, has = k, o, n, fo, true
		return nil
	}
	hole := segZero
	if im.ft.diskType == typeDiff {
		hole = segParent
	}
	for cur, i := off, 0; cur < end; i++ {
		if i%1024 == 1023 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		blk := cur / im.bs
		bstart := blk * im.bs
		bend := min(bstart+im.bs, end)
		e := im.bat[blk]
		if e == unallocated {
			if err := emit(hole, cur, bend-cur, 0); err != nil {
				return err
			}
			cur = bend
			continue
		}
		data := int64(e)*sectorSize + im.bmSize
		st, bits, err := im.bitmap(blk)
		if err != nil {
			return err
		}
		switch st {
		case bmFull:
			err = emit(segData, cur, bend-cur, data+cur-bstart)
			cur = bend
		case bmEmpty:
			err = emit(hole, cur, bend-cur, 0)
			cur = bend
		default:
			lim := int((bend - bstart + sectorSize - 1) / sectorSize)
			for cur < bend && err == nil {
				s := int((cur - bstart) / sectorSize)
				j := runEnd(bits, s, lim)
				rend := min(bstart+int64(j)*sectorSize, bend)
				if bitSet(bits, s) {
					err = emit(segData, cur, rend-cur, data+cur-bstart)
				} else {
					err = emit(hole, cur, rend-cur, 0)
				}
				cur = rend
			}
		}
		if err != nil {
			return err
		}
	}
	if has {
		return fn(pk, poff, pn, pfil)
	}
	return nil
}

func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vhd %s: read at negative offset %d: %w", im.name, off, errs.ErrInvalidArgument)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	n := int64(len(p))
	var eof error
	if off+n > im.size {
		n = im.size - off
		eof = io.EOF
	}
	if im.ft.diskType == typeFixed {
		if err := readAtFull(im.f, p[:n], off, "data"); err != nil {
			return 0, err
		}
		return int(n), eof
	}
	err := im.walk(context.Background(), off, off+n, func(k segKind, o, l, fo int64) error {
		b := p[o-off : o-off+l]
		switch k {
		case segData:
			return readAtFull(im.f, b, fo, "block data")
		case segZero:
			clear(b)
		case segParent:
			return im.readParent(b, o)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(n), eof
}

// readParent fills b with the parent's bytes at off; zeros past its end.
func (im *image) readParent(b []byte, off int64) error {
	ps := im.parent.Size()
	if off >= ps {
		clear(b)
		return nil
	}
	m := min(int64(len(b)), ps-off)
	n, err := im.parent.ReadAt(b[:m], off)
	if int64(n) < m {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("vhd %s: read parent %s at %d: %w", im.name, im.parentPath, off, err)
	}
	clear(b[m:])
	return nil
}

// extentSink merges adjacent same-kind extents before yielding them.
type extentSink struct {
	yield   func(disk.Extent, error) bool
	cur     disk.Extent
	has     bool
	stopped bool
}

func (s *extentSink) add(e disk.Extent) bool {
	if s.stopped {
		return false
	}
	if e.Len <= 0 {
		return true
	}
	if s.has && s.cur.Kind == e.Kind && s.cur.End() == e.Off {
		s.cur.Len += e.Len
		return true
	}
	if s.has && !s.yield(s.cur, nil) {
		s.stopped = true
		return false
	}
	s.cur, s.has = e, true
	return true
}

func (s *extentSink) flush() {
	if s.has && !s.stopped {
		s.yield(s.cur, nil)
	}
}

var errStop = errors.New("stop")

func (im *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, im.size)
		off = max(off, 0)
		if n <= 0 || off >= end {
			return
		}
		s := &extentSink{yield: yield}
		var err error
		if im.ft.diskType == typeFixed {
			err = im.fixedExtents(ctx, off, end, s)
		} else {
			err = im.walk(ctx, off, end, func(k segKind, o, l, _ int64) error {
				switch k {
				case segData:
					s.add(disk.Extent{Off: o, Len: l, Kind: disk.Data})
				case segZero:
					s.add(disk.Extent{Off: o, Len: l, Kind: disk.Unallocated})
				case segParent:
					ps := im.parent.Size()
					if m := min(l, ps-o); m > 0 {
						for e, err := range im.parent.Extents(ctx, o, m) {
							if err != nil {
								return err
							}
							if !s.add(e) {
								return errStop
							}
						}
						o, l = o+m, l-m
					}
					s.add(disk.Extent{Off: o, Len: l, Kind: disk.Unallocated})
				}
				if s.stopped {
					return errStop
				}
				return nil
			})
		}
		if errors.Is(err, errStop) || s.stopped {
			return
		}
		if err != nil {
			yield(disk.Extent{}, err)
			return
		}
		s.flush()
	}
}

// Hole reporting in fixed disks: holes shorter than minHole are reported
// as data, and every hole gives holeMargin bytes at each end that borders
// data to the data, so that extents stay coarse and a 4 KiB read that
// holds stored bytes is always inside one data extent, whatever its
// alignment.
const (
	minHole    = 64 << 10
	holeMargin = 4 << 10
)

// fixedExtents reports the file's holes as unallocated, using SEEK_DATA
// and SEEK_HOLE when the image is a plain file; everything else is data.
func (im *image) fixedExtents(ctx context.Context, off, end int64, s *extentSink) error {
	add := func(a, b int64, k disk.ExtentKind) bool {
		a, b = max(a, off), min(b, end)
		return a >= b || s.add(disk.Extent{Off: a, Len: b - a, Kind: k})
	}
	seek := im.seeker()
	if seek == nil {
		add(off, end, disk.Data)
		return nil
	}
	done := off // everything below is reported
	// hole reports the file's hole [a, b), less the margins, and the data
	// before it.
	hole := func(a, b int64) bool {
		if a > 0 {
			a += holeMargin
		}
		if b < im.size {
			b -= holeMargin
		}
		if b-a < minHole || b <= done || a >= end {
			return true
		}
		if !add(done, a, disk.Data) || !add(a, b, disk.Unallocated) {
			return false
		}
		done = b
		return true
	}
	// Scanning starts a margin early, so that a hole's edges do not
	// depend on where the query starts.
	for cur := max(0, off-holeMargin); cur < min(end+holeMargin, im.size) && done < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, err := seek(cur, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && d >= im.size) {
			if !hole(cur, im.size) {
				return nil
			}
			break
		}
		if err != nil {
			break // the file system cannot tell: data
		}
		if d > cur && !hole(cur, d) {
			return nil
		}
		h, err := seek(d, unix.SEEK_HOLE)
		if err != nil || h <= d {
			break
		}
		cur = h
	}
	add(done, end, disk.Data)
	return nil
}

// seeker returns lseek on the image's file, or nil when it is not a plain
// file.
func (im *image) seeker() func(off int64, whence int) (int64, error) {
	if im.osf == nil {
		return nil
	}
	rc, err := im.osf.SyscallConn()
	if err != nil {
		return nil
	}
	return func(off int64, whence int) (r int64, err error) {
		if cerr := rc.Control(func(fd uintptr) { r, err = unix.Seek(int(fd), off, whence) }); cerr != nil {
			return 0, cerr
		}
		return r, err
	}
}
