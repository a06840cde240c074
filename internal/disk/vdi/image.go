package vdi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/bits"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// image is an opened VDI file. Everything it holds is immutable after open,
// so ReadAt and Extents need no locks.
type image struct {
	f       disk.File
	name    string
	h       *header
	size    int64
	bs      int64
	offData int64
	m       []uint32 // the block map, host order
	fd      int      // -1 when the file cannot be asked about holes
}

var (
	_ disk.Image   = (*image)(nil)
	_ disk.Checker = (*image)(nil)
)

func open(ctx context.Context, f disk.File, _ *disk.OpenOptions) (disk.Image, error) {
	h, m, err := load(ctx, f)
	if err != nil {
		return nil, err
	}
	scanMap(h, m, f.Size(), func(ft fault) bool {
		err = ft.err(f.Name())
		return false
	})
	if err != nil {
		return nil, err
	}
	img := &image{
		f: f, name: f.Name(), h: h, m: m, fd: -1,
		size: h.size(), bs: int64(h.blockSize), offData: int64(h.offData),
	}
	if of, ok := disk.OSFile(f); ok {
		img.fd = int(of.Fd())
	}
	return img, nil
}

// load reads and checks the header and reads the block map.
func load(ctx context.Context, f disk.File) (*header, []uint32, error) {
	name := f.Name()
	b := make([]byte, min(f.Size(), headerReadSize))
	if n, err := f.ReadAt(b, 0); n < len(b) {
		return nil, nil, fmt.Errorf("vdi %s: read header: %w", name, orEOF(err))
	}
	h, err := parseHeader(name, b)
	if err != nil {
		return nil, nil, err
	}
	if end := h.mapEnd(); end > uint64(f.Size()) {
		return nil, nil, fmt.Errorf("vdi %s: block map [%#x, %#x) beyond end of file (%d bytes): %w", name, h.offBlocks, end, f.Size(), errs.ErrCorrupt)
	}
	if 4*uint64(h.blocks) > maxMapBytes {
		return nil, nil, fmt.Errorf("vdi %s: block map of %d entries is larger than the 256 MiB ferry reads: %w", name, h.blocks, errs.ErrUnimplemented)
	}
	m := make([]uint32, h.blocks)
	buf := make([]byte, min(len(m)*4, 1<<20))
	for i := 0; i < len(m); {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		k := min(len(m)-i, len(buf)/4)
		p := buf[:4*k]
		if n, err := f.ReadAt(p, int64(h.offBlocks)+4*int64(i)); n < len(p) {
			return nil, nil, fmt.Errorf("vdi %s: read block map: %w", name, orEOF(err))
		}
		for j := range k {
			m[i+j] = binary.LittleEndian.Uint32(p[4*j:])
		}
		i += k
	}
	return h, m, nil
}

// orEOF explains a short read: a file that ends early (io.EOF, or no error
// at all) is corrupt; any other error is returned as it is.
func orEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("file ends early: %w", errs.ErrCorrupt)
	}
	return err
}

type faultKind uint8

const (
	faultRange faultKind = iota // entry ≥ blocks allocated
	faultDup                    // two entries name the same data block
	faultEOF                    // data block beyond the end of the file
)

// fault is one bad block map entry.
type fault struct {
	kind  faultKind
	block int64  // virtual block
	entry uint32 // its map entry
	h     *header
	fsize int64
}

func (ft fault) String() string {
	switch ft.kind {
	case faultRange:
		return fmt.Sprintf("block %d: data block %d out of range (%d allocated)", ft.block, ft.entry, ft.h.allocated)
	case faultDup:
		return fmt.Sprintf("block %d: data block %d is also used by another block", ft.block, ft.entry)
	}
	off := int64(ft.h.offData) + int64(ft.entry)*int64(ft.h.blockSize)
	return fmt.Sprintf("block %d: data block %d at %#x beyond end of file (%d bytes)", ft.block, ft.entry, off, ft.fsize)
}

func (ft fault) err(name string) error {
	return fmt.Errorf("vdi %s: %s: %w", name, ft, errs.ErrCorrupt)
}

