package xva

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// chunk is one present chunk of a VDI in an archive file.
type chunk struct {
	virt int64 // offset in the disk
	file int64 // offset of the data in the archive
	n    int32 // length
	num  int32 // chunk number (name)
	sum  chunkSum
}

func (c *chunk) end() int64 { return c.virt + int64(c.n) }

// vdiIndex is a VDI's chunks, in ascending order, never overlapping.
type vdiIndex struct {
	v        *vdi
	chunks   []chunk
	stored   int64
	verified []atomic.Uint64 // bit i: chunks[i] matched its checksum
}

func (x *vdiIndex) isVerified(i int) bool {
	return x.verified[i/64].Load()&(1<<(i%64)) != 0
}

func (x *vdiIndex) setVerified(i int) { x.verified[i/64].Or(1 << (i % 64)) }

// reader is an XVA opened on a file.
type reader struct {
	f     disk.File
	m     *manifest
	vdis  []*vdiIndex // in archive order, as m.vdis
	disks []*vdiIndex // as m.vm.Disks
	sums  map[sumKind]bool
	bufs  sync.Pool // *[]byte, for verifying chunks read in part
}

var _ archive.Reader = (*reader)(nil)

func open(ctx context.Context, f disk.File, _ *archive.OpenOptions) (archive.Reader, error) {
	r, err := scanFile(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("xva %s: %w", f.Name(), err)
	}
	return r, nil
}

// scanFile reads ova.xml and indexes every chunk member, the way xapi's
// importer walks the archive.
func scanFile(ctx context.Context, f disk.File) (*reader, error) {
	var magic [4]byte
	n, _ := f.ReadAt(magic[:], 0)
	if c := sniff(magic[:n]); c != plain {
		return nil, fmt.Errorf("%s-compressed XVA cannot be read at random; read it as a stream (xva OpenStream decompresses on the fly) or decompress it first: %w", c, errs.ErrUnimplemented)
	}
	wr := &windowReader{f: f, size: f.Size()}
	tr := tar.NewReader(wr)
	hdr, err := tr.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("empty archive, no ova.xml: %w", errs.ErrCorrupt)
		}
		return nil, fmt.Errorf("not a tar archive: %v: %w", err, errs.ErrCorrupt)
	}
	m, err := readManifest(hdr, tr, wr.pos, f.Size())
	if err != nil {
		return nil, err
	}
	r := &reader{f: f, m: m, sums: map[sumKind]bool{}}
	rules := chunkRules{firstLen: -1}
	for _, v := range m.vdis {
		x := &vdiIndex{v: v}
		cur := newCursor(v)
		for !cur.done() {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			hdr, err := nextMember(tr, v, cur)
			if err != nil {
				return nil, err
			}
			num, off, err := rules.place(cur, hdr.Name, hdr.Size)
			if err != nil {
				return nil, err
			}
			data := wr.pos
			if data+hdr.Size > f.Size() {
				return nil, fmt.Errorf("%s: member %s truncated: %d bytes of data at %d, the file ends at %d: %w", v.label(), hdr.Name, hdr.Size, data, f.Size(), errs.ErrCorrupt)
			}
			sum, err := readSum(tr, v, hdr.Name, num, off+hdr.Size)
			if err != nil {
				return nil, err
			}
			r.sums[sum.want] = true
			if hdr.Size == 0 {
				// A keep-alive: nothing to index, but its checksum is
				// checked like any other.
				if ok, got := sum.check(nil); !ok {
					return nil, sumError(v, num, &sum, got)
				}
				continue
			}
			x.chunks = append(x.chunks, chunk{virt: off, file: data, n: int32(hdr.Size), num: int32(num), sum: sum})
			x.stored += hdr.Size
		}
		x.verified = make([]atomic.Uint64, (len(x.chunks)+63)/64)
		r.vdis = append(r.vdis, x)
	}
	for _, v := range m.disks {
		for _, x := range r.vdis {
			if x.v == v {
				r.disks = append(r.disks, x)
			}
		}
	}
	return r, nil
}

