package xenlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// cbtBlock is the granularity of changed block tracking: 64 KiB.
const cbtBlock = 64 << 10

// maxVHDSize is the largest VDI the lab's VHD files hold (2040 GiB).
const maxVHDSize = 2040 << 30

// bitmap is a set of 64 KiB blocks, most significant bit first within a
// byte, as VDI.list_changed_blocks reports it.
type bitmap []byte

func newBitmap(size int64) bitmap {
	blocks := (size + cbtBlock - 1) / cbtBlock
	return make(bitmap, (blocks+7)/8)
}

func (b bitmap) set(i int64) {
	if i/8 < int64(len(b)) {
		b[i/8] |= 0x80 >> (i % 8)
	}
}

func (b bitmap) has(i int64) bool { return i/8 < int64(len(b)) && b[i/8]&(0x80>>(i%8)) != 0 }

// or merges o into b.
func (b bitmap) or(o bitmap) {
	for i := range min(len(b), len(o)) {
		b[i] |= o[i]
	}
}

// markRange sets the blocks that [off, off+n) touches.
func (b bitmap) markRange(off, n int64) {
	if n <= 0 {
		return
	}
	for i := off / cbtBlock; i <= (off+n-1)/cbtBlock; i++ {
		b.set(i)
	}
}

func (b bitmap) count() int {
	n := 0
	for _, x := range b {
		for ; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}

// createVHD creates an empty dynamic VHD of size at path.
func (s *Server) createVHD(ctx context.Context, path string, size int64) error {
	w, err := s.disks.Create(ctx, path, "vhd", size, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Commit(ctx)
}

// openVHD opens a VDI's file.
func (s *Server) openVHD(ctx context.Context, path string) (disk.Image, error) {
	return s.disks.Open(ctx, path, &disk.RegistryOpenOptions{Format: "vhd", NoBacking: true})
}

// copyFile copies the VHD at src into a new sparse VHD at dst.
func (s *Server) copyFile(ctx context.Context, src, dst string, progress func(float64)) error {
	img, err := s.openVHD(ctx, src)
	if err != nil {
		return err
	}
	defer img.Close()
	w, err := s.disks.Create(ctx, dst, "vhd", img.Size(), nil)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := disk.Convert(ctx, w, img, &disk.ConvertOptions{Workers: 2, Progress: fracReporter(img.Size(), progress)}); err != nil {
		return err
	}
	return w.Commit(ctx)
}

// shareFile makes dst a second name of the VHD at src (a hard link), or,
// where the file system has no hard links (or the platform no link
// count), a copy.
func (s *Server) shareFile(ctx context.Context, src, dst string, progress func(float64)) error {
	if !canShare {
		return s.copyFile(ctx, src, dst, progress)
	}
	if err := os.Link(src, dst); err == nil {
		if progress != nil {
			progress(1)
		}
		return nil
	}
	return s.copyFile(ctx, src, dst, progress)
}

// unshare gives the VHD at path a file of its own if it shares one with
// another VDI (see copyVDI), before something writes it in place.
func (s *Server) unshare(ctx context.Context, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if n, ok := linkCount(st); !ok || n < 2 {
		return nil
	}
	tmp := path + ".unshare"
	defer os.Remove(tmp)
	if err := s.copyFile(ctx, path, tmp, nil); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// runSource yields runs of new data in ascending order: off, bytes.
type runSource func(ctx context.Context) (int64, []byte, error)

// rewrite builds a new VHD for the VDI at path: its current content with
// the runs of src laid over it, then renames it into place. Nothing is
// visible until the new file is complete; on any error the old file is
// untouched. It returns the 64 KiB blocks whose content changed.
func (s *Server) rewrite(ctx context.Context, path string, src runSource, progress func(float64)) (bitmap, error) {
	old, err := s.openVHD(ctx, path)
	if err != nil {
		return nil, err
	}
	defer old.Close()
	size := old.Size()
	changed := newBitmap(size)
	w, err := s.disks.Create(ctx, path, "vhd", size, nil)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	var pos int64
	buf := make([]byte, 1<<20)
	// copyOld copies the old content of [pos, end) into the new file.
	copyOld := func(end int64) error {
		for e, err := range old.Extents(ctx, pos, end-pos) {
			if err != nil {
				return err
			}
			if e.Kind != disk.Data {
				continue
			}
			for off := e.Off; off < e.End(); {
				n := min(int64(len(buf)), e.End()-off)
				if err := readFull(old, buf[:n], off); err != nil {
					return err
				}
				if err := writeNonZero(w, buf[:n], off); err != nil {
					return err
				}
				off += n
			}
		}
		pos = end
		return nil
	}
	oldBuf := make([]byte, cbtBlock)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		off, p, err := src(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if off < pos || off+int64(len(p)) > size {
			return nil, fmt.Errorf("run [%d, %d) out of order or beyond the %d-byte VDI: %w", off, off+int64(len(p)), size, errs.ErrInvalidArgument)
		}
		if err := copyOld(off); err != nil {
			return nil, err
		}
		// compare with the old content, 64 KiB block by block
		for o := off; o < off+int64(len(p)); {
			end := min((o/cbtBlock+1)*cbtBlock, off+int64(len(p)))
			ob := oldBuf[:end-o]
			if err := readFull(old, ob, o); err != nil {
				return nil, err
			}
			if !bytes.Equal(ob, p[o-off:end-off]) {
				changed.set(o / cbtBlock)
			}
			o = end
		}
		if err := writeNonZero(w, p, off); err != nil {
			return nil, err
		}
		pos = off + int64(len(p))
		if progress != nil && size > 0 {
			progress(float64(pos) / float64(size))
		}
	}
	if err := copyOld(size); err != nil {
		return nil, err
	}
	if err := w.Commit(ctx); err != nil {
		return nil, err
	}
	return changed, nil
}

// writeNonZero writes the 4 KiB pieces of p that are not all zeros; the
// new file reads zeros elsewhere.
func writeNonZero(w disk.Writer, p []byte, off int64) error {
	const g = 4096
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := w.WriteAt(p[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(p); {
		j := min(int((off+int64(i))/g+1)*g-int(off), len(p))
		if isZero(p[i:j]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i = j
	}
	return flush(len(p))
}

var zero64k = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zero64k))
		if !bytes.Equal(p[:n], zero64k[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// blockHashes returns XXH64 of every 64 KiB block of the VHD at path
// (0 for blocks that read as zeros without being stored).
func (s *Server) blockHashes(ctx context.Context, path string) ([]uint64, error) {
	img, err := s.openVHD(ctx, path)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	size := img.Size()
	hs := make([]uint64, (size+cbtBlock-1)/cbtBlock)
	buf := make([]byte, cbtBlock)
	for e, err := range img.Extents(ctx, 0, size) {
		if err != nil {
			return nil, err
		}
		if e.Kind != disk.Data {
			continue
		}
		for b := e.Off / cbtBlock; b*cbtBlock < e.End(); b++ {
			off := b * cbtBlock
			n := min(cbtBlock, size-off)
			if err := readFull(img, buf[:n], off); err != nil {
				return nil, err
			}
			if !isZero(buf[:n]) {
				hs[b] = xxhash.Sum64(buf[:n])
			}
		}
	}
	return hs, nil
}

// diffBlocks compares the content of two images of the same size and
// returns the 64 KiB blocks that differ.
func diffBlocks(ctx context.Context, a, b disk.Image) (bitmap, error) {
	size := a.Size()
	out := newBitmap(size)
	ranges := map[int64]bool{}
	for _, img := range []disk.Image{a, b} {
		for e, err := range img.Extents(ctx, 0, size) {
			if err != nil {
				return nil, err
			}
			if e.Kind != disk.Data {
				continue
			}
			for blk := e.Off / cbtBlock; blk*cbtBlock < e.End(); blk++ {
				ranges[blk] = true
			}
		}
	}
	ba, bb := make([]byte, cbtBlock), make([]byte, cbtBlock)
	for blk := range ranges {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		off := blk * cbtBlock
		n := min(cbtBlock, size-off)
		if err := readFull(a, ba[:n], off); err != nil {
			return nil, err
		}
		if err := readFull(b, bb[:n], off); err != nil {
			return nil, err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			out.set(blk)
		}
	}
	return out, nil
}

// writeBitmapFile and readBitmapFile keep CBT bitmaps on disk.
func readBitmapFile(path string, size int64) (bitmap, error) {
	b := newBitmap(size)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read CBT bitmap %s: %w", path, err)
	}
	copy(b, data)
	return b, nil
}

// fracReporter adapts a fraction callback to a progress.Reporter.
type fracRep struct {
	total int64
	done  atomic.Int64
	f     func(float64)
}

func fracReporter(total int64, f func(float64)) *fracRep { return &fracRep{total: total, f: f} }

func (r *fracRep) SetTotal(n int64) {
	if n > 0 {
		r.total = n
	}
}

func (r *fracRep) Add(n int64) {
	if r == nil || r.f == nil || r.total <= 0 {
		return
	}
	r.f(float64(r.done.Add(n)) / float64(r.total))
}

func (r *fracRep) Phase(string) {}
