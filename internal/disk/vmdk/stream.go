package vmdk

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamName names a stream in messages: it has no file name.
const streamName = "stream"

// streamReader reads a streamOptimized VMDK front to back: the header and
// descriptor, then markers. Grains are inflated in parallel, a few ahead
// of the caller; the source itself is only read from Next, on the
// caller's goroutine.
type streamReader struct {
	br       *bufio.Reader
	pos      int64 // bytes consumed
	h        header
	size     int64
	grain    int64
	vmware   bool // GD_AT_END: an end-of-stream marker must come
	desc     *descriptor
	depth    int
	sem      chan struct{}
	pending  []chan streamResult
	eof      bool
	readErr  error
	err      error // sticky error from Next
	prevEnd  int64
	last     *[]byte   // buffer of the run Next returned last
	bufPool  sync.Pool // inflated grains
	compPool sync.Pool // compressed grains
	zPool    sync.Pool
	wg       sync.WaitGroup
	closed   bool
}

type streamResult struct {
	off int64
	buf *[]byte
	n   int
	err error
}

var _ disk.Stream = (*streamReader)(nil)

func openStream(ctx context.Context, r io.Reader, opts *disk.OpenOptions) (disk.Stream, error) {
	s := &streamReader{br: bufio.NewReaderSize(r, 1<<20)}
	b := make([]byte, sectorSize)
	n, err := io.ReadFull(s.br, b)
	s.pos = int64(n)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("vmdk %s: read header: %w", streamName, err)
	}
	h, ok := parseHeader(b[:n])
	if !ok {
		switch {
		case n >= 4 && binary.LittleEndian.Uint32(b) == magicCOWD:
			return nil, fmt.Errorf("vmdk %s: vmfsSparse (COWD) extent: %w", streamName, errs.ErrUnimplemented)
		case n > 0 && looksLikeDescriptor(b[:n]):
			return nil, fmt.Errorf("vmdk %s: a descriptor file, whose extents are separate files, cannot be read as a stream: %w", streamName, errs.ErrUnimplemented)
		case n < sectorSize:
			return nil, fmt.Errorf("vmdk %s: stream ends at offset %d inside the header: %w", streamName, n, errs.ErrCorrupt)
		}
		return nil, fmt.Errorf("vmdk %s: no sparse extent magic: %w", streamName, errs.ErrCorrupt)
	}
	if err := h.validate(streamName); err != nil {
		return nil, err
	}
	if !h.compressed() || h.flags&flagMarkers == 0 {
		return nil, fmt.Errorf("vmdk %s: only streamOptimized disks (compressed grains with markers) can be read as a stream, open the file instead: %w", streamName, errs.ErrUnimplemented)
	}
	s.h, s.size, s.grain = h, int64(h.capacity)*sectorSize, int64(h.grainSize)*sectorSize
	s.vmware = h.gdOffset == gdAtEnd
	if h.descOffset != 0 && h.descSize != 0 && int64(h.descOffset)*sectorSize >= s.pos {
		if err := s.skip(int64(h.descOffset)*sectorSize - s.pos); err != nil {
			return nil, err
		}
		text := make([]byte, h.descSize*sectorSize)
		if err := s.read(text, "the descriptor"); err != nil {
			return nil, err
		}
		d, err := parseDescriptor(streamName, text)
		if err != nil {
			return nil, err
		}
		if d.parentCID != noParent {
			return nil, fmt.Errorf("vmdk %s: delta disk (parent %q) cannot be read as a stream: %w", streamName, d.parentHint, errs.ErrUnimplemented)
		}
		s.desc = d
	}
	if o := int64(h.overhead) * sectorSize; o > s.pos {
		if err := s.skip(o - s.pos); err != nil {
			return nil, err
		}
	} else if r := s.pos % sectorSize; r != 0 {
		if err := s.skip(sectorSize - r); err != nil {
			return nil, err
		}
	}
	workers := runtime.GOMAXPROCS(0)
	s.depth = 2 * workers
	s.sem = make(chan struct{}, workers)
	s.bufPool.New = func() any { b := make([]byte, s.grain); return &b }
	s.compPool.New = func() any { b := make([]byte, 2*s.grain+sectorSize); return &b }
	return s, nil
}

func (s *streamReader) read(p []byte, what string) error {
	n, err := io.ReadFull(s.br, p)
	s.pos += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("vmdk %s: stream ends at offset %d inside %s: %w", streamName, s.pos, what, errs.ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("vmdk %s: read at offset %d: %w", streamName, s.pos, err)
	}
	return nil
}

func (s *streamReader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, s.br, n)
	s.pos += m
	if err == io.EOF {
		return fmt.Errorf("vmdk %s: stream ends at offset %d: %w", streamName, s.pos, errs.ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("vmdk %s: read at offset %d: %w", streamName, s.pos, err)
	}
	return nil
}

func (s *streamReader) Size() int64 { return s.size }