// readManifest reads and parses the first member, which must be ova.xml.
func readManifest(hdr *tar.Header, tr *tar.Reader, pos, fileSize int64) (*manifest, error) {
	if hdr.Name != ovaXMLName || !isRegular(hdr) {
		return nil, fmt.Errorf("first member is %q, not ova.xml: %w", hdr.Name, errs.ErrCorrupt)
	}
	if hdr.Size > maxOVAXML {
		return nil, fmt.Errorf("ova.xml of %d bytes is larger than ferry reads (%d): %w", hdr.Size, maxOVAXML, errs.ErrUnimplemented)
	}
	if fileSize >= 0 && pos+hdr.Size > fileSize {
		return nil, fmt.Errorf("ova.xml truncated: %d bytes at %d, the file ends at %d: %w", hdr.Size, pos, fileSize, errs.ErrCorrupt)
	}
	// Read without trusting the size up front: a stream may end early.
	b, err := io.ReadAll(io.LimitReader(tr, hdr.Size))
	if err == nil && int64(len(b)) < hdr.Size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("ova.xml truncated (%d of %d bytes): %v: %w", len(b), hdr.Size, err, errs.ErrCorrupt)
	}
	return parseManifest(b)
}

// nextMember reads the next member header while a VDI still needs chunks.
func nextMember(tr *tar.Reader, v *vdi, cur *cursor) (*tar.Header, error) {
	hdr, err := tr.Next()
	if errors.Is(err, io.EOF) {
		after := "ova.xml"
		if cur.lastNm != "" {
			after = cur.lastNm
		}
		return nil, fmt.Errorf("%s: archive ends after %s with the disk filled up to %d of %d bytes (truncated?): %w", v.label(), after, cur.offset, v.size, errs.ErrCorrupt)
	}
	if err != nil {
		after := "ova.xml"
		if cur.lastNm != "" {
			after = cur.lastNm + " and its checksum"
		}
		return nil, memberErr(v, "the member after "+after, err)
	}
	if !isRegular(hdr) {
		return nil, fmt.Errorf("%s: member %q is not a regular file (type %q): %w", v.label(), hdr.Name, hdr.Typeflag, errs.ErrCorrupt)
	}
	return hdr, nil
}

// readSum reads the checksum member that must follow chunk member name
// (number num, ending at disk offset end).
func readSum(tr *tar.Reader, v *vdi, name string, num, end int64) (chunkSum, error) {
	shdr, err := tr.Next()
	if err != nil {
		return chunkSum{}, truncErr(v, num, end, "the checksum member of "+name, err)
	}
	ext, err := sumMember(v, name, shdr.Name)
	if err != nil {
		return chunkSum{}, err
	}
	if !isRegular(shdr) {
		return chunkSum{}, fmt.Errorf("%s: checksum member %s is not a regular file: %w", v.label(), shdr.Name, errs.ErrCorrupt)
	}
	// Longer text than xapi prints can never match; read no more of it.
	var text [maxSumLen + 1]byte
	k, err := io.ReadFull(tr, text[:min(shdr.Size, maxSumLen+1)])
	if err != nil {
		return chunkSum{}, truncErr(v, num, end, shdr.Name, err)
	}
	return parseSum(ext, text[:k]), nil
}

// truncErr describes an archive that ends or breaks inside a chunk.
func truncErr(v *vdi, num, off int64, what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: archive truncated in chunk %d (%s) at disk offset %d: %w", v.label(), num, what, off, errs.ErrCorrupt)
	}
	return memberErr(v, fmt.Sprintf("chunk %d (%s) at disk offset %d", num, what, off), err)
}

// memberErr wraps a tar or read error met at a member.
func memberErr(v *vdi, what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: archive truncated at %s: %w", v.label(), what, errs.ErrCorrupt)
	}
	if errs.CodeOf(err) != errs.Unknown {
		return fmt.Errorf("%s: %s: %w", v.label(), what, err)
	}
	return fmt.Errorf("%s: %s: %v: %w", v.label(), what, err, errs.ErrCorrupt)
}

func (r *reader) VM() core.VMSpec {
	vm := r.m.vm
	vm.Disks = append([]core.DiskSpec(nil), vm.Disks...)
	vm.NICs = append([]core.NICSpec(nil), vm.NICs...)
	return vm
}

