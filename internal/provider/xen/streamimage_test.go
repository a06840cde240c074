package xen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
)

// runStream serves a pattern's data ranges as runs of at most chunk
// bytes, like an export does.
type runStream struct {
	pt    *synth.Pattern
	runs  []disk.Extent
	i     int
	buf   []byte
	fail  int // fail with Unavailable at this run (0: never)
	after func()
}

func newRunStream(pt *synth.Pattern, chunk int64) *runStream {
	var runs []disk.Extent
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); off += chunk {
			runs = append(runs, disk.Extent{Off: off, Len: min(chunk, e.End()-off), Kind: disk.Data})
		}
	}
	return &runStream{pt: pt, runs: runs}
}

func (s *runStream) Size() int64     { return s.pt.Size }
func (s *runStream) Info() disk.Info { return disk.Info{Format: "vhd", VirtualSize: s.pt.Size} }
func (s *runStream) Close() error    { return nil }
func (s *runStream) Next(ctx context.Context) (int64, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if s.i >= len(s.runs) {
		return 0, nil, io.EOF
	}
	if s.fail > 0 && s.i == s.fail {
		return 0, nil, fmt.Errorf("connection lost: %w", errs.ErrUnavailable)
	}
	r := s.runs[s.i]
	s.i++
	if int64(cap(s.buf)) < r.Len {
		s.buf = make([]byte, r.Len)
	}
	b := s.buf[:r.Len]
	s.pt.Fill(r.Off, b)
	return r.Off, b, nil
}

func testPattern() *synth.Pattern {
	return &synth.Pattern{Name: "img", Size: 23<<20 + 512, Seed: 7, Data: []disk.Extent{
		{Off: 0, Len: 3 << 20}, {Off: 5<<20 + 512, Len: 4096}, {Off: 9 << 20, Len: 7 << 20}, {Off: 23 << 20, Len: 512},
	}}
}

func newTestImage(pt *synth.Pattern, opens *atomic.Int32, fail int) *streamImage {
	return newStreamImage("test", pt.Size, func(ctx context.Context) (disk.Stream, error) {
		opens.Add(1)
		s := newRunStream(pt, 1<<20)
		s.fail = fail
		return s, nil
	})
}

func TestStreamImageSequential(t *testing.T) {
	pt := testPattern()
	var opens atomic.Int32
	im := newTestImage(pt, &opens, 0)
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	// Compare reads in parallel, ascending: the stream is read once.
	res, err := disk.Compare(t.Context(), im, synth.Image{P: pt}, &disk.CompareOptions{ChunkSize: 1 << 20, Workers: 4})
	if err != nil || !res.Identical {
		t.Fatalf("compare: %+v %v", res, err)
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("stream opened %d times", n)
	}
	// The extents are the stream's runs.
	var got []disk.Extent
	for e, err := range im.Extents(t.Context(), 0, im.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			got = append(got, e)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(dataExtents(pt)) {
		t.Errorf("extents %v, want %v", got, pt.Data)
	}
	// Convert (one extent walk, reads in parallel behind it).
	w := &memWriter{b: make([]byte, pt.Size)}
	im2 := newTestImage(pt, &opens, 0)
	opens.Store(0)
	if err := im2.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer im2.Close()
	if _, err := disk.Convert(t.Context(), w, im2, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.b, pt.Bytes()) {
		t.Error("converted content differs")
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("stream opened %d times for a conversion", n)
	}
}

func dataExtents(pt *synth.Pattern) []disk.Extent {
	out := make([]disk.Extent, len(pt.Data))
	for i, e := range pt.Data {
		out[i] = disk.Extent{Off: e.Off, Len: e.Len, Kind: disk.Data}
	}
	return out
}

type memWriter struct {
	mu sync.Mutex
	b  []byte
}

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return copy(w.b[off:], p), nil
}
func (w *memWriter) Zero(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.b[off : off+n])
	return nil
}
func (w *memWriter) Commit(context.Context) error { return nil }
func (w *memWriter) Close() error                 { return nil }
func (w *memWriter) Size() int64                  { return int64(len(w.b)) }
func (w *memWriter) Sequential() bool             { return false }

