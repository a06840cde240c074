package xen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/xapi"
)

// overlay is base's content with changes' data ranges written over it.
type overlay struct {
	base, changes *synth.Pattern
}

func (o overlay) Size() int64     { return o.base.Size }
func (o overlay) Close() error    { return nil }
func (o overlay) Info() disk.Info { return disk.Info{Format: "overlay", VirtualSize: o.base.Size} }

func (o overlay) ReadAt(p []byte, off int64) (int, error) {
	n, err := synth.Image{P: o.base}.ReadAt(p, off)
	end := off + int64(n)
	for _, e := range o.changes.Data {
		s, t := max(e.Off, off), min(e.End(), end)
		if s < t {
			o.changes.Fill(s, p[s-off:t-off])
		}
	}
	return n, err
}

func (o overlay) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	var all []disk.Extent
	for _, e := range slices.Concat(o.base.Data, o.changes.Data) {
		all = append(all, disk.Extent{Off: e.Off, Len: e.Len, Kind: disk.Data})
	}
	slices.SortFunc(all, func(a, b disk.Extent) int { return int(a.Off - b.Off) })
	var merged []disk.Extent
	for _, e := range all {
		if k := len(merged); k > 0 && merged[k-1].End() >= e.Off {
			merged[k-1].Len = max(merged[k-1].End(), e.End()) - merged[k-1].Off
			continue
		}
		merged = append(merged, e)
	}
	return synth.Image{P: &synth.Pattern{Size: o.base.Size, Data: merged}}.Extents(ctx, off, n)
}

