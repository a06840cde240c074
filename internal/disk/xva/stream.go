package xva

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamReader reads an XVA front to back.
type streamReader struct {
	tr    *tar.Reader
	done  func()
	m     *manifest
	rules chunkRules
	next  int         // next VDI of m.vdis
	cur   *diskStream // the disk last handed out
	buf   []byte      // chunk buffer, reused
	err   error       // sticky
}

var _ archive.StreamReader = (*streamReader)(nil)

func openStream(ctx context.Context, r io.Reader, _ *archive.OpenOptions) (archive.StreamReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	c := sniff(magic)
	dr, done, err := decompressor(br, c)
	if err != nil {
		return nil, fmt.Errorf("xva stream: %s header: %v: %w", c, err, errs.ErrCorrupt)
	}
	s := &streamReader{tr: tar.NewReader(dr), done: done, rules: chunkRules{firstLen: -1}}
	hdr, err := s.tr.Next()
	if err != nil {
		done()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("xva stream: empty archive, no ova.xml: %w", errs.ErrCorrupt)
		}
		return nil, fmt.Errorf("xva stream: not a tar archive (compression: %s): %v: %w", c, err, errs.ErrCorrupt)
	}
	if s.m, err = readManifest(hdr, s.tr, 0, -1); err != nil {
		done()
		return nil, fmt.Errorf("xva stream: %w", err)
	}
	return s, nil
}

func (s *streamReader) VM() core.VMSpec {
	vm := s.m.vm
	vm.Disks = append([]core.DiskSpec(nil), vm.Disks...)
	vm.NICs = append([]core.NICSpec(nil), vm.NICs...)
	return vm
}

func (s *streamReader) Close() error {
	if s.done != nil {
		s.done()
		s.done = nil
	}
	if s.err == nil {
		s.err = fmt.Errorf("xva stream: closed: %w", errs.ErrFailedPrecondition)
	}
	return nil
}

// NextDisk finishes the previous disk (reading and checking what the caller
// left of it), passes over VDIs that are not disks of the VM (checking them
// too), and returns the next disk.
func (s *streamReader) NextDisk(ctx context.Context) (int, disk.Stream, error) {
	if s.err != nil {
		return 0, nil, s.err
	}
	if s.cur != nil {
		if err := s.cur.drain(ctx); err != nil {
			return 0, nil, err
		}
		s.cur = nil
	}
	for s.next < len(s.m.vdis) {
		v := s.m.vdis[s.next]
		s.next++
		d := &diskStream{s: s, cur: newCursor(v)}
		if v.disk < 0 {
			if err := d.drain(ctx); err != nil {
				return 0, nil, err
			}
			continue
		}
		s.cur = d
		return v.disk, d, nil
	}
	return 0, nil, io.EOF
}

func (s *streamReader) fail(err error) error {
	if s.err == nil {
		s.err = err
	}
	return s.err
}

// diskStream is one VDI's chunks, read in order.
type diskStream struct {
	s      *streamReader
	cur    *cursor
	closed bool
}

var _ disk.Stream = (*diskStream)(nil)

func (d *diskStream) Size() int64 { return d.cur.v.size }

func (d *diskStream) Info() disk.Info {
	return disk.Info{
		Format:      "xva",
		VirtualSize: d.cur.v.size,
		ClusterSize: chunkSize,
		Specific:    map[string]any{"member": d.cur.v.ref, "name": d.cur.v.name},
	}
}

// Close abandons the rest of the disk; the next NextDisk reads past it.
func (d *diskStream) Close() error {
	d.closed = true
	return nil
}

func (d *diskStream) drain(ctx context.Context) error {
	for {
		_, _, err := d.next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Next returns the next present chunk. The chunk is read whole and checked
// against the checksum member that follows it before it is returned, so no
// byte is handed on unverified.
func (d *diskStream) Next(ctx context.Context) (int64, []byte, error) {
	if d.closed {
		return 0, nil, fmt.Errorf("xva stream: %s: stream closed: %w", d.cur.v.label(), errs.ErrFailedPrecondition)
	}
	if d.s.cur != d {
		return 0, nil, fmt.Errorf("xva stream: %s: NextDisk moved past this disk: %w", d.cur.v.label(), errs.ErrFailedPrecondition)
	}
	return d.next(ctx)
}

func (d *diskStream) next(ctx context.Context) (int64, []byte, error) {
	s := d.s
	if s.err != nil {
		return 0, nil, s.err
	}
	v, cur := d.cur.v, d.cur
	for {
		if cur.done() {
			return 0, nil, io.EOF
		}
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		hdr, err := nextMember(s.tr, v, cur)
		if err != nil {
			return 0, nil, s.fail(fmt.Errorf("xva stream: %w", err))
		}
		num, off, err := s.rules.place(cur, hdr.Name, hdr.Size)
		if err != nil {
			return 0, nil, s.fail(fmt.Errorf("xva stream: %w", err))
		}
		if cap(s.buf) < int(hdr.Size) {
			s.buf = make([]byte, max(hdr.Size, chunkSize))
		}
		data := s.buf[:hdr.Size]
		if _, err := io.ReadFull(s.tr, data); err != nil {
			return 0, nil, s.fail(fmt.Errorf("xva stream: %w", truncErr(v, num, off, hdr.Name, err)))
		}
		sum, err := readSum(s.tr, v, hdr.Name, num, off+hdr.Size)
		if err != nil {
			return 0, nil, s.fail(fmt.Errorf("xva stream: %w", err))
		}
		if ok, got := sum.check(data); !ok {
			return 0, nil, s.fail(fmt.Errorf("xva stream: %w", sumError(v, num, &sum, got)))
		}
		if len(data) == 0 {
			continue // keep-alive
		}
		return off, data, nil
	}
}