func TestStreamImageRandomAccess(t *testing.T) {
	pt := testPattern()
	want := pt.Bytes()
	var opens atomic.Int32
	im := newTestImage(pt, &opens, 0)
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		off := r.Int64N(pt.Size)
		n := r.Int64N(3<<20) + 1
		p := make([]byte, n)
		k, err := im.ReadAt(p, off)
		if off+n > pt.Size {
			if !errors.Is(err, io.EOF) || int64(k) != pt.Size-off {
				t.Fatalf("read %d at %d past the end: %d %v", n, off, k, err)
			}
		} else if err != nil || int64(k) != n {
			t.Fatalf("read %d: %d bytes at %d: %d %v", i, n, off, k, err)
		}
		if !bytes.Equal(p[:k], want[off:off+int64(k)]) {
			t.Fatalf("read %d: %d bytes at %d differ", i, n, off)
		}
	}
	t.Logf("200 random reads opened the stream %d times", opens.Load())
	if _, err := im.ReadAt(make([]byte, 1), pt.Size); !errors.Is(err, io.EOF) {
		t.Errorf("read at the end: %v", err)
	}
}

// TestStreamImageFixed: a fixed map (changed blocks) reads its data from
// the delta stream, and from the fallback where the delta has no run.
func TestStreamImageFixed(t *testing.T) {
	pt := testPattern()
	full := pt.Bytes()
	// The delta holds part of the changes; the map claims more.
	delta := &synth.Pattern{Name: "delta", Size: pt.Size, Seed: pt.Seed, Data: []disk.Extent{{Off: 1 << 20, Len: 1 << 20}}}
	fixed := []disk.Extent{{Off: 1 << 20, Len: 1 << 20, Kind: disk.Data}, {Off: 10 << 20, Len: 64 << 10, Kind: disk.Data}, {Off: 20 << 20, Len: 64 << 10, Kind: disk.Data}}
	var opens, fopens atomic.Int32
	im := newTestImage(delta, &opens, 0)
	im.fallback = newTestImage(pt, &fopens, 0)
	im.fixed = fixed
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	var got []disk.Extent
	for e, err := range im.Extents(t.Context(), 0, pt.Size) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			got = append(got, e)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(fixed) {
		t.Fatalf("extents %v", got)
	}
	for _, e := range fixed {
		p := make([]byte, e.Len)
		if _, err := im.ReadAt(p, e.Off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, full[e.Off:e.End()]) {
			t.Errorf("changed range %v reads wrong", e)
		}
	}
	// Outside the map: zeros (unchanged), whatever the disk holds.
	p := make([]byte, 4096)
	if _, err := im.ReadAt(p, 0); err != nil || !bytes.Equal(p, make([]byte, 4096)) {
		t.Errorf("unchanged range: %v", err)
	}
	if fopens.Load() != 1 {
		t.Errorf("fallback opened %d times", fopens.Load())
	}
}

func TestStreamImageErrors(t *testing.T) {
	pt := testPattern()
	var opens atomic.Int32
	im := newTestImage(pt, &opens, 5)
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 1<<20)
	if _, err := im.ReadAt(p, 12<<20); !errs.Is(err, errs.Unavailable) {
		t.Errorf("stream failure: %v", err)
	}
	for _, err := range im.Extents(t.Context(), 0, pt.Size) {
		if err != nil {
			if !errs.Is(err, errs.Unavailable) {
				t.Errorf("extents: %v", err)
			}
			break
		}
	}
	im.Close()
	if _, err := im.ReadAt(p, 0); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("read after close: %v", err)
	}
	// A cancelled start.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	blocked := newStreamImage("t", 1, func(ctx context.Context) (disk.Stream, error) { return nil, fmt.Errorf("open: %w", context.Canceled) })
	if err := blocked.start(ctx); !errs.Is(err, errs.Canceled) {
		t.Errorf("cancelled start: %v", err)
	}
	// An export of the wrong size.
	wrong := newStreamImage("t", pt.Size+512, func(ctx context.Context) (disk.Stream, error) { return newRunStream(pt, 1<<20), nil })
	if err := wrong.start(t.Context()); !errs.Is(err, errs.Corrupt) {
		t.Errorf("wrong size: %v", err)
	}
}

