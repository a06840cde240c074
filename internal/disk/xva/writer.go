package xva

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// Defaults for a VMSpec that leaves them out.
const (
	defaultName   = "ferry VM"
	defaultMemory = 1 << 30
)

const blockSize = 512

// archiveWriter writes an XVA front to back.
type archiveWriter struct {
	out   *sink
	vm    core.VMSpec
	l     *layout
	kind  sumKind
	mtime int64
	// buf holds a chunk member ready to write in one piece: its header,
	// its data at buf[blockSize:], then padding and the checksum member.
	buf      []byte
	next     int         // next disk to hand out
	cur      *diskWriter // the disk being written
	firstLen int64       // length of the archive's first chunk, -1 before it
	err      error       // sticky: the archive cannot be finished
	done     bool
}

var _ archive.Writer = (*archiveWriter)(nil)

// sink writes to the target in order: with WriteAt at the running offset
// if it is a FileTarget, with Write otherwise.
type sink struct {
	t    disk.Target
	ft   disk.FileTarget
	name string
	pos  int64
	err  error
}

func (s *sink) write(p []byte) error {
	if s.err != nil {
		return s.err
	}
	var n int
	var err error
	if s.ft != nil {
		n, err = s.ft.WriteAt(p, s.pos)
	} else {
		n, err = s.t.Write(p)
	}
	s.pos += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		s.err = fmt.Errorf("xva %s: write at %d: %w", s.name, s.pos, err)
	}
	return s.err
}

