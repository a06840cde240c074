package xen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamImage presents a disk that xapi can only send front to back
// (GET /export_raw_vdi) as a random-access disk.Image.
//
// The stream is read forward as reads and extent queries need it. Runs
// read ahead of the reader (an Extents query runs ahead of the reads it
// plans) are kept in memory until read, up to maxRetained bytes; a read
// behind what is kept opens the stream again and skips forward to it, so
// any access order works and the usual one (ascending, as Convert and
// Compare read) transfers the disk once. Which ranges hold data is
// learnt from the stream itself (the runs of a VHD export are its
// allocated blocks, or, with a base, its changed blocks), or given up front
// (fixed: a changed-block-tracking map); in that case ranges the map calls
// data but the primary stream leaves out are read from the fallback
// stream (the whole disk), never assumed to be zeros.
type streamImage struct {
	name     string
	size     int64
	open     func(ctx context.Context) (disk.Stream, error)
	fallback *streamImage // nil, or the whole disk, for fixed maps
	fixed    []disk.Extent
	info     disk.Info

	ctx    context.Context // the image's own: cancelled by Close
	cancel context.CancelFunc

	mu sync.Mutex
	// reading is set while one goroutine reads the stream (or opens it
	// again) without holding mu; others that need the stream wait on
	// moved, others whose data is kept copy it meanwhile.
	reading  bool
	moved    *sync.Cond // broadcast when reading clears
	s        disk.Stream
	pos      int64         // how far the current stream has been read
	known    int64         // how far the stream's runs are known (max pos over every opening)
	seen     []disk.Extent // the stream's runs below known, merged
	kept     []keptRun     // runs read but not yet consumed, ascending
	keptSize int64
	// coarse: seen came from the stream's allocation map when it opened
	// (a VHD's BAT), a superset of its runs; a range it covers that the
	// stream leaves out reads as zeros.
	coarse bool
	// sent lists (merged) the runs the stream holds below sentUpTo, how
	// far it has been read (coarse only): below it, what sent leaves out
	// reads as zeros.
	sent     []disk.Extent
	sentUpTo int64
	opens    int
	closed   bool
}

type keptRun struct {
	off  int64
	data []byte
	used int64 // bytes consumed by reads
}

func (r *keptRun) end() int64 { return r.off + int64(len(r.data)) }

// maxRetained bounds the memory holding runs read ahead.
const maxRetained = 256 << 20

// lagSlack is how far behind the read that moves the stream runs are kept
// when the stream is read again.
const lagSlack = 16 << 20

func newStreamImage(name string, size int64, open func(context.Context) (disk.Stream, error)) *streamImage {
	ctx, cancel := context.WithCancel(context.Background())
	im := &streamImage{name: name, size: size, open: open, ctx: ctx, cancel: cancel,
		info: disk.Info{Filename: name, Format: "raw", VirtualSize: size}}
	im.moved = sync.NewCond(&im.mu)
	return im
}

// waitReaderLocked waits until no goroutine reads the stream, and reports
// whether it had to: if so, the state the caller looked at may have
// moved on, and it should look again.
func (im *streamImage) waitReaderLocked() bool {
	if !im.reading {
		return false
	}
	for im.reading {
		im.moved.Wait()
	}
	return true
}

// start opens the stream for the first time, on ctx (so that a caller's
// cancellation stops the opening), and keeps it for later reads.
func (im *streamImage) start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	stop := context.AfterFunc(ctx, im.cancel)
	defer stop()
	if err := im.reopenLocked(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if a, ok := im.s.(interface{ Allocated() []disk.Extent }); ok && im.fixed == nil && im.known == 0 {
		// The extents are known without reading the data: readers need
		// not wait for (or keep) the whole stream to plan.
		im.seen, im.known, im.coarse = a.Allocated(), im.size, true
	}
	if si := im.s.Info(); si.Format != "" {
		if im.info.Specific == nil {
			im.info.Specific = map[string]any{}
		}
		im.info.Specific["transport"] = si.Format
	}
	return nil
}

func (im *streamImage) reopenLocked() error {
	im.waitReaderLocked()
	if im.closed {
		return fmt.Errorf("%s: image is closed: %w", im.name, errs.ErrFailedPrecondition)
	}
	if im.s != nil {
		im.s.Close()
		im.s = nil
	}
	s, err := im.open(im.ctx)
	if err != nil {
		return err
	}
	if s.Size() != im.size {
		s.Close()
		return fmt.Errorf("%s: the export is %d bytes, the disk %d: %w", im.name, s.Size(), im.size, errs.ErrCorrupt)
	}
	im.s, im.pos = s, 0
	im.opens++
	return nil
}