// bytesOf reads an image whole.
func bytesOf(t testing.TB, img disk.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

// roundBlocks rounds ranges out to 64 KiB blocks, merged.
func roundBlocks(exts []disk.Extent, size int64) []disk.Extent {
	var out []disk.Extent
	for _, e := range mergeSorted(exts) {
		s := e.Off / xapi.CBTBlockSize * xapi.CBTBlockSize
		t := min((e.End()+xapi.CBTBlockSize-1)/xapi.CBTBlockSize*xapi.CBTBlockSize, size)
		if k := len(out); k > 0 && out[k-1].End() >= s {
			out[k-1].Len = max(out[k-1].End(), t) - out[k-1].Off
			continue
		}
		out = append(out, disk.Extent{Off: s, Len: t - s, Kind: disk.Data})
	}
	return out
}

// importTestVM imports a one-disk VM of content pt.
func importTestVM(t testing.TB, p *Provider, name string, pt *synth.Pattern) (core.VMID, xapi.VDIRef) {
	t.Helper()
	spec := core.VMSpec{Name: name, CPUs: 1, MemoryBytes: 128 << 20, Disks: []core.DiskSpec{{Name: name + "-disk", Size: pt.Size, Bootable: true}}}
	id, err := p.ImportVM(t.Context(), spec, []disk.Image{synth.Image{P: pt}}, nil)
	if err != nil {
		t.Fatalf("import %s: %v", name, err)
	}
	var vm core.VM
	p.ListVMs(t.Context(), provider.Filter{IDs: []core.VMID{id}}, func(v core.VM) error { vm = v; return nil })
	if len(vm.Disks) != 1 {
		t.Fatalf("imported VM %+v", vm)
	}
	vdi, err := p.Client().VDI().GetByUUID(t.Context(), string(vm.Disks[0].ID))
	if err != nil {
		t.Fatal(err)
	}
	return id, vdi
}

// writeFile writes an image to a raw file for qemu-img.
func writeFile(t testing.TB, img disk.Image, path string) {
	t.Helper()
	reg := disk.NewRegistry(raw.Format())
	w, err := reg.Create(t.Context(), path, "raw", img.Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), w, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func qemuCompare(t testing.TB, a, b string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Log("qemu-img not installed: oracle comparison skipped")
		return
	}
	if code, out := disktest.QemuExit(t, "compare", "-f", "raw", "-F", "raw", a, b); code != 0 {
		t.Errorf("qemu-img compare %s %s: exit %d\n%s", filepath.Base(a), filepath.Base(b), code, out)
	}
}

// applyDelta writes the delta's data extents over a copy of base.
func applyDelta(t testing.TB, base []byte, delta disk.Image) []byte {
	t.Helper()
	out := slices.Clone(base)
	for e, err := range delta.Extents(t.Context(), 0, delta.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != disk.Data {
			continue
		}
		if _, err := delta.ReadAt(out[e.Off:e.End()], e.Off); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func dataOf(t testing.TB, img disk.Image) []disk.Extent {
	t.Helper()
	var out []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			if k := len(out); k > 0 && out[k-1].End() == e.Off {
				out[k-1].Len += e.Len
				continue
			}
			out = append(out, e)
		}
	}
	return out
}

// TestDeltaRoundTrip: full and delta exports, with and without changed
// block tracking, rebuild the snapshots exactly; CBT bitmaps are exactly
// the blocks written.
func TestDeltaRoundTrip(t *testing.T) {
	const size = 21<<20 + 512
	base := &synth.Pattern{Name: "base", Size: size, Seed: 21, Data: []disk.Extent{{Off: 0, Len: 6 << 20}, {Off: 12 << 20, Len: 3 << 20}}}
	c1 := &synth.Pattern{Name: "c1", Size: size, Seed: 22, Data: []disk.Extent{{Off: 100 << 10, Len: 4096}, {Off: 7<<20 + 3, Len: 200 << 10}, {Off: size - 512, Len: 512}}}
	c2 := &synth.Pattern{Name: "c2", Size: size, Seed: 23, Data: []disk.Extent{{Off: 64 << 10, Len: 64 << 10}, {Off: 13 << 20, Len: 2 << 20}}}
	for _, cbt := range []bool{false, true} {
		t.Run(fmt.Sprintf("cbt=%v", cbt), func(t *testing.T) {
			ctx := t.Context()
			l := newLab(t, nil)
			p := l.open(t, Config{EnableCBT: cbt}, nil)
			defer p.Close()
			c := p.Client()
			id, vdi := importTestVM(t, p, "delta", base)
			s1, err := p.Snapshot(ctx, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Write c1 over the live disk, then snapshot; then c2.
			v1 := overlay{base, c1}
			if err := c.ImportRawVDI(ctx, vdi, xapi.FormatRaw, v1, nil); err != nil {
				t.Fatal(err)
			}
			s2, err := p.Snapshot(ctx, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			v2img := twoOverlays{base, c1, c2}
			if err := c.ImportRawVDI(ctx, vdi, xapi.FormatVHD, v2img, nil); err != nil {
				t.Fatal(err)
			}
			s3, err := p.Snapshot(ctx, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			d1, d2, d3 := s1.Disks[0].ID, s2.Disks[0].ID, s3.Disks[0].ID

			full1, err := p.OpenDisk(ctx, d1, "")
			if err != nil {
				t.Fatal(err)
			}
			defer full1.Close()
			b1 := bytesOf(t, full1)
			if !bytes.Equal(b1, base.Bytes()) {
				t.Fatal("full export of snapshot 1 differs from what was imported")
			}
			want2, want3 := bytesOf(t, v1), bytesOf(t, v2img)
			for _, step := range []struct {
				name       string
				from, to   core.DiskID
				prev, want []byte
				changes    *synth.Pattern
			}{
				{"s1-s2", d1, d2, b1, want2, c1},
				{"s2-s3", d2, d3, want2, want3, c2},
			} {
				delta, err := p.OpenDisk(ctx, step.to, step.from)
				if err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				got := applyDelta(t, step.prev, delta)
				changed := dataOf(t, delta)
				delta.Close()
				if !bytes.Equal(got, step.want) {
					t.Fatalf("%s: base + delta differs from the snapshot", step.name)
				}
				// Only the changed 64 KiB blocks travel (the lab diffs by
				// content, as CBT here does).
				if want := roundBlocks(step.changes.Data, size); fmt.Sprint(changed) != fmt.Sprint(want) {
					t.Errorf("%s: delta extents %v, want the blocks written %v", step.name, changed, want)
				}
				// The oracle: qemu-img compares rebuilt and exported.
				dir := t.TempDir()
				rebuilt, exported := filepath.Join(dir, "rebuilt.raw"), filepath.Join(dir, "exported.raw")
				writeFile(t, synthBytes(got), rebuilt)
				full, err := p.OpenDisk(ctx, step.to, "")
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, full, exported)
				full.Close()
				qemuCompare(t, rebuilt, exported)
			}
			if !cbt {
				return
			}
			// The bitmaps are exactly the blocks written.
			v1ref, _ := c.VDI().GetByUUID(ctx, string(d1))
			v2ref, _ := c.VDI().GetByUUID(ctx, string(d2))
			v3ref, _ := c.VDI().GetByUUID(ctx, string(d3))
			for _, bm := range []struct {
				from, to xapi.VDIRef
				want     []disk.Extent
			}{
				{v1ref, v2ref, roundBlocks(c1.Data, size)},
				{v2ref, v3ref, roundBlocks(c2.Data, size)},
				{v1ref, v3ref, roundBlocks(slices.Concat(c1.Data, c2.Data), size)},
			} {
				got, err := c.ChangedBlocks(ctx, bm.from, bm.to)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(got) != fmt.Sprint(bm.want) {
					t.Errorf("changed blocks %v, want %v", got, bm.want)
				}
			}
			// With the base's data destroyed, CBT still gives the delta
			// (its data from the whole disk).
			if err := c.VDI().DataDestroy(ctx, v2ref); err != nil {
				t.Fatal(err)
			}
			delta, err := p.OpenDisk(ctx, d3, d2)
			if err != nil {
				t.Fatal(err)
			}
			defer delta.Close()
			if got := applyDelta(t, want2, delta); !bytes.Equal(got, want3) {
				t.Error("delta over a data-destroyed base differs")
			}
			if _, err := p.OpenDisk(ctx, d2, ""); !errs.Is(err, errs.FailedPrecondition) {
				t.Errorf("open a data-destroyed disk: %v", err)
			}
		})
	}
}

func mergeSorted(exts []disk.Extent) []disk.Extent {
	s := slices.Clone(exts)
	slices.SortFunc(s, func(a, b disk.Extent) int { return int(a.Off - b.Off) })
	var out []disk.Extent
	for _, e := range s {
		if k := len(out); k > 0 && out[k-1].End() >= e.Off {
			out[k-1].Len = max(out[k-1].End(), e.End()) - out[k-1].Off
			continue
		}
		out = append(out, e)
	}
	return out
}

// twoOverlays is base with a, then b, written over it.
type twoOverlays struct{ base, a, b *synth.Pattern }

func (o twoOverlays) Size() int64     { return o.base.Size }
func (o twoOverlays) Close() error    { return nil }
func (o twoOverlays) Info() disk.Info { return disk.Info{Format: "overlay", VirtualSize: o.base.Size} }
func (o twoOverlays) ReadAt(p []byte, off int64) (int, error) {
	n, err := overlay{o.base, o.a}.ReadAt(p, off)
	end := off + int64(n)
	for _, e := range o.b.Data {
		s, t := max(e.Off, off), min(e.End(), end)
		if s < t {
			o.b.Fill(s, p[s-off:t-off])
		}
	}
	return n, err
}
func (o twoOverlays) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	merged := mergeSorted(slices.Concat(o.base.Data, o.a.Data, o.b.Data))
	for i := range merged {
		merged[i].Kind = disk.Data
	}
	return synth.Image{P: &synth.Pattern{Size: o.base.Size, Data: merged}}.Extents(ctx, off, n)
}

// synthBytes is an Image over bytes.
type synthBytes []byte

func (b synthBytes) Size() int64     { return int64(len(b)) }
func (b synthBytes) Close() error    { return nil }
func (b synthBytes) Info() disk.Info { return disk.Info{Format: "raw", VirtualSize: int64(len(b))} }
func (b synthBytes) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (b synthBytes) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return synth.Image{P: &synth.Pattern{Size: int64(len(b)), Data: []disk.Extent{{Off: 0, Len: int64(len(b))}}}}.Extents(ctx, off, n)
}

// cutter wraps a handler: once armed, a transfer response (or request
// body) on path stops after limit bytes and the connection is dropped.
type cutter struct {
	h     http.Handler
	path  string
	limit int64
	armed atomic.Bool
	cuts  atomic.Int32
}

type cutWriter struct {
	http.ResponseWriter
	left int64
	cut  bool
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if w.cut {
		return 0, io.ErrClosedPipe
	}
	if int64(len(p)) > w.left {
		n, _ := w.ResponseWriter.Write(p[:w.left])
		w.ResponseWriter.(http.Flusher).Flush()
		w.cut = true
		return n, io.ErrClosedPipe
	}
	w.left -= int64(len(p))
	return w.ResponseWriter.Write(p)
}

func (w *cutWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

type cutBody struct {
	io.ReadCloser
	left int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

func (c *cutter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != c.path || !c.armed.Load() {
		c.h.ServeHTTP(w, r)
		return
	}
	c.cuts.Add(1)
	if r.Method == http.MethodPut {
		r.Body = &cutBody{ReadCloser: r.Body, left: c.limit}
		c.h.ServeHTTP(w, r)
		return
	}
	cw := &cutWriter{ResponseWriter: w, left: c.limit}
	c.h.ServeHTTP(cw, r)
	if cw.cut {
		panic(http.ErrAbortHandler) // drop the connection: the body is cut
	}
}

// TestTransferFaults: a connection dropped mid-transfer is a clear error
// (Unavailable for an export), and a retried transfer is identical.
func TestTransferFaults(t *testing.T) {
	ctx := t.Context()
	pt := &synth.Pattern{Name: "faults", Size: 9 << 20, Seed: 31, Data: []disk.Extent{{Off: 0, Len: 9 << 20}}}
	l := newLab(t, nil)
	cut := &cutter{h: l.srv.Handler(), limit: 1 << 20}
	hs := httptest.NewServer(cut)
	defer hs.Close()
	p, err := Open(ctx, Config{URL: hs.URL, User: labUser, Password: labPass}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	id, vdi := importTestVM(t, p, "faults", pt)
	var vm core.VM
	p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id}}, func(v core.VM) error { vm = v; return nil })
	c := p.Client()
	for _, format := range []string{xapi.FormatVHD, xapi.FormatRaw} {
		cut.path = "/export_raw_vdi"
		cut.armed.Store(true)
		s, err := c.ExportRawVDI(ctx, vdi, format, "")
		if err == nil {
			_, err = drain(ctx, s)
			s.Close()
		}
		cut.armed.Store(false)
		if !errs.Is(err, errs.Unavailable) {
			t.Errorf("%s export cut mid-way: %v (%v), want Unavailable", format, err, errs.CodeOf(err))
		}
		if err != nil && strings.Contains(err.Error(), c.SessionRef().Reveal()) {
			t.Errorf("session in error: %v", err)
		}
		s, err = c.ExportRawVDI(ctx, vdi, format, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := drain(ctx, s)
		s.Close()
		if err != nil || !bytes.Equal(got, pt.Bytes()) {
			t.Errorf("%s export retried: %v", format, err)
		}
	}
	// Through the provider: OpenDisk reads fail the same way.
	cut.path = "/export_raw_vdi"
	cut.armed.Store(true)
	img, err := p.OpenDisk(ctx, vm.Disks[0].ID, "")
	if err == nil {
		_, err = disk.Compare(ctx, img, synth.Image{P: pt}, nil)
		img.Close()
	}
	cut.armed.Store(false)
	if !errs.Is(err, errs.Unavailable) {
		t.Errorf("OpenDisk cut mid-way: %v", err)
	}
	// An upload cut mid-way fails and leaves the disk as it was; a retry
	// writes it whole.
	changed := &synth.Pattern{Name: "changed", Size: pt.Size, Seed: 32, Data: []disk.Extent{{Off: 0, Len: pt.Size}}}
	for _, format := range []string{xapi.FormatVHD, xapi.FormatRaw} {
		cut.path = "/import_raw_vdi"
		cut.armed.Store(true)
		err := c.ImportRawVDI(ctx, vdi, format, synth.Image{P: changed}, nil)
		cut.armed.Store(false)
		if err == nil {
			t.Errorf("%s import cut mid-way succeeded", format)
		} else {
			t.Logf("%s import cut mid-way: %v (%v)", format, err, errs.CodeOf(err))
		}
		if err := c.ImportRawVDI(ctx, vdi, format, synth.Image{P: changed}, nil); err != nil {
			t.Fatalf("%s import retried: %v", format, err)
		}
		s, err := c.ExportRawVDI(ctx, vdi, xapi.FormatRaw, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := drain(ctx, s)
		s.Close()
		if err != nil || !bytes.Equal(got, changed.Bytes()) {
			t.Errorf("%s import retried: the disk differs (%v)", format, err)
		}
	}
	if cut.cuts.Load() != 5 {
		t.Errorf("%d cuts", cut.cuts.Load())
	}
}

func drain(ctx context.Context, s disk.Stream) ([]byte, error) {
	out := make([]byte, s.Size())
	for {
		off, p, err := s.Next(ctx)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		copy(out[off:], p)
	}
}

// TestErrors: bad credentials, an expired session, unknown handles, a
// wrong format, wrong sizes each give a clear error.
func TestErrors(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, nil)
	var logs logCapture
	_, err := Open(ctx, Config{URL: l.hs.URL, User: labUser, Password: "wrong-password-x"}, logs.logger())
	if !errs.Is(err, errs.PermissionDenied) || !xapi.HasCode(err, "SESSION_AUTHENTICATION_FAILED") {
		t.Errorf("bad credentials: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong-password-x") {
		t.Errorf("password in error: %v", err)
	}
	p := l.open(t, Config{}, logs.logger())
	defer p.Close()
	c := p.Client()
	pt := &synth.Pattern{Name: "errs", Size: 2 << 20, Seed: 41, Data: []disk.Extent{{Off: 0, Len: 1 << 20}}}
	id, vdi := importTestVM(t, p, "errs", pt)

	// Expired session: logged out behind the provider's back, the next
	// call logs in again.
	old := c.SessionRef().Reveal()
	body := fmt.Sprintf(`{"jsonrpc":"2.0","method":"session.logout","params":[%q],"id":1}`, old)
	resp, err := http.Post(l.hs.URL+"/jsonrpc", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	n := 0
	if err := p.ListVMs(ctx, provider.Filter{}, func(core.VM) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("after the session expired: %d VMs, %v", n, err)
	}
	if c.SessionRef().Reveal() == old {
		t.Error("the session was not renewed")
	}
	// And transfers, which carry the session in the URL.
	s, err := c.ExportRawVDI(ctx, vdi, xapi.FormatVHD, "")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Unknown handle.
	if _, err := c.VM().GetRecord(ctx, "OpaqueRef:00000000-dead-beef-0000-000000000000"); !errs.Is(err, errs.NotFound) || !xapi.HasCode(err, "HANDLE_INVALID") {
		t.Errorf("unknown handle: %v", err)
	}
	// Wrong format.
	if _, err := c.ExportRawVDI(ctx, vdi, "qcow3", ""); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("wrong format: %v", err)
	}
	// A VHD body that is not a VHD: the lab refuses it, its reason comes back.
	err = c.ImportRawVDI(ctx, vdi, xapi.FormatRaw, synth.Image{P: &synth.Pattern{Size: pt.Size + 512}}, nil)
	if !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("source larger than the VDI: %v", err)
	}
	// Wrong sizes.
	other := &synth.Pattern{Name: "other", Size: 4 << 20, Seed: 42, Data: []disk.Extent{{Off: 0, Len: 4096}}}
	id2, _ := importTestVM(t, p, "other", other)
	var vm1, vm2 core.VM
	p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id}}, func(v core.VM) error { vm1 = v; return nil })
	p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id2}}, func(v core.VM) error { vm2 = v; return nil })
	if _, err := p.OpenDisk(ctx, vm1.Disks[0].ID, vm2.Disks[0].ID); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("delta against a disk of another size: %v", err)
	}
	spec := core.VMSpec{Name: "bad", CPUs: 1, MemoryBytes: 64 << 20, Disks: []core.DiskSpec{{Size: 1 << 20}}}
	if _, err := p.ImportVM(ctx, spec, []disk.Image{synth.Image{P: pt}}, nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("disk described smaller than its image: %v", err)
	}
	spec.Disks[0].Size = other.Size
	if _, err := p.ImportVM(ctx, spec, []disk.Image{synth.Image{P: other}}, &provider.ImportOptions{Storage: "no-such-sr"}); !errs.Is(err, errs.NotFound) {
		t.Errorf("unknown SR: %v", err)
	}
	spec.NICs = []core.NICSpec{{Network: "no-such-network"}}
	if _, err := p.ImportVM(ctx, spec, []disk.Image{synth.Image{P: other}}, nil); !errs.Is(err, errs.NotFound) {
		t.Errorf("unknown network: %v", err)
	}
	// Nothing of the failed imports is left.
	names := map[string]int{}
	p.ListVMs(ctx, provider.Filter{}, func(v core.VM) error { names[v.Name]++; return nil })
	if names["bad"] != 0 {
		t.Errorf("failed imports left VMs: %v", names)
	}
	// A snapshot is not a VM: power and delete-as-snapshot refuse it.
	snap, err := p.Snapshot(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.PowerVM(ctx, core.VMID(snap.ID), provider.Start); !errs.Is(err, errs.NotFound) {
		t.Errorf("power a snapshot: %v", err)
	}
	if err := p.DeleteSnapshot(ctx, core.SnapshotID(id)); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("delete a VM as a snapshot: %v", err)
	}
	// Reboot of a halted VM.
	if err := p.PowerVM(ctx, id, provider.Reboot); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("reboot a halted VM: %v", err)
	}
	logs.check(t, labPass, "wrong-password-x", old, c.SessionRef().Reveal())
}

