package qcow2

import (
	"context"
	"fmt"
	"runtime"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

const (
	// maxRefcount is the largest 16-bit refcount; a host cluster shared
	// by that many compressed clusters takes no more.
	maxRefcount = 0xffff
	// batchTarget is how many bytes of clusters go through the pipeline
	// as one piece of work, so that small clusters do not cost a
	// goroutine each.
	batchTarget = 256 << 10
)

// seqWriter is the compressed writer. It accepts ascending writes, gathers
// them into clusters, compresses clusters in parallel with disk.Ordered and
// packs the results into the file in order.
type seqWriter struct {
	b     *builder
	back  *cow
	enc   encoder
	ord   *disk.Ordered[[]*job]
	batch []*job    // jobs not yet handed to the pipeline
	bsize int64     // their bytes
	pool  sync.Pool // cluster-sized buffers
	ctx   context.Context
	stop  context.CancelFunc
	pos   int64 // writes must start at or after pos
	cur   *job  // the cluster being filled
	err   error
	state int

	// owned by the sink
	out        outBuf
	cpos, cend int64  // free space for compressed bytes: [cpos, cend)
	zeroBlob   []byte // a compressed zero cluster, for version 2 zeros over a backing file
}

// job is one cluster (or, for zeros, a run of clusters) on its way through
// the pipeline.
type job struct {
	c     int64 // virtual cluster
	nz    int64 // zero jobs: number of clusters from c
	data  []byte
	n     int64 // bytes of the cluster inside the disk
	spans []span
	// result
	kind int
	out  []byte
}

type span struct{ off, end int64 }

// Job results.
const (
	jobSkip       = iota // all zeros, nothing below: leave unallocated
	jobZero              // zero clusters
	jobRaw               // stored as is
	jobCompressed        // out holds the compressed bytes
)

func newSeqWriter(ctx context.Context, b *builder, back *cow, p params, workers int) (*seqWriter, error) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	w := &seqWriter{b: b, back: back}
	if p.zstd {
		e, err := newZstdEncoder(workers)
		if err != nil {
			return nil, fmt.Errorf("qcow2 %s: %w", b.name, err)
		}
		w.enc = e
	} else {
		w.enc = &deflateEncoder{}
	}
	w.out = outBuf{t: b.t, buf: make([]byte, 0, max(batchBytes, 2*b.cs))}
	w.ctx, w.stop = context.WithCancel(ctx)
	w.ord = disk.NewOrdered(w.ctx, workers, w.sink)
	return w, nil
}

func (w *seqWriter) buffer() []byte {
	if b, ok := w.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, w.b.cs)
}

func (w *seqWriter) release(b []byte) {
	if int64(cap(b)) == w.b.cs {
		b = b[:w.b.cs]
		w.pool.Put(&b)
	}
}

func (w *seqWriter) check(op string, off, n int64) error {
	if w.err != nil {
		return w.err
	}
	if w.state != stateOpen {
		return fmt.Errorf("qcow2 %s: %s after commit or close: %w", w.b.name, op, errs.ErrFailedPrecondition)
	}
	if off < 0 || n < 0 || off > w.b.size-n {
		return fmt.Errorf("qcow2 %s: %s of %d bytes at %d is outside the %d-byte disk: %w", w.b.name, op, n, off, w.b.size, errs.ErrInvalidArgument)
	}
	if off < w.pos {
		w.err = fmt.Errorf("qcow2 %s: compressed writer: %s at %d is behind position %d (writes must ascend): %w", w.b.name, op, off, w.pos, errs.ErrInvalidArgument)
		return w.err
	}
	return nil
}

