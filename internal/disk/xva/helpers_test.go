package xva

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

const MiB = disktest.MiB

// vmFor describes a VM whose disks hold the patterns.
func vmFor(name string, pats ...*disktest.Pattern) core.VMSpec {
	vm := core.VMSpec{Name: name, CPUs: 2, MemoryBytes: 2 << 30, Firmware: core.BIOS}
	for i, pt := range pats {
		vm.Disks = append(vm.Disks, core.DiskSpec{Name: pt.Name, Size: pt.Size, Position: i, Bootable: i == 0})
	}
	return vm
}

// writeTo writes an XVA of vm with the patterns as its disks to t.
func writeTo(ctx context.Context, t disk.Target, vm core.VMSpec, pats []*disktest.Pattern, opts map[string]string) error {
	w, err := Format().Create(ctx, t, vm, &archive.CreateOptions{Options: opts})
	if err != nil {
		return err
	}
	defer w.Close()
	for _, pt := range pats {
		dw, err := w.NextDisk(ctx)
		if err != nil {
			return err
		}
		if err := disktest.WritePattern(ctx, dw, pt); err != nil {
			dw.Close()
			return err
		}
		if err := dw.Commit(ctx); err != nil {
			return err
		}
		if err := dw.Close(); err != nil {
			return err
		}
	}
	return w.Commit(ctx)
}

// writeXVA returns the bytes of an XVA of vm.
func writeXVA(t testing.TB, vm core.VMSpec, pats []*disktest.Pattern, opts map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeTo(context.Background(), &buf, vm, pats, opts); err != nil {
		t.Fatalf("write xva: %v", err)
	}
	return buf.Bytes()
}

func openBytes(t testing.TB, b []byte) archive.Reader {
	t.Helper()
	r, err := Format().Open(context.Background(), disk.BytesFile("test.xva", b), nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// onlyReader hides everything but Read, so nothing can seek.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// verifyStream reads a disk stream to its end and checks it against pt.
func verifyStream(t testing.TB, s disk.Stream, pt *disktest.Pattern) {
	t.Helper()
	ctx := context.Background()
	if s.Size() != pt.Size {
		t.Fatalf("%s: stream size %d, want %d", pt.Name, s.Size(), pt.Size)
	}
	var next int64
	for {
		off, p, err := s.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: stream next after %d: %v", pt.Name, next, err)
		}
		if off < next {
			t.Fatalf("%s: run at %d before %d", pt.Name, off, next)
		}
		if err := gapIsZero(pt, next, off); err != nil {
			t.Fatalf("%s: %v", pt.Name, err)
		}
		want := make([]byte, len(p))
		pt.Fill(off, want)
		if !bytes.Equal(p, want) {
			t.Fatalf("%s: stream run at %d (%d bytes) differs", pt.Name, off, len(p))
		}
		next = off + int64(len(p))
	}
	if err := gapIsZero(pt, next, pt.Size); err != nil {
		t.Fatalf("%s: %v", pt.Name, err)
	}
}

// gapIsZero checks that the pattern holds only zeros in [a, b).
func gapIsZero(pt *disktest.Pattern, a, b int64) error {
	for _, e := range pt.Data {
		s, t := max(e.Off, a), min(e.End(), b)
		for s < t {
			n := min(MiB, t-s)
			buf := make([]byte, n)
			pt.Fill(s, buf)
			if !disktest.IsZero(buf) {
				return fmt.Errorf("pattern data at %d missing from the stream", s)
			}
			s += n
		}
	}
	return nil
}

type member struct {
	name string
	data []byte
}

// members lists a plain tar's members.
func members(t testing.TB, b []byte) []member {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []member
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		d, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		out = append(out, member{h.Name, d})
	}
}

// tarOf builds a tar of the members.
func tarOf(t testing.TB, ms []member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Size: int64(len(m.data)), Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// chunkPair is a chunk member and its checksum member.
func chunkPair(ref string, num int, data []byte, kind sumKind) []member {
	name := fmt.Sprintf("%s/%08d", ref, num)
	return []member{{name, data}, {name + kind.ext(), []byte(sumText(kind, data))}}
}

// wantErr checks that err carries code and mentions every string.
func wantErr(t testing.TB, err error, code errs.Code, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", code)
	}
	if got := errs.CodeOf(err); got != code {
		t.Fatalf("error %q has code %v, want %v", err, got, code)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Fatalf("error %q does not mention %q", err, m)
		}
	}
}

// readAll reads every disk of r through OpenDisk, returning the first error.
func readAll(ctx context.Context, r archive.Reader) error {
	for i := range r.VM().Disks {
		img, err := r.OpenDisk(ctx, i)
		if err != nil {
			return err
		}
		buf := make([]byte, MiB+512)
		for e, err := range img.Extents(ctx, 0, img.Size()) {
			if err != nil {
				return err
			}
			if e.Kind != disk.Data {
				continue
			}
			for off := e.Off; off < e.End(); off += int64(len(buf)) {
				n := min(int64(len(buf)), e.End()-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
			}
		}
	}
	return nil
}

// streamAll reads every disk of a stream, returning the first error.
func streamAll(ctx context.Context, b io.Reader, limit int64) error {
	s, err := Format().OpenStream(ctx, b, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	var total int64
	for {
		_, ds, err := s.NextDisk(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for {
			_, p, err := ds.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if total += int64(len(p)); total > limit {
				return nil
			}
		}
	}
}

// writeFile stores b in a temporary file and returns its path.
func writeFile(t testing.TB, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vm.xva")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