func (r *reader) Close() error { return r.f.Close() }

func (r *reader) OpenDisk(_ context.Context, i int) (disk.Image, error) {
	if i < 0 || i >= len(r.disks) {
		return nil, fmt.Errorf("xva %s: no disk %d (the VM has %d): %w", r.f.Name(), i, len(r.disks), errs.ErrNotFound)
	}
	return &image{r: r, x: r.disks[i]}, nil
}

// Verify checks every chunk of every VDI the archive carries.
func (r *reader) Verify(ctx context.Context) error {
	for _, x := range r.vdis {
		for i := range x.chunks {
			if err := ctx.Err(); err != nil {
				return err
			}
			if x.isVerified(i) {
				continue
			}
			buf := r.getBuf(int(x.chunks[i].n))
			err := r.verifyChunk(x, i, *buf)
			r.bufs.Put(buf)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *reader) getBuf(n int) *[]byte {
	if b, ok := r.bufs.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, max(n, chunkSize))
	return &b
}

// verifyChunk reads chunk i whole into buf (its length) and checks it.
func (r *reader) verifyChunk(x *vdiIndex, i int, buf []byte) error {
	c := &x.chunks[i]
	if err := r.readFile(x, c, buf, c.file); err != nil {
		return err
	}
	return r.check(x, i, buf)
}

// check compares data, the whole of chunk i, with its checksum.
func (r *reader) check(x *vdiIndex, i int, data []byte) error {
	c := &x.chunks[i]
	if ok, got := c.sum.check(data); !ok {
		return fmt.Errorf("xva %s: %w", r.f.Name(), sumError(x.v, int64(c.num), &c.sum, got))
	}
	x.setVerified(i)
	return nil
}

// readFile reads len(p) bytes at off of chunk c's data.
func (r *reader) readFile(x *vdiIndex, c *chunk, p []byte, off int64) error {
	n, err := r.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("short read (%d of %d bytes): %w", n, len(p), errs.ErrCorrupt)
	}
	return fmt.Errorf("xva %s: %s: read chunk %d at %d: %w", r.f.Name(), x.v.label(), c.num, off, err)
}

func (r *reader) Info() archive.Info {
	info := archive.Info{Format: "xva", VM: r.VM(), Extra: map[string]any{"version": maps.Clone(r.m.version)}}
	var sums []string
	for _, k := range []sumKind{sumXXH, sumSHA1} {
		if r.sums[k] {
			sums = append(sums, k.String())
		}
	}
	switch len(sums) {
	case 1:
		info.Extra["checksum"] = sums[0]
	case 2:
		info.Extra["checksum"] = sums
	}
	for i, x := range r.disks {
		info.Disks = append(info.Disks, archive.DiskInfo{
			Index: i, Name: x.v.name, Member: x.v.ref, Format: "raw",
			VirtualSize: x.v.size, StoredSize: x.stored,
		})
	}
	return info
}

// image is one disk of an opened archive.
type image struct {
	r *reader
	x *vdiIndex
}

var _ disk.Image = (*image)(nil)

func (im *image) Size() int64  { return im.x.v.size }
func (im *image) Close() error { return nil }

func (im *image) Info() disk.Info {
	return disk.Info{
		Filename:    im.r.f.Name(),
		Format:      "xva",
		VirtualSize: im.x.v.size,
		ClusterSize: chunkSize,
		Specific: map[string]any{
			"member": im.x.v.ref,
			"name":   im.x.v.name,
			"chunks": len(im.x.chunks),
			"stored": im.x.stored,
		},
	}
}

// find returns the index of the first chunk ending after off.
func (x *vdiIndex) find(off int64) int {
	return sort.Search(len(x.chunks), func(i int) bool { return x.chunks[i].end() > off })
}