// step reads the next run of the stream. A run read for the first time
// is kept (until read, or the memory budget runs out); a run read again
// (after a reopen) is kept only from keepFrom on, the range asked for.
// The stream is read without holding mu (it is released and taken again);
// if another goroutine is reading it, step waits for that read instead
// and returns nil: callers loop until the stream has moved far enough.
func (im *streamImage) stepLocked(keepFrom int64) error {
	if im.waitReaderLocked() {
		return nil
	}
	if im.s == nil || im.pos >= im.size {
		if im.known >= im.size {
			return io.EOF
		}
		if err := im.reopenLocked(); err != nil {
			return err
		}
	}
	// Read the next run with mu released: only this goroutine touches
	// the stream until reading clears. The run is copied (if it may be
	// kept) before the stream's buffer is reused by the next read.
	s, known, keepAbove := im.s, im.known, keepFrom-lagSlack
	im.reading = true
	im.mu.Unlock()
	off, p, err := s.Next(im.ctx)
	var data []byte
	if err == nil && len(p) > 0 && (off+int64(len(p)) > known || off+int64(len(p)) > keepAbove) {
		data = slices.Clone(p)
	}
	im.mu.Lock()
	im.reading = false
	im.moved.Broadcast()
	if im.closed {
		return fmt.Errorf("%s: image is closed: %w", im.name, errs.ErrFailedPrecondition)
	}
	if errors.Is(err, io.EOF) {
		im.pos = im.size
		im.known = im.size
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", im.name, err)
	}
	end := off + int64(len(p))
	if off < im.pos || end > im.size {
		return fmt.Errorf("%s: run [%d, %d) out of order: %w", im.name, off, end, errs.ErrCorrupt)
	}
	if end > im.known {
		// A run read for the first time is kept whatever asked for it:
		// readers behind the one that moved the stream still need it.
		keepFrom = min(keepFrom, off)
		s := max(off, im.known)
		if n := len(im.seen); n > 0 && im.seen[n-1].End() == s {
			im.seen[n-1].Len += end - s
		} else if end > s {
			im.seen = append(im.seen, disk.Extent{Off: s, Len: end - s, Kind: disk.Data})
		}
		im.known = end
	}
	im.pos = end
	if im.coarse && end > im.sentUpTo {
		s := max(off, im.sentUpTo)
		if n := len(im.sent); n > 0 && im.sent[n-1].End() == s {
			im.sent[n-1].Len += end - s
		} else if end > s {
			im.sent = append(im.sent, disk.Extent{Off: s, Len: end - s, Kind: disk.Data})
		}
		im.sentUpTo = end
	}
	// Readers running a little out of order (parallel workers) still
	// want runs just behind the one that moved the stream: keep those.
	keepFrom -= lagSlack
	if end > keepFrom && len(p) > 0 && !im.isKeptLocked(off, end) {
		// Make room first: the run read now is the one a reader is
		// waiting for, never dropped before it is read.
		im.trimLocked()
		s := max(off, keepFrom)
		kr := keptRun{off: s, data: data[s-off:]}
		i, _ := slices.BinarySearchFunc(im.kept, s, func(r keptRun, o int64) int { return cmpInt(r.off, o) })
		im.kept = slices.Insert(im.kept, i, kr)
		im.keptSize += end - s
	}
	return nil
}

func (im *streamImage) isKeptLocked(off, end int64) bool {
	for i := range im.kept {
		if im.kept[i].off <= off && im.kept[i].end() >= end {
			return true
		}
	}
	return false
}

