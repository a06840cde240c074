package disktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
)

// WritePattern writes pt's data ranges into w: in ascending order for a
// sequential writer, otherwise shuffled and from several goroutines, in
// pieces of up to 1 MiB cut at odd places.
func WritePattern(ctx context.Context, w disk.Writer, pt *Pattern) error {
	var pieces []disk.Extent
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); {
			n := min(MiB-int64(len(pieces)%7)*512, e.End()-off)
			pieces = append(pieces, disk.Extent{Off: off, Len: n})
			off += n
		}
	}
	write := func(e disk.Extent) error {
		b := make([]byte, e.Len)
		pt.Fill(e.Off, b)
		n, err := w.WriteAt(b, e.Off)
		if err == nil && n != len(b) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("write %d bytes at %d: %w", e.Len, e.Off, err)
		}
		return nil
	}
	if w.Sequential() {
		for _, e := range pieces {
			if err := write(e); err != nil {
				return err
			}
		}
		return nil
	}
	r := rand.New(rand.NewPCG(pt.Seed, 1))
	r.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
	ch := make(chan disk.Extent)
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for e := range ch {
				if err := write(e); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	go func() {
		defer close(ch)
		for _, e := range pieces {
			select {
			case ch <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	return <-errc
}

// VerifyImage checks that img reads exactly as pt, that its extents cover
// the disk in order and contain every non-zero byte in Data extents, and
// that reads past the end return io.EOF.
func VerifyImage(t testing.TB, img disk.Image, pt *Pattern) {
	t.Helper()
	ctx := context.Background()
	if img.Size() != pt.Size {
		t.Fatalf("%s: size %d, want %d", pt.Name, img.Size(), pt.Size)
	}
	var next int64
	var dataRanges []disk.Extent
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil {
			t.Fatalf("%s: extents: %v", pt.Name, err)
		}
		if e.Off != next || e.Len <= 0 {
			t.Fatalf("%s: extent %+v does not follow %d", pt.Name, e, next)
		}
		next = e.End()
		if e.Kind == disk.Data {
			dataRanges = append(dataRanges, e)
		}
	}
	if next != img.Size() {
		t.Fatalf("%s: extents end at %d, size %d", pt.Name, next, img.Size())
	}
	// Every non-zero sector of the pattern must be inside Data extents.
	// Sectors are taken at absolute 512-byte boundaries, so a format that
	// allocates whole grains or clusters is judged by what it must hold.
	for _, e := range pt.Data {
		start := e.Off / 512 * 512
		for off := start; off < e.End(); off += 512 {
			n := min(512, pt.Size-off)
			b := make([]byte, n)
			pt.Fill(off, b)
			if isZero(b) {
				continue
			}
			if !covered(dataRanges, off, n) {
				t.Fatalf("%s: non-zero bytes at %d not inside a data extent", pt.Name, off)
			}
		}
	}
	// Content, in chunks, from several goroutines at once; skip long zero
	// stretches the image reports as zero to keep big sparse cases fast,
	// but always read them near the data.
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	chunks := readPlan(pt, dataRanges)
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(chunks); i += 4 {
				c := chunks[i]
				got := make([]byte, c.Len)
				n, err := img.ReadAt(got, c.Off)
				if err != nil && !(errors.Is(err, io.EOF) && c.End() == pt.Size) {
					select {
					case errc <- fmt.Errorf("read %d at %d: %w", c.Len, c.Off, err):
					default:
					}
					return
				}
				want := make([]byte, c.Len)
				pt.Fill(c.Off, want)
				if n != len(got) || !bytes.Equal(got, want) {
					select {
					case errc <- fmt.Errorf("content differs in [%d, %d): first at %d", c.Off, c.End(), c.Off+int64(firstDiff(got[:n], want))):
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatalf("%s: %v", pt.Name, err)
	}
	b := make([]byte, 16)
	if n, err := img.ReadAt(b, img.Size()); n != 0 || err != io.EOF {
		t.Fatalf("%s: ReadAt at size = %d, %v; want 0, io.EOF", pt.Name, n, err)
	}
	if img.Size() >= 8 {
		n, err := img.ReadAt(b, img.Size()-8)
		if n != 8 || err != io.EOF {
			t.Fatalf("%s: ReadAt across end = %d, %v; want 8, io.EOF", pt.Name, n, err)
		}
	}
}

func readPlan(pt *Pattern, data []disk.Extent) []disk.Extent {
	var out []disk.Extent
	add := func(off, end int64) {
		off, end = max(off, 0), min(end, pt.Size)
		for off < end {
			n := min(MiB+512, end-off)
			out = append(out, disk.Extent{Off: off, Len: n})
			off += n
		}
	}
	if pt.Size <= 64*MiB {
		add(0, pt.Size)
		return out
	}
	ranges := append(append([]disk.Extent{}, pt.Data...), data...)
	ranges = append(ranges, disk.Extent{Off: 0, Len: 4096}, disk.Extent{Off: pt.Size - 4096, Len: 4096})
	for _, e := range ranges {
		if e.Len > 64*MiB { // big image-reported data extents: sample ends
			add(e.Off-4096, e.Off+MiB)
			add(e.End()-MiB, e.End()+4096)
			continue
		}
		add(e.Off-4096, e.End()+4096)
	}
	return out
}

func covered(rs []disk.Extent, off, n int64) bool {
	for _, r := range rs {
		if r.Off <= off && off+n <= r.End() {
			return true
		}
	}
	// may span two touching extents
	end := off + n
	for _, r := range rs {
		if r.Off <= off && off < r.End() {
			off = r.End()
			if off >= end {
				return true
			}
		}
	}
	return false
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// FormatOptions tune the conformance suite for one format.
type FormatOptions struct {
	// Create options to pass, e.g. {"subformat": "fixed"}.
	Create map[string]string
	// MaxSize skips patterns bigger than this (0: no limit).
	MaxSize int64
	// SizeRounding, if set, maps a requested size to the size the format
	// stores (formats that round up).
	SizeRounding func(int64) int64
	// ExtraFiles are the names of files a committed image "img" has
	// beside it (a VMDK's "img-flat.vmdk").
	ExtraFiles []string
}

// TestFormat runs the conformance suite for a format that can write: every
// pattern is written, committed, probed, opened and verified; an aborted
// writer leaves nothing behind; a sequential writer refuses to go back.
func TestFormat(t *testing.T, f *disk.Format, o FormatOptions) {
	if f.Create == nil {
		t.Fatalf("%s: format cannot write", f.Name)
	}
	reg := disk.NewRegistry(f)
	for _, pt := range Patterns(testing.Short()) {
		if o.MaxSize > 0 && pt.Size > o.MaxSize {
			continue
		}
		t.Run(pt.Name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			path := filepath.Join(dir, "img")
			w, err := reg.Create(ctx, path, f.Name, pt.Size, &disk.CreateOptions{Options: o.Create})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			defer w.Close()
			if err := WritePattern(ctx, w, pt); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := w.Commit(ctx); err != nil {
				t.Fatalf("commit: %v", err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("close after commit: %v", err)
			}
			AssertOnly(t, dir, append([]string{"img"}, o.ExtraFiles...)...)
			file, err := disk.OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !f.Probe(file) {
				t.Fatalf("probe does not recognise a %s image it wrote", f.Name)
			}
			img, err := f.Open(ctx, file, &disk.OpenOptions{})
			if err != nil {
				file.Close()
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			want := *pt
			if o.SizeRounding != nil {
				want.Size = o.SizeRounding(pt.Size)
			}
			VerifyImage(t, img, &want)
			if info := img.Info(); info.Format != f.Name || info.VirtualSize != want.Size {
				t.Fatalf("info %+v: want format %s size %d", info, f.Name, want.Size)
			}
			if c, ok := img.(disk.Checker); ok {
				res, err := c.Check(ctx)
				if err != nil || !res.Clean() {
					t.Fatalf("check: %+v, %v", res, err)
				}
			}
		})
	}
	t.Run("abort", func(t *testing.T) {
		dir := t.TempDir()
		w, err := reg.Create(t.Context(), filepath.Join(dir, "img"), f.Name, 4*MiB, &disk.CreateOptions{Options: o.Create})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("close without commit: %v", err)
		}
		AssertOnly(t, dir)
	})
	t.Run("sequential-order", func(t *testing.T) {
		dir := t.TempDir()
		w, err := reg.Create(t.Context(), filepath.Join(dir, "img"), f.Name, 8*MiB, &disk.CreateOptions{Options: o.Create})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if !w.Sequential() {
			t.Skip("random-access writer")
		}
		b := bytes.Repeat([]byte{1}, 4096)
		if _, err := w.WriteAt(b, 4*MiB); err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(b, 0); err == nil {
			if err = w.Commit(t.Context()); err == nil {
				t.Fatal("sequential writer accepted a write behind its position")
			}
		}
	})
}

// AssertOnly fails unless dir holds exactly the named entries.
func AssertOnly(t testing.TB, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	slices.Sort(names)
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("directory %s holds %v, want %v", dir, got, names)
	}
}

// IsZero reports whether b is all zeros.
func IsZero(b []byte) bool { return isZero(b) }
