package vdi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
)

// memTarget is an in-memory disk.FileTarget.
type memTarget struct {
	mu   sync.Mutex
	name string
	b    []byte
}

func (m *memTarget) Write([]byte) (int, error) { return 0, errors.New("memTarget: use WriteAt") }
func (m *memTarget) Name() string              { return m.name }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memTarget) Truncate(n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n <= int64(len(m.b)) {
		m.b = m.b[:n]
	} else {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	return nil
}

// write is one write of a test image: len bytes of fill at off.
type write struct {
	off, len int64
	fill     byte
}

// makeImage writes a small image in memory with ferry's writer, blocks of bs
// bytes, the writes applied in order.
func makeImage(t testing.TB, size, bs int64, static bool, ws ...write) []byte {
	t.Helper()
	mt := &memTarget{name: "mem.vdi"}
	w, err := newWriter(mt, size, static, bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ws {
		if _, err := w.WriteAt(bytes.Repeat([]byte{x.fill}, int(x.len)), x.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	return mt.b
}

// expect returns the content makeImage's writes produce.
func expect(size int64, ws ...write) []byte {
	b := make([]byte, size)
	for _, x := range ws {
		copy(b[x.off:x.off+x.len], bytes.Repeat([]byte{x.fill}, int(x.len)))
	}
	return b
}

func openBytes(t testing.TB, name string, b []byte) (disk.Image, error) {
	t.Helper()
	return Format().Open(context.Background(), disk.BytesFile(name, b), &disk.OpenOptions{})
}

func mustOpenBytes(t testing.TB, b []byte) disk.Image {
	t.Helper()
	img, err := openBytes(t, "test.vdi", b)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func readAll(t testing.TB, img disk.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if n, err := img.ReadAt(b, 0); n != len(b) || (err != nil && err != io.EOF) {
		t.Fatalf("read all: %d, %v", n, err)
	}
	return b
}

func extents(t testing.TB, img disk.Image, off, n int64) []disk.Extent {
	t.Helper()
	var out []disk.Extent
	for e, err := range img.Extents(context.Background(), off, n) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}
