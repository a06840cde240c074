package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// decoder inflates compressed clusters. It is safe for concurrent use.
type decoder interface {
	// decode fills dst (one cluster) from the compressed bytes src, which
	// may carry trailing bytes that belong to nothing.
	decode(dst, src []byte) error
	close()
}

func newDecoder(compression uint8, workers int) (decoder, error) {
	if compression == compressionZstd {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(workers), zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(false))
		if err != nil {
			return nil, err
		}
		return &zstdDecoder{d: d}, nil
	}
	return &deflateDecoder{}, nil
}

// deflateDecoder inflates raw deflate ("zlib" in qcow2 terms). The stream
// must produce the whole cluster; like qemu, it may stop before its end
// marker once the cluster is full.
type deflateDecoder struct {
	pool sync.Pool // *inflater
}

type inflater struct {
	br bytes.Reader
	r  io.ReadCloser
}

func (d *deflateDecoder) decode(dst, src []byte) error {
	in, _ := d.pool.Get().(*inflater)
	if in == nil {
		in = &inflater{}
		in.br.Reset(src)
		in.r = flate.NewReader(&in.br)
	} else {
		in.br.Reset(src)
		if err := in.r.(flate.Resetter).Reset(&in.br, nil); err != nil {
			return err
		}
	}
	_, err := io.ReadFull(in.r, dst)
	in.br.Reset(nil)
	d.pool.Put(in)
	if err != nil {
		return fmt.Errorf("inflate: %w", err)
	}
	return nil
}

func (d *deflateDecoder) close() {}

type zstdDecoder struct{ d *zstd.Decoder }

func (z *zstdDecoder) decode(dst, src []byte) error {
	n, err := zstdFrameLen(src)
	if err != nil {
		return err
	}
	out, err := z.d.DecodeAll(src[:n], dst[:0:len(dst)])
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	if len(out) != len(dst) {
		return fmt.Errorf("zstd: frame holds %d bytes, want %d", len(out), len(dst))
	}
	if &out[0] != &dst[0] {
		copy(dst, out)
	}
	return nil
}

func (z *zstdDecoder) close() { z.d.Close() }

var errFrame = errors.New("zstd: malformed frame")

// zstdFrameLen returns the length of the zstd frame at the start of b, so
// that the bytes after it (the next cluster's data, padding) are not taken
// for another frame.
func zstdFrameLen(b []byte) (int, error) {
	if len(b) < 5 || binary.LittleEndian.Uint32(b) != 0xfd2fb528 {
		return 0, errFrame
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, errFrame // reserved bit
	}
	single := fhd&0x20 != 0
	pos := 5
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary id
	switch fhd >> 6 {
	case 0:
		if single {
			pos++
		}
	case 1:
		pos += 2
	case 2:
		pos += 4
	case 3:
		pos += 8
	}
	for {
		if pos+3 > len(b) {
			return 0, errFrame
		}
		bh := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		size := int(bh >> 3)
		switch (bh >> 1) & 3 {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE
			pos++
		default:
			return 0, errFrame
		}
		if pos > len(b) {
			return 0, errFrame
		}
		if bh&1 != 0 {
			break
		}
	}
	if fhd&0x04 != 0 {
		pos += 4
	}
	if pos > len(b) {
		return 0, errFrame
	}
	return pos, nil
}

// encoder compresses clusters. It is safe for concurrent use.
type encoder interface {
	// encode compresses src into dst[:0] and returns the result, or nil
	// when the result would not be smaller than src.
	encode(dst, src []byte) []byte
	close()
}

// deflateEncoder writes raw deflate with a 4 KiB window (qemu inflates
// with windowBits -12), using klauspost's windowed encoder, which is its
// level-5 matcher bounded to the window.
type deflateEncoder struct {
	pool sync.Pool // *deflater
}

type deflater struct {
	w   *flate.Writer
	buf limitedBuffer
}

// limitedBuffer collects output and fails once it reaches its limit, so
// that an incompressible cluster stops costing memory early.
type limitedBuffer struct {
	b     []byte
	limit int
}

var errTooBig = errors.New("compressed cluster not smaller than the cluster")

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if len(l.b)+len(p) >= l.limit {
		return 0, errTooBig
	}
	l.b = append(l.b, p...)
	return len(p), nil
}

func (e *deflateEncoder) encode(dst, src []byte) []byte {
	d, _ := e.pool.Get().(*deflater)
	if d == nil {
		d = &deflater{}
		w, err := flate.NewWriterWindow(&d.buf, 4096)
		if err != nil {
			return nil // cannot happen for a 4 KiB window; store the cluster as is
		}
		d.w = w
	} else {
		d.w.Reset(&d.buf)
	}
	d.buf.b, d.buf.limit = dst[:0], len(src)
	_, err := d.w.Write(src)
	if err == nil {
		err = d.w.Close()
	}
	out := d.buf.b
	d.buf.b = nil
	e.pool.Put(d)
	if err != nil || len(out) >= len(src) {
		return nil
	}
	return out
}

func (e *deflateEncoder) close() {}

type zstdEncoder struct{ e *zstd.Encoder }

func newZstdEncoder(workers int) (*zstdEncoder, error) {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(workers), zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	return &zstdEncoder{e: e}, nil
}

func (z *zstdEncoder) encode(dst, src []byte) []byte {
	out := z.e.EncodeAll(src, dst[:0])
	if len(out) >= len(src) {
		return nil
	}
	return out
}

func (z *zstdEncoder) close() { z.e.Close() }
