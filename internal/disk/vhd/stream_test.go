package vhd

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
)

// pipeTarget is a non-seekable Target: an io.Pipe drained into a buffer.
type pipeTarget struct {
	pw   *io.PipeWriter
	done chan struct{}
	buf  bytes.Buffer
}

func newPipeTarget() *pipeTarget {
	pr, pw := io.Pipe()
	p := &pipeTarget{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		io.Copy(&p.buf, pr)
	}()
	return p
}

func (p *pipeTarget) Write(b []byte) (int, error) { return p.pw.Write(b) }

// bytes closes the pipe and returns what was written.
func (p *pipeTarget) bytes() []byte {
	p.pw.Close()
	<-p.done
	return p.buf.Bytes()
}

// streamWrite writes pt through a dynamic writer on a pipe, with pt as the
// extent hint, and returns the bytes.
func streamWrite(t testing.TB, pt *disktest.Pattern, opts map[string]string) []byte {
	t.Helper()
	ctx := context.Background()
	tgt := newPipeTarget()
	w, err := Format().Create(ctx, tgt, pt.Size, &disk.CreateOptions{Options: opts, Source: patternImage(pt)})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !w.Sequential() {
		t.Fatal("streaming writer is not sequential")
	}
	if err := disktest.WritePattern(ctx, w, pt); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	w.Close()
	return tgt.bytes()
}

// readStream reads a whole stream into a buffer of its size (small
// images only), checking the runs' order.
func readStream(t testing.TB, s disk.Stream) []byte {
	t.Helper()
	out := make([]byte, s.Size())
	last := int64(0)
	for {
		off, p, err := s.Next(context.Background())
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		if off < last || off+int64(len(p)) > s.Size() {
			t.Fatalf("run [%d, %d) after %d, size %d", off, off+int64(len(p)), last, s.Size())
		}
		copy(out[off:], p)
		last = off + int64(len(p))
	}
}

func TestStreamDynamic(t *testing.T) {
	for _, opts := range []map[string]string{nil, {"block_size": "512K"}} {
		for _, pt := range disktest.Patterns(true) {
			name := pt.Name
			if opts != nil {
				name += "-512k"
			}
			t.Run(name, func(t *testing.T) {
				ctx := t.Context()
				b := streamWrite(t, pt, opts)
				// Open of the same bytes.
				img, err := Format().Open(ctx, disk.BytesFile("streamed.vhd", b), nil)
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				disktest.VerifyImage(t, img, pt)
				checkClean(t, img)
				// OpenStream, front to back, the format probed by the
				// registry.
				s, err := disk.NewRegistry(Format(), raw.Format()).OpenStream(ctx, bytes.NewReader(b), "", 0)
				if err != nil {
					t.Fatalf("open stream: %v", err)
				}
				defer s.Close()
				if s.Size() != pt.Size || s.Info().Specific["subformat"] != "dynamic" {
					t.Fatalf("stream size %d info %+v", s.Size(), s.Info())
				}
				if pt.Size <= 64<<20 {
					if got, want := readStream(t, s), pt.Bytes(); !bytes.Equal(got, want) {
						t.Fatalf("stream content differs at %d", firstDiff(got, want))
					}
				} else {
					var n int64
					for {
						off, p, err := s.Next(ctx)
						if err == io.EOF {
							break
						}
						if err != nil {
							t.Fatal(err)
						}
						want := make([]byte, len(p))
						pt.Fill(off, want)
						if !bytes.Equal(p, want) {
							t.Fatalf("run at %d differs", off)
						}
						n += int64(len(p))
					}
					if n == 0 && pt.DataBytes() > 0 {
						t.Fatal("no runs")
					}
				}
				// qemu reads the streamed file too.
				if _, err := os.Stat("/usr/bin/qemu-img"); err == nil {
					dir := t.TempDir()
					path := filepath.Join(dir, "s.vhd")
					if err := os.WriteFile(path, b, 0o644); err != nil {
						t.Fatal(err)
					}
					raw := filepath.Join(dir, "want.raw")
					disktest.WriteRaw(t, pt, raw)
					if qi := disktest.QemuInfoOf(t, path, "vpc"); qi.VirtualSize != pt.Size {
						t.Fatalf("qemu size %d, want %d", qi.VirtualSize, pt.Size)
					}
					disktest.Qemu(t, "compare", "-f", "vpc", "-F", "raw", path, raw)
				}
			})
		}
	}
}

func TestStreamFixedWriter(t *testing.T) {
	for _, pt := range disktest.Patterns(true) {
		if pt.Size > 64<<20 {
			continue
		}
		t.Run(pt.Name, func(t *testing.T) {
			ctx := t.Context()
			tgt := newPipeTarget()
			w, err := Format().Create(ctx, tgt, pt.Size, &disk.CreateOptions{Options: map[string]string{"subformat": "fixed"}})
			if err != nil {
				t.Fatal(err)
			}
			if !w.Sequential() {
				t.Fatal("fixed writer on a stream must be sequential")
			}
			if err := disktest.WritePattern(ctx, w, pt); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			b := tgt.bytes()
			if int64(len(b)) != pt.Size+footerSize {
				t.Fatalf("stream of %d bytes, want %d", len(b), pt.Size+footerSize)
			}
			img, err := Format().Open(ctx, disk.BytesFile("fixed.vhd", b), nil)
			if err != nil {
				t.Fatal(err)
			}
			disktest.VerifyImage(t, img, pt)
		})
	}
}