// scanMap checks every entry of m and calls fn for each fault until fn
// returns false. It returns the set of data blocks referenced (a bitmap of
// h.allocated bits) and the number of allocated entries.
func scanMap(h *header, m []uint32, fileSize int64, fn func(fault) bool) ([]uint64, int64) {
	seen := make([]uint64, (int64(h.allocated)+63)/64)
	bs := int64(h.blockSize)
	size := h.size()
	var count int64
	for b, e := range m {
		if e >= blockZero {
			continue
		}
		count++
		ft := fault{block: int64(b), entry: e, h: h, fsize: fileSize}
		switch {
		case e >= h.allocated:
			ft.kind = faultRange
		case seen[e/64]&(1<<(e%64)) != 0:
			ft.kind = faultDup
		default:
			seen[e/64] |= 1 << (e % 64)
			// Only the part of the block inside the disk must be stored.
			used := min(bs, size-int64(b)*bs)
			if int64(h.offData)+int64(e)*bs+used <= fileSize {
				continue
			}
			ft.kind = faultEOF
		}
		if !fn(ft) {
			break
		}
	}
	return seen, count
}

func allocated(e uint32) bool { return e < blockZero }

// ReadAt reads the virtual disk. Runs of blocks stored one after the other
// are read with one ReadAt on the file.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vdi %s: read at negative offset %d: %w", im.name, off, errs.ErrInvalidArgument)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), im.size-off))
	q := p[:n]
	for len(q) > 0 {
		b := off / im.bs
		within := off % im.bs
		e := im.m[b]
		k := min(int64(len(q)), im.bs-within)
		if !allocated(e) {
			clear(q[:k])
			q, off = q[k:], off+k
			continue
		}
		// Extend over following blocks whose data comes right after.
		for nb, ne := b+1, e+1; k < int64(len(q)) && im.m[nb] == ne && allocated(ne); nb, ne = nb+1, ne+1 {
			k += min(im.bs, int64(len(q))-k)
		}
		foff := im.offData + int64(e)*im.bs + within
		if got, err := im.f.ReadAt(q[:k], foff); int64(got) < k {
			if err == nil || errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("vdi %s: block %d: data at %#x beyond end of file: %w", im.name, (off+int64(got))/im.bs, foff+int64(got), errs.ErrCorrupt)
			}
			return 0, fmt.Errorf("vdi %s: read block %d at %#x: %w", im.name, b, foff, err)
		}
		q, off = q[k:], off+k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (im *image) Close() error { return im.f.Close() }
func (im *image) Size() int64  { return im.size }

func (im *image) Info() disk.Info {
	return disk.Info{
		Filename:    im.name,
		Format:      "vdi",
		VirtualSize: im.size,
		ClusterSize: im.bs,
		Specific: map[string]any{
			"subformat":  im.h.subformat(),
			"uuid":       uuidString(im.h.uuidImage),
			"block-size": im.bs,
			"comment":    im.h.comment,
		},
	}
}

// Extents reports the block map: unallocated blocks, zero blocks, and data
// blocks. Data blocks that are wholly a hole of the file (never written:
// most of a fresh fixed image) are reported as Zero when the file system can
// tell.
func (im *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		if n <= 0 {
			return
		}
		if off < 0 {
			n += off
			off = 0
		}
		if n <= 0 || off >= im.size {
			return
		}
		end := off + min(n, im.size-off)
		var cur disk.Extent // pending, merged with what follows
		emit := func(e disk.Extent) bool {
			if e.Len <= 0 {
				return true
			}
			if cur.Len > 0 && cur.Kind == e.Kind && cur.End() == e.Off {
				cur.Len += e.Len
				return true
			}
			if cur.Len > 0 && !yield(cur, nil) {
				return false
			}
			cur = e
			return true
		}
		for i := 0; off < end; i++ {
			if i%1024 == 0 {
				if err := ctx.Err(); err != nil {
					yield(disk.Extent{}, err)
					return
				}
			}
			b := off / im.bs
			e := im.m[b]
			k := min(end-off, (b+1)*im.bs-off)
			switch {
			case e == blockFree:
				if !emit(disk.Extent{Off: off, Len: k, Kind: disk.Unallocated}) {
					return
				}
			case e == blockZero:
				if !emit(disk.Extent{Off: off, Len: k, Kind: disk.Zero}) {
					return
				}
			default:
				for nb, ne := b+1, e+1; off+k < end && im.m[nb] == ne && allocated(ne); nb, ne = nb+1, ne+1 {
					k += min(im.bs, end-off-k)
				}
				if !im.dataExtents(off, k, im.offData+int64(e)*im.bs+off%im.bs, emit) {
					return
				}
			}
			off += k
		}
		if cur.Len > 0 {
			yield(cur, nil)
		}
	}
}