// mappedRunStream is a runStream that knows, when it opens, the 2 MiB
// blocks holding its runs (as a VHD stream does from its BAT).
type mappedRunStream struct{ *runStream }

func (s mappedRunStream) Allocated() []disk.Extent {
	const bs = 2 << 20
	var out []disk.Extent
	for _, e := range s.pt.Data {
		for b := e.Off / bs; b*bs < e.End(); b++ {
			off, end := b*bs, min((b+1)*bs, s.pt.Size)
			if n := len(out); n > 0 && out[n-1].End() >= off {
				out[n-1].Len = end - out[n-1].Off
				continue
			}
			out = append(out, disk.Extent{Off: off, Len: end - off, Kind: disk.Data})
		}
	}
	return out
}

// TestStreamImageMapped: with the allocation known up front, the extents
// need no read of the stream, the parts of allocated blocks the stream
// leaves out read as zeros, and parallel readers a little out of order
// read the stream once.
func TestStreamImageMapped(t *testing.T) {
	pt := testPattern()
	want := pt.Bytes()
	var opens atomic.Int32
	im := newStreamImage("mapped", pt.Size, func(ctx context.Context) (disk.Stream, error) {
		opens.Add(1)
		return mappedRunStream{newRunStream(pt, 1<<20)}, nil
	})
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	var got []disk.Extent
	for e, err := range im.Extents(t.Context(), 0, pt.Size) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			got = append(got, e)
		}
	}
	if im.pos != 0 || len(im.kept) != 0 {
		t.Fatalf("listing the extents read the stream to %d", im.pos)
	}
	wantExt := mappedRunStream{newRunStream(pt, 1<<20)}.Allocated()
	if !slices.Equal(got, wantExt) {
		t.Fatalf("extents %v, want the allocated blocks %v", got, wantExt)
	}
	// four readers over 512 KiB pieces of the allocated blocks, each
	// taking the next piece as it comes
	var pieces []int64
	for _, e := range got {
		for off := e.Off; off < e.End(); off += 512 << 10 {
			pieces = append(pieces, off)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			p := make([]byte, 512<<10)
			for {
				k := next.Add(1) - 1
				if k >= int64(len(pieces)) {
					return
				}
				off := pieces[k]
				n, err := im.ReadAt(p, off)
				if err != nil && !errors.Is(err, io.EOF) {
					errc <- err
					return
				}
				if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
					errc <- fmt.Errorf("%d bytes at %d differ", n, off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if n := opens.Load(); n > 2 {
		t.Errorf("the stream was opened %d times", n)
	}
}

// stallStream sends one run, then stalls (a network read that hangs) until
// its context ends; it records a Close that came while Next ran.
type stallStream struct {
	runStream
	stalled      chan struct{}
	inNext       atomic.Bool
	closedInNext atomic.Bool
	once         sync.Once
}

func (s *stallStream) Next(ctx context.Context) (int64, []byte, error) {
	s.inNext.Store(true)
	defer s.inNext.Store(false)
	if s.i == 0 {
		return s.runStream.Next(ctx)
	}
	s.once.Do(func() { close(s.stalled) })
	<-ctx.Done()
	return 0, nil, ctx.Err()
}

func (s *stallStream) Close() error {
	if s.inNext.Load() {
		s.closedInNext.Store(true)
	}
	return nil
}

// TestStreamImageCloseWhileReading: Close while a reader waits on the
// stream (read without the image's lock) ends that read and every reader
// waiting behind it, and closes the stream only after its read returned.
func TestStreamImageCloseWhileReading(t *testing.T) {
	pt := testPattern()
	st := &stallStream{runStream: *newRunStream(pt, 1<<20), stalled: make(chan struct{})}
	im := newStreamImage("stall", pt.Size, func(context.Context) (disk.Stream, error) { return st, nil })
	if err := im.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for i := range 4 {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			_, err := im.ReadAt(buf, int64(i+2)<<20) // beyond the first run: all need the stalled read
			errc <- err
		})
	}
	<-st.stalled
	im.Close()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err == nil {
			t.Error("a read of a closed image succeeded")
		}
	}
	if st.closedInNext.Load() {
		t.Error("the stream was closed while a read of it ran")
	}
}