func create(ctx context.Context, t disk.Target, vm core.VMSpec, opts *archive.CreateOptions) (archive.Writer, error) {
	kind, err := checkOptions(opts)
	if err != nil {
		return nil, err
	}
	out := &sink{t: t, name: "stream"}
	if ft, ok := t.(disk.FileTarget); ok {
		out.ft, out.name = ft, ft.Name()
	}
	if err := normalize(&vm); err != nil {
		return nil, fmt.Errorf("xva %s: %w", out.name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	w := &archiveWriter{out: out, vm: vm, l: newLayout(&vm), kind: kind, mtime: now.Unix(), firstLen: -1}
	xml := ovaXML(&w.vm, w.l, now)
	if int64(len(xml)) > maxOVAXML {
		return nil, fmt.Errorf("xva %s: ova.xml of %d bytes is too large: %w", out.name, len(xml), errs.ErrInvalidArgument)
	}
	hdr := make([]byte, blockSize, blockSize+len(xml)+blockSize)
	tarHeader(hdr, ovaXMLName, int64(len(xml)), w.mtime)
	hdr = append(hdr, xml...)
	hdr = append(hdr, make([]byte, padding(int64(len(xml))))...)
	if err := out.write(hdr); err != nil {
		return nil, err
	}
	return w, nil
}

// normalize checks vm and fills the defaults the package doc lists.
func normalize(vm *core.VMSpec) error {
	if vm.Name == "" {
		vm.Name = defaultName
	}
	switch {
	case vm.CPUs < 0 || vm.CPUs > 1<<16:
		return fmt.Errorf("VM %q: %d CPUs: %w", vm.Name, vm.CPUs, errs.ErrInvalidArgument)
	case vm.CPUs == 0:
		vm.CPUs = 1
	}
	switch {
	case vm.MemoryBytes < 0 || vm.MemoryBytes > 1<<50:
		return fmt.Errorf("VM %q: %d bytes of memory: %w", vm.Name, vm.MemoryBytes, errs.ErrInvalidArgument)
	case vm.MemoryBytes == 0:
		vm.MemoryBytes = defaultMemory
	}
	vm.Disks = append([]core.DiskSpec(nil), vm.Disks...)
	vm.NICs = append([]core.NICSpec(nil), vm.NICs...)
	seen := map[int]bool{}
	dup, allZero := false, true
	for i := range vm.Disks {
		d := &vm.Disks[i]
		if d.Size < 0 || d.Size > maxVirtualSize || d.Size > maxChunks*chunkSize {
			return fmt.Errorf("disk %d %q: size %d out of range (0 to %d): %w", i, d.Name, d.Size, int64(min(maxVirtualSize, maxChunks*chunkSize)), errs.ErrInvalidArgument)
		}
		d.Size = (d.Size + blockSize - 1) &^ (blockSize - 1)
		if d.Position < 0 {
			return fmt.Errorf("disk %d %q: position %d: %w", i, d.Name, d.Position, errs.ErrInvalidArgument)
		}
		dup = dup || seen[d.Position]
		seen[d.Position] = true
		allZero = allZero && d.Position == 0
	}
	if dup {
		if !allZero {
			return fmt.Errorf("VM %q: two disks share a position (userdevice): %w", vm.Name, errs.ErrInvalidArgument)
		}
		for i := range vm.Disks {
			vm.Disks[i].Position = i
		}
	}
	return nil
}

func padding(n int64) int64 { return (blockSize - n%blockSize) % blockSize }

// tarHeader fills b (512 bytes) with a ustar header for a regular file.
func tarHeader(b []byte, name string, size, mtime int64) {
	clear(b[:blockSize])
	copy(b[0:100], name)
	octal(b[100:108], 0o644)
	octal(b[108:116], 0)
	octal(b[116:124], 0)
	octal(b[124:136], size)
	octal(b[136:148], mtime)
	b[156] = '0'
	copy(b[257:263], "ustar\x00")
	copy(b[263:265], "00")
	copy(b[265:297], "root")
	copy(b[297:329], "root")
	copy(b[148:156], "        ")
	sum := int64(0)
	for _, c := range b[:blockSize] {
		sum += int64(c)
	}
	octal(b[148:155], sum)
	b[155] = ' '
}

// octal writes v as zero-padded octal digits and a NUL into dst.
func octal(dst []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	n := len(dst) - 1
	for i := range n {
		dst[i] = '0'
	}
	copy(dst[n-len(s):n], s)
	dst[n] = 0
}

// NextDisk starts the next disk of the VM, in the order of vm.Disks.
func (w *archiveWriter) NextDisk(ctx context.Context) (disk.Writer, error) {
	if err := w.usable(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if w.cur != nil {
		return nil, fmt.Errorf("xva %s: disk %d not committed before the next one: %w", w.out.name, w.cur.i, errs.ErrFailedPrecondition)
	}
	if w.next >= len(w.vm.Disks) {
		return nil, fmt.Errorf("xva %s: the VM has %d disks, all written: %w", w.out.name, len(w.vm.Disks), errs.ErrFailedPrecondition)
	}
	i := w.next
	w.next++
	d := &diskWriter{w: w, i: i, ref: w.l.vdis[i], size: w.vm.Disks[i].Size, last: -1}
	if d.size > 0 {
		d.last = (d.size - 1) / chunkSize
	}
	// xapi's importer sizes every omitted chunk by the archive's first
	// chunk; if that one was short (a first disk under 1 MiB), write every
	// chunk so that nothing is omitted.
	d.omit = w.firstLen < 0 || w.firstLen == chunkSize
	if w.buf == nil {
		w.buf = make([]byte, blockSize+chunkSize+3*blockSize)
	}
	w.cur = d
	return d, nil
}

func (w *archiveWriter) usable() error {
	switch {
	case w.err != nil:
		return w.err
	case w.out.err != nil:
		return w.out.err
	case w.done:
		return fmt.Errorf("xva %s: archive already committed or closed: %w", w.out.name, errs.ErrFailedPrecondition)
	}
	return nil
}

// Commit ends the archive with two zero blocks.
func (w *archiveWriter) Commit(ctx context.Context) error {
	if err := w.usable(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.cur != nil || w.next < len(w.vm.Disks) {
		done := w.next
		if w.cur != nil {
			done--
		}
		return fmt.Errorf("xva %s: commit with %d of %d disks written: %w", w.out.name, done, len(w.vm.Disks), errs.ErrFailedPrecondition)
	}
	if err := w.out.write(make([]byte, 2*blockSize)); err != nil {
		return err
	}
	w.done = true
	return nil
}

// Close abandons the archive unless it was committed.
func (w *archiveWriter) Close() error {
	w.done = true
	w.buf = nil
	return nil
}

// diskWriter writes one VDI as 1 MiB chunk members, in order. The chunk
// being filled lives in the archive's buffer; it is written (or, if all
// zero and neither the first nor the last, omitted) when a write moves
// past it.
type diskWriter struct {
	w       *archiveWriter
	i       int
	ref     string
	size    int64
	last    int64 // number of the last chunk, -1 for an empty disk
	cur     int64 // number of the chunk in the buffer
	pos     int64 // writes must start here or later
	touched bool  // data was copied into the buffer
	omit    bool  // all-zero chunks may be left out
	done    bool
	closed  bool
}

var _ disk.Writer = (*diskWriter)(nil)

func (d *diskWriter) Size() int64      { return d.size }
func (d *diskWriter) Sequential() bool { return true }

func (d *diskWriter) usable() error {
	if d.closed || d.done {
		return fmt.Errorf("xva %s: disk %d already committed or closed: %w", d.w.out.name, d.i, errs.ErrFailedPrecondition)
	}
	return d.w.usable()
}

func (d *diskWriter) check(off, n int64) error {
	if off < d.pos {
		return fmt.Errorf("xva %s: disk %d: write at %d behind position %d (the writer is sequential): %w", d.w.out.name, d.i, off, d.pos, errs.ErrInvalidArgument)
	}
	if n < 0 || off+n > d.size {
		return fmt.Errorf("xva %s: disk %d: %d bytes at %d beyond size %d: %w", d.w.out.name, d.i, n, off, d.size, errs.ErrInvalidArgument)
	}
	return nil
}

func (d *diskWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := d.usable(); err != nil {
		return 0, err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		c := off / chunkSize
		if c != d.cur {
			if err := d.moveTo(c); err != nil {
				return n, err
			}
		}
		co := off - c*chunkSize
		k := copy(d.w.buf[blockSize+co:blockSize+chunkSize], p)
		d.touched = true
		p = p[k:]
		off += int64(k)
		n += k
		d.pos = off
	}
	return n, nil
}

// Zero moves the position past [off, off+n): the buffer already holds zeros
// there, and whole zero chunks are left out.
func (d *diskWriter) Zero(off, n int64) error {
	if err := d.usable(); err != nil {
		return err
	}
	if err := d.check(off, n); err != nil {
		return err
	}
	if n > 0 {
		d.pos = off + n
	}
	return nil
}

// moveTo finishes the chunk in the buffer and makes chunk c current. The
// chunks in between are all zero.
func (d *diskWriter) moveTo(c int64) error {
	if err := d.flush(); err != nil {
		return err
	}
	if !d.omit {
		for z := d.cur + 1; z < c; z++ {
			d.cur = z
			if err := d.flush(); err != nil {
				return err
			}
		}
	}
	d.cur = c
	return nil
}

// flush writes the current chunk unless it may be omitted.
func (d *diskWriter) flush() error {
	w := d.w
	n := min(chunkSize, d.size-d.cur*chunkSize)
	data := w.buf[blockSize : blockSize+n]
	zero := !d.touched || isZero(data)
	if zero && d.omit && d.cur != 0 && d.cur != d.last {
		return nil
	}
	name := fmt.Sprintf("%s/%08d", d.ref, d.cur)
	sum := sumText(w.kind, data)
	tarHeader(w.buf[:blockSize], name, n, w.mtime)
	pad := padding(n)
	tail := w.buf[blockSize+n : blockSize+n+pad+2*blockSize]
	clear(tail)
	tarHeader(tail[pad:], name+w.kind.ext(), int64(len(sum)), w.mtime)
	copy(tail[pad+blockSize:], sum)
	err := w.out.write(w.buf[:blockSize+n+pad+2*blockSize])
	clear(tail)
	if d.touched {
		clear(w.buf[blockSize : blockSize+chunkSize])
		d.touched = false
	}
	if w.firstLen < 0 {
		w.firstLen = n
	}
	return err
}

// isZero reports whether b is all zeros, eight bytes at a time.
func isZero(b []byte) bool {
	for len(b) >= 64 {
		v := binary.LittleEndian.Uint64(b) | binary.LittleEndian.Uint64(b[8:]) |
			binary.LittleEndian.Uint64(b[16:]) | binary.LittleEndian.Uint64(b[24:]) |
			binary.LittleEndian.Uint64(b[32:]) | binary.LittleEndian.Uint64(b[40:]) |
			binary.LittleEndian.Uint64(b[48:]) | binary.LittleEndian.Uint64(b[56:])
		if v != 0 {
			return false
		}
		b = b[64:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Commit writes the rest of the disk: the chunk in the buffer and the
// last chunk, which is always present.
func (d *diskWriter) Commit(ctx context.Context) error {
	if err := d.usable(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.last >= 0 {
		if d.cur != d.last {
			if err := d.moveTo(d.last); err != nil {
				return err
			}
		}
		if err := d.flush(); err != nil {
			return err
		}
	}
	d.done = true
	d.w.cur = nil
	return nil
}

// Close without Commit abandons the disk, and with it the archive.
func (d *diskWriter) Close() error {
	if !d.done && !d.closed && d.w.err == nil {
		d.w.err = fmt.Errorf("xva %s: disk %d was closed before it was committed; the archive is incomplete: %w", d.w.out.name, d.i, errs.ErrFailedPrecondition)
	}
	d.closed = true
	return nil
}