func (w *seqWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := w.fill(p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fill copies p (nil for zeros) into clusters, handing each full cluster
// to the pipeline.
func (w *seqWriter) fill(p []byte, off, n int64) error {
	b := w.b
	end := off + n
	w.pos = end
	for off < end {
		c := off >> b.bits
		if w.cur != nil && w.cur.c != c {
			if err := w.flush(); err != nil {
				return err
			}
		}
		cstart := c << b.bits
		cend := min(cstart+b.cs, b.size)
		if w.cur == nil {
			if p == nil && off == cstart && end >= cend {
				// whole clusters of zeros
				k := (end - cstart) >> b.bits
				if end == b.size && end&(b.cs-1) != 0 {
					k++
				}
				if err := w.zeros(c, k); err != nil {
					return err
				}
				off = min(cstart+k<<b.bits, end)
				continue
			}
			data := w.buffer()
			clear(data)
			w.cur = &job{c: c, data: data, n: cend - cstart}
		}
		k := min(end, cend) - off
		if p != nil {
			copy(w.cur.data[off-cstart:], p[:k])
			p = p[k:]
		}
		w.cur.addSpan(off-cstart, off-cstart+k)
		off += k
		if off == cend {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (j *job) addSpan(s, e int64) {
	if k := len(j.spans); k > 0 && j.spans[k-1].end == s {
		j.spans[k-1].end = e
		return
	}
	j.spans = append(j.spans, span{s, e})
}

func (w *seqWriter) Zero(off, n int64) error {
	if err := w.check("zero", off, n); err != nil {
		return err
	}
	return w.fill(nil, off, n)
}

// zeros records k whole zero clusters from c.
func (w *seqWriter) zeros(c, k int64) error {
	if !w.back.has() {
		return nil // unallocated reads as zeros
	}
	return w.submit(&job{c: c, nz: k, kind: jobZero})
}

func (w *seqWriter) flush() error {
	j := w.cur
	w.cur = nil
	return w.submit(j)
}

// submit queues a job; full batches go to the pipeline.
func (w *seqWriter) submit(j *job) error {
	w.batch = append(w.batch, j)
	w.bsize += max(j.n, w.b.cs)
	if w.bsize >= batchTarget {
		return w.send()
	}
	return nil
}

// send hands the batch to the pipeline.
func (w *seqWriter) send() error {
	batch := w.batch
	w.batch, w.bsize = nil, 0
	if len(batch) == 0 {
		return w.err
	}
	err := w.ord.Submit(func(context.Context) ([]*job, error) {
		for _, j := range batch {
			if j.kind == jobZero {
				continue
			}
			if err := w.compress(j); err != nil {
				return nil, err
			}
		}
		return batch, nil
	})
	if err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// compress runs on a worker: it completes a partly written cluster from
// the backing file and compresses it.
func (w *seqWriter) compress(j *job) error {
	if w.back.has() && !(len(j.spans) == 1 && j.spans[0] == span{0, j.n}) {
		var at int64
		for _, s := range append(j.spans, span{j.n, j.n}) {
			if s.off > at {
				if err := w.back.read(j.data[at:s.off], j.c<<w.b.bits+at); err != nil {
					return err
				}
			}
			at = s.end
		}
	}
	if isZero(j.data) {
		switch {
		case !w.back.has():
			j.kind = jobSkip
			return nil
		case w.b.v3:
			j.kind = jobZero
			j.nz = 1
			return nil
		}
	}
	dst := w.buffer()
	j.out = w.enc.encode(dst, j.data)
	if j.out == nil {
		w.release(dst)
		j.kind = jobRaw
	} else {
		j.kind = jobCompressed
	}
	return nil
}

// sink runs on one goroutine, in cluster order: it places the results in
// the file and records their L2 entries.
func (w *seqWriter) sink(batch []*job) error {
	for _, j := range batch {
		if err := w.sinkOne(j); err != nil {
			return err
		}
	}
	return nil
}

func (w *seqWriter) sinkOne(j *job) error {
	defer func() {
		w.release(j.data)
		w.release(j.out)
	}()
	b := w.b
	switch j.kind {
	case jobZero:
		for c := j.c; c < j.c+j.nz; c++ {
			if b.v3 {
				b.setEntry(c, flagZero)
				continue
			}
			if w.zeroBlob == nil {
				w.zeroBlob = w.enc.encode(nil, make([]byte, b.cs))
			}
			if err := w.placeCompressed(c, w.zeroBlob); err != nil {
				return err
			}
		}
	case jobRaw:
		host := b.alloc()
		b.setEntry(j.c, uint64(host)|flagCopied)
		return w.out.put(host, j.data)
	case jobCompressed:
		return w.placeCompressed(j.c, j.out)
	}
	return nil
}

// placeCompressed packs compressed bytes after the previous ones. They may
// straddle host clusters; a cluster already shared by maxRefcount
// compressed clusters is skipped.
func (w *seqWriter) placeCompressed(c int64, data []byte) error {
	b := w.b
	s := int64(len(data))
	if w.cpos < w.cend && b.refs[w.cpos>>b.bits] >= maxRefcount {
		w.cpos = w.cend
	}
	if w.cpos+s > w.cend {
		if w.cend != b.next || w.cpos == w.cend {
			// the free space is not at the end of the file (or is
			// used up): start in a new cluster
			w.cpos, w.cend = b.next, b.next
		}
		for w.cend < w.cpos+s {
			b.next += b.cs
			b.refs = append(b.refs, 0)
			w.cend = b.next
		}
	}
	coff := w.cpos
	w.cpos += s
	x := compressedShift - (b.bits - 8)
	if coff >= 1<<x {
		return fmt.Errorf("qcow2 %s: compressed data at %#x beyond what a compressed cluster descriptor can address: %w", b.name, coff, errs.ErrInvalidArgument)
	}
	// qemu counts the sectors the descriptor spans
	nsec := (coff&511+s+511)/512 - 1
	last := (coff&^511 + (nsec+1)*512 - 1) >> b.bits
	for hc := coff >> b.bits; hc <= last; hc++ {
		b.refs[hc]++
	}
	b.setEntry(c, flagCompressed|uint64(nsec)<<x|uint64(coff))
	return w.out.put(coff, data)
}

func (w *seqWriter) Commit(ctx context.Context) error {
	if w.state != stateOpen {
		return fmt.Errorf("qcow2 %s: commit after commit or close: %w", w.b.name, errs.ErrFailedPrecondition)
	}
	w.state = stateCommitted
	if w.err == nil && w.cur != nil {
		w.flush()
	}
	if w.err == nil {
		w.send()
	}
	err := w.ord.Wait()
	w.stop()
	if w.err != nil {
		return w.err
	}
	if err != nil {
		return err
	}
	if err := w.out.flush(); err != nil {
		return fmt.Errorf("qcow2 %s: write compressed data: %w", w.b.name, err)
	}
	return w.b.commit(ctx)
}

func (w *seqWriter) Close() error {
	if w.state == stateClosed {
		return nil
	}
	if w.state == stateOpen {
		w.stop()
		w.ord.Wait()
	}
	w.state = stateClosed
	w.enc.close()
	w.b.tables = nil
	return nil
}

func (w *seqWriter) Size() int64      { return w.b.size }
func (w *seqWriter) Sequential() bool { return true }

// AllocationUnit is the cluster size (disk.Granular).
func (w *seqWriter) AllocationUnit() int64 { return w.b.cs }

// outBuf gathers the packed output into big writes. Output mostly grows
// at the end of the file (the frontier, hi); the buffer holds the window
// [off, off+len(buf)) that ends at the frontier, so bytes in it that nobody
// wrote are zeros, as they are in the file. Writes behind the window go
// straight to the file.
type outBuf struct {
	t interface {
		WriteAt([]byte, int64) (int, error)
	}
	off int64
	buf []byte
	hi  int64
}

func (o *outBuf) put(pos int64, p []byte) error {
	end := pos + int64(len(p))
	if len(o.buf) > 0 && pos >= o.off && end <= o.off+int64(cap(o.buf)) {
		s := pos - o.off
		if end > o.hi {
			old := int64(len(o.buf))
			o.buf = o.buf[:end-o.off]
			if s > old {
				clear(o.buf[old:s])
			}
			o.hi = end
		}
		copy(o.buf[s:], p)
		return nil
	}
	if len(o.buf) > 0 && (pos >= o.hi || end > o.off) {
		// beyond the window's room, or overlapping it: write it out
		if err := o.flush(); err != nil {
			return err
		}
	}
	if pos < o.hi || int64(len(p)) > int64(cap(o.buf)) {
		_, err := o.t.WriteAt(p, pos)
		o.hi = max(o.hi, end)
		return err
	}
	o.off = pos
	o.buf = append(o.buf[:0], p...)
	o.hi = end
	return nil
}

func (o *outBuf) flush() error {
	if len(o.buf) == 0 {
		return nil
	}
	_, err := o.t.WriteAt(o.buf, o.off)
	o.buf = o.buf[:0]
	return err
}