// logCapture collects a provider's logs to check for secrets.
type logCapture struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logCapture) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *logCapture) check(t *testing.T, secrets ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() == 0 {
		t.Error("nothing was logged")
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(l.b.String(), s) {
			t.Errorf("secret %q appears in the log", s)
		}
	}
}

// TestXVARoundTrip: a VM exported as XVA and imported again has the same
// disks; an archive of unknown length goes up too.
func TestXVARoundTrip(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, nil)
	p := l.open(t, Config{}, nil)
	defer p.Close()
	c := p.Client()
	pt := &synth.Pattern{Name: "xva", Size: 5<<20 + 512, Seed: 51, Data: []disk.Extent{{Off: 0, Len: 1 << 20}, {Off: 3 << 20, Len: 4096}}}
	id, _ := importTestVM(t, p, "xva", pt)
	ref, err := c.VM().GetByUUID(ctx, string(id))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := c.ExportVM(ctx, ref, &buf); err != nil {
		t.Fatal(err)
	}
	pools, _ := c.Pool().GetAllRecords(ctx)
	var sr xapi.SRRef
	for _, pl := range pools {
		sr = pl.DefaultSR
	}
	for _, known := range []bool{true, false} {
		t.Run(fmt.Sprintf("length-known=%v", known), func(t *testing.T) {
			var r io.Reader = bytes.NewReader(buf.Bytes())
			if !known {
				r = io.MultiReader(r) // hides the length
			}
			vm, err := c.ImportVM(ctx, sr, r, nil)
			if !known && err != nil {
				// xapi reads a body without Content-Length to the end of
				// the connection; a server that does not (Go's net/http
				// sees an empty body) refuses it.
				t.Skipf("the lab refuses an upload of unknown length (xapi reads it to the end of the connection): %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			rec, err := c.VM().GetRecord(ctx, vm)
			if err != nil {
				t.Fatal(err)
			}
			var got core.VM
			p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{core.VMID(rec.UUID)}}, func(v core.VM) error { got = v; return nil })
			if got.Name != "xva" || len(got.Disks) != 1 {
				t.Fatalf("imported %+v", got)
			}
			img, err := p.OpenDisk(ctx, got.Disks[0].ID, "")
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if res, err := disk.Compare(ctx, img, synth.Image{P: pt}, nil); err != nil || !res.Identical {
				t.Errorf("disk after the XVA round trip: %+v %v", res, err)
			}
			if err := p.DeleteVM(ctx, got.ID); err != nil {
				t.Error(err)
			}
		})
	}
}