// ReadAt reads the disk. Each chunk's checksum is checked the first time
// the chunk is read; a chunk read in part is read whole once for that.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
	size := im.x.v.size
	if off < 0 {
		return 0, fmt.Errorf("xva %s: %s: read at negative offset %d: %w", im.r.f.Name(), im.x.v.label(), off, errs.ErrInvalidArgument)
	}
	if off >= size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), size)
	x := im.x
	pos := off
	for i := x.find(off); pos < end; {
		if i < len(x.chunks) && x.chunks[i].virt <= pos {
			c := &x.chunks[i]
			e := min(end, c.end())
			dst := p[pos-off : e-off]
			switch {
			case x.isVerified(i):
				if err := im.r.readFile(x, c, dst, c.file+(pos-c.virt)); err != nil {
					return int(pos - off), err
				}
			case pos == c.virt && e == c.end():
				if err := im.r.readFile(x, c, dst, c.file); err != nil {
					return int(pos - off), err
				}
				if err := im.r.check(x, i, dst); err != nil {
					return int(pos - off), err
				}
			default:
				buf := im.r.getBuf(int(c.n))
				err := im.r.verifyChunk(x, i, *buf)
				if err == nil {
					copy(dst, (*buf)[pos-c.virt:])
				}
				im.r.bufs.Put(buf)
				if err != nil {
					return int(pos - off), err
				}
			}
			pos = e
			i++
			continue
		}
		next := end
		if i < len(x.chunks) {
			next = min(end, x.chunks[i].virt)
		}
		clear(p[pos-off : next-off])
		pos = next
	}
	if end-off < int64(len(p)) {
		return int(end - off), io.EOF
	}
	return len(p), nil
}

// Extents reports present chunks as data (touching chunks merged) and
// omitted ones as unallocated.
func (im *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		x := im.x
		end := min(off+n, x.v.size)
		off = max(off, 0)
		if off >= end {
			return
		}
		pos := off
		i := x.find(off)
		for pos < end {
			if err := ctx.Err(); err != nil {
				yield(disk.Extent{}, err)
				return
			}
			if i < len(x.chunks) && x.chunks[i].virt <= pos {
				e := x.chunks[i].end()
				for i++; i < len(x.chunks) && x.chunks[i].virt == e; i++ {
					e = x.chunks[i].end()
				}
				e = min(e, end)
				if !yield(disk.Extent{Off: pos, Len: e - pos, Kind: disk.Data}, nil) {
					return
				}
				pos = e
				continue
			}
			next := end
			if i < len(x.chunks) {
				next = min(end, x.chunks[i].virt)
			}
			if !yield(disk.Extent{Off: pos, Len: next - pos, Kind: disk.Unallocated}, nil) {
				return
			}
			pos = next
		}
	}
}

// windowReader reads a File front to back for archive/tar, through a small
// window so that the many headers of a chunked archive cost about one
// ReadAt per chunk. Seek lets tar skip chunk data without reading it.
type windowReader struct {
	f      disk.File
	size   int64
	pos    int64
	win    []byte
	winOff int64
}

const windowSize = 4096

func (w *windowReader) Read(p []byte) (int, error) {
	if w.pos >= w.size {
		return 0, io.EOF
	}
	if w.pos >= w.winOff && w.pos < w.winOff+int64(len(w.win)) {
		n := copy(p, w.win[w.pos-w.winOff:])
		w.pos += int64(n)
		return n, nil
	}
	if len(p) >= windowSize {
		k := min(int64(len(p)), w.size-w.pos)
		n, err := w.f.ReadAt(p[:k], w.pos)
		w.pos += int64(n)
		if n == int(k) {
			return n, nil
		}
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	if cap(w.win) < windowSize {
		w.win = make([]byte, windowSize)
	}
	k := min(int64(windowSize), w.size-w.pos)
	n, err := w.f.ReadAt(w.win[:k], w.pos)
	w.win, w.winOff = w.win[:n], w.pos
	if n < int(k) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if n == 0 {
			return 0, err
		}
	}
	c := copy(p, w.win)
	w.pos += int64(c)
	return c, nil
}

func (w *windowReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += w.pos
	case io.SeekEnd:
		off += w.size
	default:
		return w.pos, fmt.Errorf("seek: bad whence %d", whence)
	}
	if off < 0 {
		return w.pos, fmt.Errorf("seek to negative offset %d", off)
	}
	w.pos = off
	return off, nil
}