func TestStreamRefusals(t *testing.T) {
	ctx := t.Context()
	pt := &disktest.Pattern{Name: "small", Size: 6 << 20, Seed: 5, Data: []disk.Extent{{Off: 0, Len: 4096}, {Off: 4 << 20, Len: 8192}}}
	good := streamWrite(t, pt, nil)

	t.Run("no-source", func(t *testing.T) {
		_, err := Format().Create(ctx, newPipeTarget(), 8<<20, nil)
		if !errs.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "extent map") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("write-outside-hint", func(t *testing.T) {
		w, err := Format().Create(ctx, newPipeTarget(), pt.Size, &disk.CreateOptions{Source: patternImage(pt)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		// zeros into an unplanned block are fine, data is not
		if _, err := w.WriteAt(make([]byte, 4096), 2<<20); err != nil {
			t.Fatalf("zeros: %v", err)
		}
		_, err = w.WriteAt([]byte{1}, 3<<20)
		if !errs.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), "block 1") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("backwards", func(t *testing.T) {
		w, err := Format().Create(ctx, newPipeTarget(), pt.Size, &disk.CreateOptions{Source: patternImage(pt)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.WriteAt([]byte{1}, 4<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte{1}, 0); err == nil {
			t.Fatal("went backwards")
		}
	})
	t.Run("fixed", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "f.vhd")
		writeFerry(t, pt, path, &disk.CreateOptions{Options: map[string]string{"subformat": "fixed"}})
		b, _ := os.ReadFile(path)
		_, err := Format().OpenStream(ctx, bytes.NewReader(b), nil)
		if !errs.Is(err, errs.Unimplemented) || !strings.Contains(err.Error(), "not streamable") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("out-of-order", func(t *testing.T) {
		// Swap the BAT entries of blocks 0 and 2: block 2 is then stored
		// first.
		b := bytes.Clone(good)
		bat := b[footerSize+headerSize:]
		e0, e2 := bytes.Clone(bat[0:4]), bytes.Clone(bat[8:12])
		copy(bat[0:4], e2)
		copy(bat[8:12], e0)
		_, err := Format().OpenStream(ctx, bytes.NewReader(b), nil)
		if !errs.Is(err, errs.Unimplemented) || !strings.Contains(err.Error(), "LBA order") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for _, cut := range []int{100, 1000, 2000, len(good) / 2, len(good) - 600, len(good) - 100} {
			s, err := Format().OpenStream(ctx, bytes.NewReader(good[:cut]), nil)
			if err == nil {
				for err == nil {
					_, _, err = s.Next(ctx)
				}
			}
			if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "stream") {
				t.Fatalf("cut at %d: err = %v", cut, err)
			}
		}
	})
}

func TestStreamFixed(t *testing.T) {
	ctx := t.Context()
	for _, pt := range disktest.Patterns(true) {
		if pt.Size > 64<<20 {
			continue
		}
		for _, by := range []string{"ferry", "qemu"} {
			t.Run(by+"/"+pt.Name, func(t *testing.T) {
				var path string
				if by == "ferry" {
					path = filepath.Join(t.TempDir(), "f.vhd")
					writeFerry(t, pt, path, &disk.CreateOptions{Options: map[string]string{"subformat": "fixed"}})
				} else {
					if pt.Size == 0 {
						t.Skip("qemu-img cannot write a 0-byte fixed VHD it can read")
					}
					path = disktest.QemuMake(t, pt, "vpc", "subformat=fixed,force_size=on")
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				s, err := Format().OpenStream(ctx, bytes.NewReader(b), &disk.OpenOptions{Size: int64(len(b))})
				if err != nil {
					t.Fatalf("open stream: %v", err)
				}
				defer s.Close()
				if s.Size() != pt.Size {
					t.Fatalf("size %d, want %d", s.Size(), pt.Size)
				}
				if got, want := readStream(t, s), pt.Bytes(); !bytes.Equal(got, want) {
					t.Fatalf("content differs at %d", firstDiff(got, want))
				}
				// Without the length: refused. With a wrong one: corrupt.
				if _, err := Format().OpenStream(ctx, bytes.NewReader(b), nil); pt.Size > 0 && !errs.Is(err, errs.Unimplemented) {
					t.Fatalf("no length: err = %v", err)
				}
				s2, err := Format().OpenStream(ctx, bytes.NewReader(b), &disk.OpenOptions{Size: int64(len(b)) + 512})
				for err == nil {
					_, _, err = s2.Next(ctx)
				}
				if !errs.Is(err, errs.Corrupt) {
					t.Fatalf("wrong length: err = %v", err)
				}
			})
		}
	}
}