// trimLocked drops consumed runs, and the lowest runs when over budget.
func (im *streamImage) trimLocked() {
	im.kept = slices.DeleteFunc(im.kept, func(r keptRun) bool {
		if r.used >= int64(len(r.data)) {
			im.keptSize -= int64(len(r.data))
			return true
		}
		return false
	})
	// Over budget, drop the runs furthest ahead: readers go up the disk,
	// so the lowest runs are the next ones asked for, and dropping them
	// would make every read open the stream again.
	for im.keptSize > maxRetained && len(im.kept) > 1 {
		last := len(im.kept) - 1
		im.keptSize -= int64(len(im.kept[last].data))
		im.kept = im.kept[:last]
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// advanceLocked reads until the stream's runs are known up to off (or the
// end), keeping runs from keepFrom on.
func (im *streamImage) advanceLocked(off, keepFrom int64) error {
	for im.known < min(off, im.size) {
		if err := im.stepLocked(keepFrom); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
	return nil
}

// inRun reports whether off is inside one of the stream's runs, and where
// that run (or the gap) ends. off must be below known.
func (im *streamImage) inRunLocked(off int64) (bool, int64) {
	return lookup(im.seen, off, im.known)
}

// unsentLocked reports whether off lies where the stream, read past it,
// sent no data (coarse only), and where that gap ends.
func (im *streamImage) unsentLocked(off int64) (int64, bool) {
	if !im.coarse || off >= im.sentUpTo {
		return 0, false
	}
	in, until := lookup(im.sent, off, im.sentUpTo)
	return until, !in
}

// lookup reports whether off is inside one of the ascending, disjoint
// extents of list, and where that extent, or the gap before the next one
// (or limit), ends.
func lookup(list []disk.Extent, off, limit int64) (bool, int64) {
	i, found := slices.BinarySearchFunc(list, off, func(e disk.Extent, o int64) int {
		switch {
		case e.End() <= o:
			return -1
		case e.Off > o:
			return 1
		}
		return 0
	})
	if found {
		return true, list[i].End()
	}
	if i < len(list) {
		return false, list[i].Off
	}
	return false, limit
}

// keptAt returns the kept run holding off, if any.
func (im *streamImage) keptAtLocked(off int64) *keptRun {
	i, _ := slices.BinarySearchFunc(im.kept, off, func(r keptRun, o int64) int {
		if r.end() <= o {
			return -1
		}
		return 1
	})
	for ; i < len(im.kept) && im.kept[i].off <= off; i++ {
		if im.kept[i].end() > off {
			return &im.kept[i]
		}
	}
	return nil
}

// readRunLocked copies the stream's data at [off, off+len(p)), which its
// runs cover, into p, reading on, or reading the stream again from the
// start, as needed.
func (im *streamImage) readRunLocked(p []byte, off int64) error {
	end := off + int64(len(p))
	pos := off
	reopened := 0
	for pos < end {
		if r := im.keptAtLocked(pos); r != nil {
			// Copy with mu released: a kept run's data never changes,
			// and stays valid after the run is dropped.
			n := min(r.end(), end) - pos
			src := r.data[pos-r.off : pos-r.off+n]
			r.used += n
			im.mu.Unlock()
			copy(p[pos-off:pos-off+n], src)
			im.mu.Lock()
			pos += n
			continue
		}
		if next, ok := im.unsentLocked(pos); ok {
			// A part of an allocated block the stream holds no data for.
			next = min(next, end)
			clear(p[pos-off : next-off])
			pos = next
			continue
		}
		if im.waitReaderLocked() {
			continue // the stream moved: look at the kept runs again
		}
		if im.s == nil || im.pos > pos {
			// Behind the stream (or it ended): read it again.
			if reopened == 2 {
				return fmt.Errorf("%s: data at %d did not come back when the export was read again: %w", im.name, pos, errs.ErrCorrupt)
			}
			reopened++
			if err := im.reopenLocked(); err != nil {
				return err
			}
		}
		for im.pos <= pos {
			if err := im.stepLocked(pos); err != nil {
				if errors.Is(err, io.EOF) && im.coarse {
					// The end: the stream holds nothing more.
					im.sentUpTo = im.size
					break
				}
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("%s: the export ended before the data at %d: %w", im.name, pos, errs.ErrCorrupt)
				}
				return err
			}
		}
		if _, ok := im.unsentLocked(pos); ok {
			continue // zeros: the loop's next turn fills them
		}
		if im.keptAtLocked(pos) == nil {
			// The stream passed pos without data there.
			if reopened == 2 {
				return fmt.Errorf("%s: the export has no data at %d where it had before: %w", im.name, pos, errs.ErrCorrupt)
			}
			im.pos = im.size + 1 // force a reopen
		}
	}
	im.trimLocked()
	return nil
}

// ReadAt reads the disk: ranges the extents call data from the stream (or
// the fallback), the rest as zeros.
func (im *streamImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d: %w", im.name, off, errs.ErrInvalidArgument)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > im.size-off {
		want = int(im.size - off)
	}
	if err := im.readAt(p[:want], off); err != nil {
		return 0, err
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

func (im *streamImage) readAt(p []byte, off int64) error {
	if im.fixed != nil {
		// The map says which ranges changed; zeros elsewhere.
		pos := off
		end := off + int64(len(p))
		for _, e := range im.fixed {
			if e.End() <= pos || e.Kind != disk.Data {
				continue
			}
			if e.Off >= end {
				break
			}
			clear(p[pos-off : max(e.Off, pos)-off])
			s, t := max(e.Off, pos), min(e.End(), end)
			if err := im.readStreamed(p[s-off:t-off], s); err != nil {
				return err
			}
			pos = t
		}
		clear(p[pos-off:])
		return nil
	}
	return im.readStreamed(p, off)
}

// readStreamed reads [off, off+len(p)) from the stream: its runs, and for
// its gaps zeros, or the fallback's data when the map is fixed.
func (im *streamImage) readStreamed(p []byte, off int64) error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return fmt.Errorf("%s: image is closed: %w", im.name, errs.ErrFailedPrecondition)
	}
	end := off + int64(len(p))
	pos := off
	for pos < end {
		if err := im.advanceLocked(pos+1, pos); err != nil {
			return err
		}
		in, until := im.inRunLocked(pos)
		if pos >= im.known {
			in, until = false, im.size
		}
		until = min(until, end)
		q := p[pos-off : until-off]
		switch {
		case in:
			if err := im.readRunLocked(q, pos); err != nil {
				return err
			}
		case im.fallback != nil:
			im.mu.Unlock()
			err := im.fallback.readStreamed(q, pos)
			im.mu.Lock()
			if err != nil {
				return err
			}
		default:
			clear(q)
		}
		pos = until
	}
	return nil
}

func (im *streamImage) Size() int64     { return im.size }
func (im *streamImage) Info() disk.Info { return im.info }

// Extents reports the fixed map, or the stream's runs as Data and its gaps
// as Unallocated, reading the stream only as far as the caller iterates.
func (im *streamImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, im.size)
		if off >= end {
			return
		}
		if im.fixed != nil {
			for e := range extentsOf(im.fixed, off, end) {
				if !yield(e, nil) {
					return
				}
			}
			return
		}
		pos := off
		for pos < end {
			if err := ctx.Err(); err != nil {
				yield(disk.Extent{}, err)
				return
			}
			im.mu.Lock()
			if im.closed {
				im.mu.Unlock()
				yield(disk.Extent{}, fmt.Errorf("%s: image is closed: %w", im.name, errs.ErrFailedPrecondition))
				return
			}
			err := im.advanceLocked(pos+1, pos)
			var out []disk.Extent
			if err == nil {
				lim := min(end, im.known)
				for e := range extentsOf(im.seen, pos, lim) {
					out = append(out, e)
				}
				if lim == pos { // cannot happen: advance reached pos+1
					lim = end
					out = append(out, disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated})
				}
				pos = lim
			}
			im.mu.Unlock()
			if err != nil {
				yield(disk.Extent{}, err)
				return
			}
			for _, e := range out {
				if !yield(e, nil) {
					return
				}
			}
		}
	}
}

