package vhd

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// touchChunk is the granularity at which the fixed writer remembers what
// it wrote, so that Zero on an unwritten range costs nothing.
const touchChunk = 1 << 20

// zeroChunk is the size of the zero buffer used to write gaps.
const zeroChunk = 1 << 20

// fixedWriter writes a fixed VHD: the data, then the footer. On a
// FileTarget it is random access and concurrent, and leaves unwritten
// ranges as holes; on a plain Target it is sequential and writes zeros
// for the gaps.
type fixedWriter struct {
	name   string
	t      disk.Target
	ft     disk.FileTarget // nil when streaming
	size   int64
	footer []byte

	touched []atomic.Uint64 // FileTarget: one bit per touchChunk written

	zeroOnce sync.Once
	zeros    []byte

	mu      sync.Mutex
	st      writeState
	next    int64 // stream: end of the last range given
	emitted int64 // stream: bytes written to t
	active  sync.WaitGroup
}

var _ disk.Writer = (*fixedWriter)(nil)

func newFixed(t disk.Target, name string, size int64) *fixedWriter {
	ft := newFooter(size, typeFixed, ^uint64(0))
	w := &fixedWriter{name: name, t: t, size: size, footer: ft.marshal()}
	if f, ok := t.(disk.FileTarget); ok {
		w.ft = f
		w.touched = make([]atomic.Uint64, (size/touchChunk+63)/64+1)
	}
	return w
}

func (w *fixedWriter) zeroBuf() []byte {
	w.zeroOnce.Do(func() { w.zeros = make([]byte, zeroChunk) })
	return w.zeros
}

func (w *fixedWriter) Size() int64      { return w.size }
func (w *fixedWriter) Sequential() bool { return w.ft == nil }

// enter checks that the writer accepts a call and registers it, so that
// Commit waits for the calls in flight.
func (w *fixedWriter) enter() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.st.usable(w.name); err != nil {
		return err
	}
	w.active.Add(1)
	return nil
}

func (w *fixedWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(w.name, off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	if w.ft == nil {
		return w.streamWrite(p, off)
	}
	if err := w.enter(); err != nil {
		return 0, err
	}
	defer w.active.Done()
	if len(p) == 0 {
		return 0, nil
	}
	for c := off / touchChunk; c <= (off+int64(len(p))-1)/touchChunk; c++ {
		w.touched[c/64].Or(1 << (c % 64))
	}
	n, err := w.ft.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("vhd %s: write at %d: %w", w.name, off, err)
	}
	return n, nil
}

func (w *fixedWriter) Zero(off, n int64) error {
	if err := checkRange(w.name, off, n, w.size); err != nil {
		return err
	}
	if w.ft == nil {
		_, err := w.streamAdvance(off, n, nil)
		return err
	}
	if err := w.enter(); err != nil {
		return err
	}
	defer w.active.Done()
	// Only chunks written before need zeros: the rest is still a hole.
	for cur, end := off, off+n; cur < end; {
		c := cur / touchChunk
		cend := min((c+1)*touchChunk, end)
		if w.touched[c/64].Load()&(1<<(c%64)) != 0 {
			if _, err := w.ft.WriteAt(w.zeroBuf()[:cend-cur], cur); err != nil {
				return fmt.Errorf("vhd %s: write zeros at %d: %w", w.name, cur, err)
			}
		}
		cur = cend
	}
	return nil
}

// streamWrite writes p at off on a plain Target: zeros fill the gap since
// the previous range.
func (w *fixedWriter) streamWrite(p []byte, off int64) (int, error) {
	return w.streamAdvance(off, int64(len(p)), p)
}

func (w *fixedWriter) streamAdvance(off, n int64, p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.st.usable(w.name); err != nil {
		return 0, err
	}
	if off < w.next {
		return 0, w.st.fail(fmt.Errorf("vhd %s: range at %d is behind the previous one ending at %d: a streamed fixed VHD is written in ascending order: %w", w.name, off, w.next, errs.ErrInvalidArgument))
	}
	w.next = off + n
	if p == nil {
		return 0, nil
	}
	if err := w.fillTo(off); err != nil {
		return 0, err
	}
	if _, err := w.t.Write(p); err != nil {
		return 0, w.st.fail(fmt.Errorf("vhd %s: write at %d: %w", w.name, off, err))
	}
	w.emitted = off + n
	return len(p), nil
}

// fillTo writes zeros on the stream up to off. Callers hold mu.
func (w *fixedWriter) fillTo(off int64) error {
	for w.emitted < off {
		m := min(off-w.emitted, zeroChunk)
		if _, err := w.t.Write(w.zeroBuf()[:m]); err != nil {
			return w.st.fail(fmt.Errorf("vhd %s: write zeros at %d: %w", w.name, w.emitted, err))
		}
		w.emitted += m
	}
	return nil
}

func (w *fixedWriter) Commit(ctx context.Context) error {
	w.mu.Lock()
	if err := w.st.usable(w.name); err != nil {
		w.mu.Unlock()
		return err
	}
	w.st.committed = true
	w.mu.Unlock()
	w.active.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.ft == nil {
		w.mu.Lock()
		defer w.mu.Unlock()
		if err := w.fillTo(w.size); err != nil {
			return err
		}
		if _, err := w.t.Write(w.footer); err != nil {
			return fmt.Errorf("vhd %s: write footer: %w", w.name, err)
		}
		return nil
	}
	if _, err := w.ft.WriteAt(w.footer, w.size); err != nil {
		return fmt.Errorf("vhd %s: write footer: %w", w.name, err)
	}
	if err := w.ft.Truncate(w.size + footerSize); err != nil {
		return fmt.Errorf("vhd %s: truncate: %w", w.name, err)
	}
	return nil
}

func (w *fixedWriter) Close() error {
	w.mu.Lock()
	w.st.closed = true
	w.mu.Unlock()
	return nil
}

var _ io.WriterAt = (*fixedWriter)(nil)