// dataExtents reports [off, off+n), stored contiguously at foff in the file,
// as Data, except blocks whose stored range is wholly a hole of the file
// (never written), which are Zero, where the file system can tell.
func (im *image) dataExtents(off, n, foff int64, emit func(disk.Extent) bool) bool {
	if im.fd < 0 {
		return emit(disk.Extent{Off: off, Len: n, Kind: disk.Data})
	}
	// What the file system said last: [foff, dStart) is a hole and
	// [dStart, dEnd) data.
	dStart, dEnd := int64(-1), int64(-1)
	for n > 0 {
		k := min(n, im.bs-off%im.bs)
		if foff >= dEnd {
			dStart, dEnd = im.nextData(foff)
		}
		kind := disk.Data
		if foff+k <= dStart {
			kind = disk.Zero
		}
		if !emit(disk.Extent{Off: off, Len: k, Kind: kind}) {
			return false
		}
		off, foff, n = off+k, foff+k, n-k
	}
	return true
}

// nextData returns the first data region of the file at or after pos. With
// no data after pos it returns an empty region at the largest offset; when
// the file system cannot tell, everything from pos on is data.
func (im *image) nextData(pos int64) (start, end int64) {
	const never = int64(1<<63 - 1)
	data, err := unix.Seek(im.fd, pos, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return never, never
	case err != nil || data < pos:
		return pos, never
	}
	hole, err := unix.Seek(im.fd, data, unix.SEEK_HOLE)
	if err != nil || hole <= data {
		hole = never
	}
	return data, hole
}

// maxProblems bounds the fault lines a check reports.
const maxProblems = 200

// Check re-reads the header and the block map from the file and reports
// out-of-range and shared entries, data blocks beyond the end of the file,
// an allocated-blocks count that does not match the map, and data blocks no
// entry points at (leaks).
func (im *image) Check(ctx context.Context) (disk.CheckResult, error) {
	res := disk.CheckResult{Filename: im.name, Format: "vdi"}
	problem := func(s string) {
		if len(res.Problems) < maxProblems {
			res.Problems = append(res.Problems, s)
		}
	}
	h, m, err := load(ctx, im.f)
	switch {
	case err != nil && ctx.Err() != nil:
		return res, err
	case errs.Is(err, errs.Corrupt) || errs.Is(err, errs.Unimplemented):
		res.Corruptions++
		problem(err.Error())
		return res, nil
	case err != nil:
		return res, err
	}
	seen, count := scanMap(h, m, im.f.Size(), func(ft fault) bool {
		res.Corruptions++
		problem(ft.String())
		return true
	})
	if count != int64(h.allocated) {
		res.Corruptions++
		problem(fmt.Sprintf("header counts %d allocated blocks, the block map %d", h.allocated, count))
	}
	for i := int64(0); i < int64(h.allocated); i++ {
		if seen[i/64]&(1<<(i%64)) == 0 {
			res.Leaks++
			problem(fmt.Sprintf("data block %d is not used by any block", i))
		}
	}
	var used int64
	for _, w := range seen {
		used += int64(bits.OnesCount64(w))
	}
	res.TotalClusters = int64(h.blocks)
	res.AllocatedClusts = used
	res.AllocatedBytes = used * int64(h.blockSize)
	res.ImageEndOffset = int64(h.offData) + int64(h.allocated)*int64(h.blockSize)
	return res, nil
}