// Next returns the next grain's bytes.
func (s *streamReader) Next(ctx context.Context) (int64, []byte, error) {
	if s.last != nil {
		s.bufPool.Put(s.last)
		s.last = nil
	}
	if s.err != nil {
		return 0, nil, s.err
	}
	for len(s.pending) < s.depth && !s.eof && s.readErr == nil {
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		if err := s.readMarker(); err != nil {
			s.readErr = err
		}
	}
	if len(s.pending) == 0 {
		if s.readErr != nil {
			s.err = s.readErr
			return 0, nil, s.err
		}
		return 0, nil, io.EOF
	}
	var r streamResult
	select {
	case r = <-s.pending[0]:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	s.pending = s.pending[1:]
	if r.err != nil {
		s.bufPool.Put(r.buf)
		s.err = r.err
		return 0, nil, s.err
	}
	s.last = r.buf
	return r.off, (*r.buf)[:r.n], nil
}

// readMarker reads one marker and what follows it: a grain is handed to
// an inflater, metadata is skipped, end-of-stream sets eof.
func (s *streamReader) readMarker() error {
	at := s.pos
	var sec [sectorSize]byte
	n, err := io.ReadFull(s.br, sec[:])
	s.pos += int64(n)
	switch {
	case err == io.EOF && !s.vmware:
		// qemu's layout has no end-of-stream marker.
		s.eof = true
		return nil
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return fmt.Errorf("vmdk %s: stream ends at offset %d without an end-of-stream marker (truncated?): %w", streamName, s.pos, errs.ErrCorrupt)
	case err != nil:
		return fmt.Errorf("vmdk %s: read at offset %d: %w", streamName, s.pos, err)
	}
	m := parseMarker(sec[:])
	if m.size == 0 {
		switch m.typ {
		case markerEOS:
			s.eof = true
			return nil
		case markerGT, markerGD, markerFooter:
			if m.val > maxTableBytes/sectorSize {
				return fmt.Errorf("vmdk %s: marker at offset %d claims %d sectors of metadata: %w", streamName, at, m.val, errs.ErrCorrupt)
			}
			return s.skip(int64(m.val) * sectorSize)
		}
		return fmt.Errorf("vmdk %s: unknown marker type %d at offset %d: %w", streamName, m.typ, at, errs.ErrCorrupt)
	}
	if int64(m.size) > 2*s.grain+sectorSize {
		return fmt.Errorf("vmdk %s: grain marker at offset %d claims %d compressed bytes: %w", streamName, at, m.size, errs.ErrCorrupt)
	}
	if m.val%s.h.grainSize != 0 || m.val >= s.h.capacity {
		return fmt.Errorf("vmdk %s: grain marker at offset %d: LBA %d is not a grain inside the %d-sector disk: %w", streamName, at, m.val, s.h.capacity, errs.ErrCorrupt)
	}
	off := int64(m.val) * sectorSize
	if off < s.prevEnd {
		if s.vmware {
			return fmt.Errorf("vmdk %s: grain at LBA %d (offset %d) comes after LBA %d: grains out of order: %w", streamName, m.val, at, s.prevEnd/sectorSize, errs.ErrCorrupt)
		}
		return fmt.Errorf("vmdk %s: grain at LBA %d (offset %d) comes after LBA %d: a stream in qemu's layout with grains out of order cannot be read front to back, open the file instead: %w", streamName, m.val, at, s.prevEnd/sectorSize, errs.ErrUnimplemented)
	}
	cb := s.compPool.Get().(*[]byte)
	comp := (*cb)[:m.size]
	k := copy(comp, sec[grainMarkerSize:])
	if k < len(comp) {
		if err := s.read(comp[k:], "a grain"); err != nil {
			s.compPool.Put(cb)
			return err
		}
		if r := s.pos % sectorSize; r != 0 {
			if err := s.skip(sectorSize - r); err != nil {
				s.compPool.Put(cb)
				return err
			}
		}
	}
	need := min(s.grain, s.size-off)
	s.prevEnd = off + need
	buf := s.bufPool.Get().(*[]byte)
	ch := make(chan streamResult, 1)
	s.pending = append(s.pending, ch)
	s.sem <- struct{}{}
	s.wg.Go(func() {
		defer func() { <-s.sem }()
		err := inflateInto(&s.zPool, comp, (*buf)[:need], s.grain)
		s.compPool.Put(cb)
		if err != nil {
			err = fmt.Errorf("vmdk %s: grain at offset %d: %w", streamName, at, err)
		}
		ch <- streamResult{off: off, buf: buf, n: int(need), err: err}
	})
	return nil
}

func (s *streamReader) Info() disk.Info {
	cid, pcid, ct := int64(0), int64(noParent), StreamOptimized
	if s.desc != nil {
		cid = int64(s.desc.cid)
		if s.desc.createType != "" {
			ct = s.desc.createType
		}
	}
	return disk.Info{
		Format:      "vmdk",
		VirtualSize: s.size,
		ClusterSize: s.grain,
		Specific: map[string]any{
			"create-type": ct,
			"cid":         cid,
			"parent-cid":  pcid,
			"extents": []map[string]any{{
				"format": "SPARSE", "virtual-size": s.size, "cluster-size": s.grain, "compressed": true,
			}},
		},
	}
}

// Close waits for the inflaters to finish. It does not touch the source.
func (s *streamReader) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	s.wg.Wait()
	s.pending = nil
	if s.err == nil {
		s.err = fmt.Errorf("vmdk %s: stream closed: %w", streamName, errs.ErrFailedPrecondition)
	}
	return nil
}