// extentsOf yields [off, end) as the Data extents of list say, gaps
// Unallocated.
func extentsOf(list []disk.Extent, off, end int64) iter.Seq[disk.Extent] {
	return func(yield func(disk.Extent) bool) {
		pos := off
		i, _ := slices.BinarySearchFunc(list, off, func(e disk.Extent, o int64) int {
			if e.End() <= o {
				return -1
			}
			return 1
		})
		for ; i < len(list) && pos < end; i++ {
			e := list[i]
			if e.Off >= end {
				break
			}
			if e.Off > pos {
				if !yield(disk.Extent{Off: pos, Len: e.Off - pos, Kind: disk.Unallocated}) {
					return
				}
				pos = e.Off
			}
			t := min(e.End(), end)
			if t > pos {
				if !yield(disk.Extent{Off: pos, Len: t - pos, Kind: e.Kind}) {
					return
				}
				pos = t
			}
		}
		if pos < end {
			yield(disk.Extent{Off: pos, Len: end - pos, Kind: disk.Unallocated})
		}
	}
}

// Close releases the stream (and the fallback's).
func (im *streamImage) Close() error {
	im.mu.Lock()
	if im.closed {
		im.mu.Unlock()
		return nil
	}
	im.closed = true
	im.mu.Unlock()
	// A goroutine reading the stream (without mu) returns once the
	// image's context is cancelled; the stream is closed after it, never
	// under it.
	im.cancel()
	im.mu.Lock()
	im.waitReaderLocked()
	s := im.s
	im.s, im.kept, im.seen = nil, nil, nil
	im.mu.Unlock()
	if s != nil {
		s.Close()
	}
	if im.fallback != nil {
		im.fallback.Close()
	}
	return nil
}

var _ disk.Image = (*streamImage)(nil)
