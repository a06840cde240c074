package xapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// diskFake serves VDIs and tasks over a fake: enough of xapi for the
// transfer handlers.
type diskFake struct {
	*fake
	mu    sync.Mutex
	tasks map[string]map[string]any
	vdis  map[string]*fakeVDI
	n     int
	// cut, when set, stops an export after that many body bytes by
	// dropping the connection.
	cut atomic.Int64
	// failImport, when set, makes imports fail their task with it.
	failImport []string
	uploads    []uploadInfo
}

type fakeVDI struct {
	size    int64
	content []byte // what an import wrote (nil until one did)
	vhd     []byte // what a vhd export sends
	raw     []byte // what a raw export sends
	diffs   map[string][]byte
}

type uploadInfo struct {
	length   int64
	chunked  bool
	expect   string
	format   string
	received int64
}

const fakeSession = "OpaqueRef:disk-session"

func newDiskFake(t testing.TB) *diskFake {
	d := &diskFake{fake: newFake(t), tasks: map[string]map[string]any{}, vdis: map[string]*fakeVDI{}}
	d.handle("session.login_with_password", loginHandler("root", "pw", func() string { return fakeSession }))
	d.handle("session.logout", func([]any) (any, *Error) { return "", nil })
	d.handle("VDI.get_virtual_size", func(p []any) (any, *Error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		v := d.vdis[p[1].(string)]
		if v == nil {
			return nil, &Error{Code: "HANDLE_INVALID", Params: []string{"VDI", p[1].(string)}}
		}
		return v.size, nil
	})
	d.handle("task.create", func(p []any) (any, *Error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.n++
		ref := fmt.Sprintf("OpaqueRef:task-%d", d.n)
		d.tasks[ref] = map[string]any{"name_label": p[1], "status": "pending", "progress": 0.0, "result": "", "error_info": []string{}}
		return ref, nil
	})
	d.handle("task.get_record", func(p []any) (any, *Error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		r := d.tasks[p[1].(string)]
		if r == nil {
			return nil, &Error{Code: "HANDLE_INVALID", Params: []string{"task", p[1].(string)}}
		}
		return r, nil
	})
	d.handle("task.cancel", func(p []any) (any, *Error) {
		d.setTask(p[1].(string), "cancelled", "", nil)
		return "", nil
	})
	d.handle("task.destroy", func(p []any) (any, *Error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.tasks, p[1].(string))
		return "", nil
	})
	d.handlePath("/export_raw_vdi", d.export)
	d.handlePath("/import_raw_vdi", d.imp)
	return d
}

func (d *diskFake) setTask(ref, status, result string, errInfo []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := d.tasks[ref]; r != nil {
		r["status"] = status
		r["result"] = result
		if errInfo != nil {
			r["error_info"] = errInfo
		}
		if status == "success" {
			r["progress"] = 1.0
		}
	}
}

func (d *diskFake) client(t testing.TB) *Client {
	c, err := Dial(t.Context(), d.srv.URL, &Options{User: "root", Password: "pw", PollInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (d *diskFake) export(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("session_id") != fakeSession {
		http.Error(w, "no session", http.StatusForbidden)
		return
	}
	d.mu.Lock()
	v := d.vdis[q.Get("vdi")]
	d.mu.Unlock()
	task := q.Get("task_id")
	if v == nil {
		d.setTask(task, "failure", "", []string{"HANDLE_INVALID", "VDI", q.Get("vdi")})
		http.Error(w, "no vdi", http.StatusNotFound)
		return
	}
	var body []byte
	switch q.Get("format") {
	case "vhd":
		body = v.vhd
		if b := q.Get("base"); b != "" {
			body = v.diffs[b]
		}
	case "raw":
		body = v.raw
	default:
		http.Error(w, "format", http.StatusNotFound)
		return
	}
	if cut := d.cut.Load(); cut > 0 && cut < int64(len(body)) {
		conn, bw, _ := w.(http.Hijacker).Hijack()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
		bw.Write(body[:cut])
		bw.Flush()
		conn.Close()
		return
	}
	w.Write(body)
	d.setTask(task, "success", "", nil)
}

func (d *diskFake) imp(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("session_id") != fakeSession {
		http.Error(w, "no session", http.StatusForbidden)
		return
	}
	task := q.Get("task_id")
	ui := uploadInfo{length: r.ContentLength, chunked: len(r.TransferEncoding) > 0, expect: r.Header.Get("Expect"), format: q.Get("format")}
	defer func() {
		d.mu.Lock()
		d.uploads = append(d.uploads, ui)
		d.mu.Unlock()
	}()
	if ui.chunked {
		d.setTask(task, "failure", "", []string{"INTERNAL_ERROR", "Cannot handle chunked VHD"})
		http.Error(w, "chunked", http.StatusNotFound)
		return
	}
	d.mu.Lock()
	v := d.vdis[q.Get("vdi")]
	fail := d.failImport
	d.mu.Unlock()
	if fail != nil {
		io.Copy(io.Discard, r.Body)
		d.setTask(task, "failure", "", fail)
		http.Error(w, "failed", http.StatusInternalServerError)
		return
	}
	if v == nil {
		d.setTask(task, "failure", "", []string{"HANDLE_INVALID", "VDI", q.Get("vdi")})
		http.Error(w, "no vdi", http.StatusNotFound)
		return
	}
	img := make([]byte, v.size)
	cr := &countReader{r: r.Body}
	var s disk.Stream
	var err error
	if ui.format == "vhd" {
		s, err = vhd.Format().OpenStream(r.Context(), cr, nil)
	} else {
		s, err = disk.RawStream(cr, v.size, "upload")
	}
	for err == nil {
		var off int64
		var p []byte
		off, p, err = s.Next(r.Context())
		if err == nil {
			copy(img[off:], p)
		}
	}
	ui.received = cr.n
	if !errors.Is(err, io.EOF) {
		d.setTask(task, "failure", "", []string{"VDI_IO_ERROR", err.Error()})
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	d.mu.Lock()
	v.content = img
	d.mu.Unlock()
	d.setTask(task, "success", "<value>"+q.Get("vdi")+"</value>", nil)
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// vhdBytes writes img as a streamed dynamic VHD.
func vhdBytes(t testing.TB, img disk.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := vhd.Format().Create(t.Context(), disk.PlainTarget(&b), img.Size(), &disk.CreateOptions{Source: img})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), w, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readStream reads a stream into memory, and the runs it returned.
func readStream(ctx context.Context, s disk.Stream) ([]byte, []disk.Extent, error) {
	out := make([]byte, s.Size())
	var runs []disk.Extent
	for {
		off, p, err := s.Next(ctx)
		if errors.Is(err, io.EOF) {
			return out, runs, nil
		}
		if err != nil {
			return nil, nil, err
		}
		copy(out[off:], p)
		if n := len(runs); n > 0 && runs[n-1].End() == off {
			runs[n-1].Len += int64(len(p))
		} else {
			runs = append(runs, disk.Extent{Off: off, Len: int64(len(p)), Kind: disk.Data})
		}
	}
}

func testPatterns() []*disktest.Pattern {
	var out []*disktest.Pattern
	for _, p := range disktest.Patterns(true) {
		if p.Size > 0 && p.Size < 64<<20 {
			out = append(out, p)
		}
	}
	return out
}

func TestExportRawVDI(t *testing.T) {
	for _, pt := range testPatterns() {
		t.Run(pt.Name, func(t *testing.T) {
			d := newDiskFake(t)
			img := disktest.PatternImage{P: pt}
			d.vdis["OpaqueRef:vdi"] = &fakeVDI{size: pt.Size, vhd: vhdBytes(t, img), raw: pt.Bytes()}
			c := d.client(t)
			for _, format := range []string{FormatVHD, FormatRaw} {
				s, err := c.ExportRawVDI(t.Context(), "OpaqueRef:vdi", format, "")
				if err != nil {
					t.Fatal(err)
				}
				got, runs, err := readStream(t.Context(), s)
				s.Close()
				if err != nil {
					t.Fatalf("%s: %v", format, err)
				}
				if !bytes.Equal(got, pt.Bytes()) {
					t.Fatalf("%s: content differs", format)
				}
				if format == FormatVHD {
					// Only allocated 2 MiB blocks travel.
					var n int64
					for _, r := range runs {
						n += r.Len
					}
					if n > int64(len(pt.Data))*4<<20+pt.DataBytes() {
						t.Errorf("%d bytes of runs for %d bytes of data", n, pt.DataBytes())
					}
				}
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.tasks) != 0 {
				t.Errorf("tasks left: %v", d.tasks)
			}
		})
	}
}

// TestExportDelta: with a base, xapi sends a differencing VHD of the
// changed blocks; the stream's runs are exactly the changes.
func TestExportDelta(t *testing.T) {
	ctx := t.Context()
	const size = 13<<20 + 512
	base := &disktest.Pattern{Name: "base", Size: size, Seed: 5, Data: []disk.Extent{{Off: 0, Len: 5 << 20}, {Off: 8 << 20, Len: 5<<20 + 512}}}
	changes := &disktest.Pattern{Name: "changes", Size: size, Seed: 6, Data: []disk.Extent{{Off: 64 << 10, Len: 128 << 10}, {Off: 6 << 20, Len: 1 << 20}, {Off: size - 4096, Len: 4096}}}
	dir := t.TempDir()
	reg := disk.NewRegistry(vhd.Format())
	bpath := filepath.Join(dir, "base.vhd")
	bw, err := reg.Create(ctx, bpath, "vhd", size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(ctx, bw, disktest.PatternImage{P: base}, nil); err != nil {
		t.Fatal(err)
	}
	if err := bw.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	bimg, err := reg.Open(ctx, bpath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bimg.Close()
	var diff bytes.Buffer
	cw, err := vhd.Format().Create(ctx, disk.PlainTarget(&diff), size, &disk.CreateOptions{Backing: bimg, BackingFile: "base.vhd", Source: disktest.PatternImage{P: changes}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range changes.Data {
		b := make([]byte, e.Len)
		changes.Fill(e.Off, b)
		if _, err := cw.WriteAt(b, e.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	d := newDiskFake(t)
	d.vdis["OpaqueRef:snap2"] = &fakeVDI{size: size, diffs: map[string][]byte{"OpaqueRef:snap1": diff.Bytes()}}
	d.vdis["OpaqueRef:snap1"] = &fakeVDI{size: size}
	c := d.client(t)
	s, err := c.ExportRawVDI(ctx, "OpaqueRef:snap2", FormatVHD, "OpaqueRef:snap1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, runs, err := readStream(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(runs) != fmt.Sprint(changes.Data) {
		t.Errorf("runs %v, want %v", runs, changes.Data)
	}
	if !bytes.Equal(got, changes.Bytes()) {
		t.Error("changed data differs")
	}

	// A base of another size is refused before any transfer.
	d.vdis["OpaqueRef:other"] = &fakeVDI{size: size + 512}
	if _, err := c.ExportRawVDI(ctx, "OpaqueRef:snap2", FormatVHD, "OpaqueRef:other"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("base of another size: %v", err)
	}
}

// TestDiffAsDynamic: the adaptor passes other streams through byte for
// byte, whatever the read sizes.
func TestDiffAsDynamic(t *testing.T) {
	pt := testPatterns()[1]
	orig := vhdBytes(t, disktest.PatternImage{P: pt})
	for _, chunk := range []int{1, 7, 511, 512, 513, 4096, 1 << 20} {
		r := &diffAsDynamic{r: &chunkReader{b: orig, n: chunk}}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, orig) {
			t.Fatalf("chunk %d: %v, %d bytes of %d", chunk, err, len(got), len(orig))
		}
	}
	for _, short := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("y"), 600)} {
		got, err := io.ReadAll(&diffAsDynamic{r: bytes.NewReader(short)})
		if err != nil || !bytes.Equal(got, short) {
			t.Fatalf("%d bytes: %v", len(short), err)
		}
	}
}

type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[n:]
	return n, nil
}

func TestExportErrors(t *testing.T) {
	pt := testPatterns()[2]
	d := newDiskFake(t)
	d.vdis["OpaqueRef:vdi"] = &fakeVDI{size: pt.Size, vhd: vhdBytes(t, disktest.PatternImage{P: pt}), raw: pt.Bytes()}
	d.vdis["OpaqueRef:short"] = &fakeVDI{size: pt.Size + 1<<20, raw: pt.Bytes()}
	d.vdis["OpaqueRef:long"] = &fakeVDI{size: pt.Size - 512, raw: pt.Bytes()}
	c := d.client(t)
	ctx := t.Context()
	readAll := func(vdi VDIRef, format string) error {
		s, err := c.ExportRawVDI(ctx, vdi, format, "")
		if err != nil {
			return err
		}
		defer s.Close()
		_, _, err = readStream(ctx, s)
		return err
	}
	if err := readAll("OpaqueRef:missing", FormatVHD); !errs.Is(err, errs.NotFound) {
		t.Errorf("unknown VDI: %v", err)
	}
	if err := readAll("OpaqueRef:vdi", "qcow2"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("unknown format: %v", err)
	}
	if err := readAll("OpaqueRef:short", FormatRaw); !errs.Is(err, errs.Unavailable) {
		t.Errorf("raw body shorter than the VDI: %v", err)
	}
	if err := readAll("OpaqueRef:long", FormatRaw); !errs.Is(err, errs.Corrupt) {
		t.Errorf("raw body longer than the VDI: %v", err)
	}
	for _, format := range []string{FormatVHD, FormatRaw} {
		d.cut.Store(300 << 10)
		err := readAll("OpaqueRef:vdi", format)
		if !errs.Is(err, errs.Unavailable) || strings.Contains(err.Error(), fakeSession) {
			t.Errorf("%s cut mid-transfer: %v", format, err)
		}
		d.cut.Store(0)
		// A retry gives the whole disk.
		if err := readAll("OpaqueRef:vdi", format); err != nil {
			t.Errorf("%s retry: %v", format, err)
		}
	}
	// The VHD of a VDI of another size.
	d.vdis["OpaqueRef:resized"] = &fakeVDI{size: pt.Size * 2, vhd: d.vdis["OpaqueRef:vdi"].vhd}
	if err := readAll("OpaqueRef:resized", FormatVHD); !errs.Is(err, errs.Corrupt) {
		t.Errorf("VHD of the wrong size: %v", err)
	}
}

func TestImportRawVDI(t *testing.T) {
	for _, pt := range testPatterns() {
		t.Run(pt.Name, func(t *testing.T) {
			d := newDiskFake(t)
			c := d.client(t)
			img := disktest.PatternImage{P: pt}
			for _, tc := range []struct {
				format string
				src    Source
			}{
				{FormatVHD, img},
				{FormatRaw, img},
				{FormatRaw, rawStream(t, pt)},
			} {
				d.vdis["OpaqueRef:vdi"] = &fakeVDI{size: pt.Size}
				var ctr progress.Counter
				if err := c.ImportRawVDI(t.Context(), "OpaqueRef:vdi", tc.format, tc.src, &ctr); err != nil {
					t.Fatalf("%s %T: %v", tc.format, tc.src, err)
				}
				if !bytes.Equal(d.vdis["OpaqueRef:vdi"].content, pt.Bytes()) {
					t.Fatalf("%s %T: content differs", tc.format, tc.src)
				}
				if s := ctr.Snapshot(); s.Total != pt.Size || s.Done != pt.Size {
					t.Errorf("%s %T: progress %+v", tc.format, tc.src, s)
				}
				u := d.uploads[len(d.uploads)-1]
				if u.chunked || u.length <= 0 || u.length != u.received {
					t.Errorf("%s: upload %+v", tc.format, u)
				}
				if tc.format == FormatVHD {
					// Only the 2 MiB blocks holding data travel.
					blocks := map[int64]bool{}
					for _, e := range pt.Data {
						for b := e.Off >> 21; b <= (e.End()-1)>>21; b++ {
							blocks[b] = true
						}
					}
					if max := int64(len(blocks))*(2<<20+4096) + 64<<10 + pt.Size>>21*4; u.length > max {
						t.Errorf("vhd upload of %d bytes for %d blocks of data", u.length, len(blocks))
					}
				}
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.tasks) != 0 {
				t.Errorf("tasks left: %v", d.tasks)
			}
		})
	}
}

func rawStream(t testing.TB, pt *disktest.Pattern) disk.Stream {
	s, err := disk.RawStream(bytes.NewReader(pt.Bytes()), pt.Size, pt.Name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestImportErrors(t *testing.T) {
	pt := testPatterns()[2]
	img := disktest.PatternImage{P: pt}
	d := newDiskFake(t)
	c := d.client(t)
	ctx := t.Context()
	d.vdis["OpaqueRef:small"] = &fakeVDI{size: pt.Size - 512}
	if err := c.ImportRawVDI(ctx, "OpaqueRef:small", FormatVHD, img, nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("source larger than the VDI: %v", err)
	}
	if err := c.ImportRawVDI(ctx, "OpaqueRef:missing", FormatRaw, img, nil); !errs.Is(err, errs.NotFound) {
		t.Errorf("unknown VDI: %v", err)
	}
	d.vdis["OpaqueRef:vdi"] = &fakeVDI{size: pt.Size}
	if err := c.ImportRawVDI(ctx, "OpaqueRef:vdi", FormatVHD, rawStream(t, pt), nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("vhd from a stream: %v", err)
	}
	if err := c.ImportRawVDI(ctx, "OpaqueRef:vdi", "tar", img, nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("bad format: %v", err)
	}
	// xapi's reason, from the task, is reported.
	d.failImport = []string{"SR_FULL", "100", "10"}
	err := c.ImportRawVDI(ctx, "OpaqueRef:vdi", FormatRaw, img, nil)
	if !HasCode(err, "SR_FULL") || !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("failed task: %v", err)
	}
	d.failImport = nil
	// Cancelling stops the upload and cancels the task.
	cctx, cancel := context.WithCancel(ctx)
	slow := &cancelAfter{Image: img, n: 2, cancel: cancel}
	err = c.ImportRawVDI(cctx, "OpaqueRef:vdi", FormatRaw, slow, nil)
	if !errs.Is(err, errs.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if len(d.callsTo("task.cancel")) == 0 {
		t.Error("task not cancelled")
	}
}

// cancelAfter cancels its context after n reads.
type cancelAfter struct {
	disk.Image
	n      int32
	cancel func()
	reads  atomic.Int32
}

func (c *cancelAfter) ReadAt(p []byte, off int64) (int, error) {
	if c.reads.Add(1) == c.n {
		c.cancel()
	}
	return c.Image.ReadAt(p, off)
}

// TestTransferRedirect: a host that cannot reach the SR answers 302 with
// the one that can; both GET and PUT follow, the PUT with its body.
func TestTransferRedirect(t *testing.T) {
	pt := testPatterns()[2]
	img := disktest.PatternImage{P: pt}
	d := newDiskFake(t)
	d.vdis["OpaqueRef:vdi"] = &fakeVDI{size: pt.Size, vhd: vhdBytes(t, img)}
	var redirected atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/jsonrpc" {
			d.fake.ServeHTTP(w, r)
			return
		}
		redirected.Add(1)
		http.Redirect(w, r, d.srv.URL+r.URL.RequestURI(), http.StatusFound)
	}))
	defer front.Close()
	c, err := Dial(t.Context(), front.URL, &Options{User: "root", Password: "pw", PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.ExportRawVDI(t.Context(), "OpaqueRef:vdi", FormatVHD, "")
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := readStream(t.Context(), s)
	s.Close()
	if err != nil || !bytes.Equal(got, pt.Bytes()) {
		t.Fatalf("export through a redirect: %v", err)
	}
	for _, src := range []Source{img, rawStream(t, pt)} {
		d.vdis["OpaqueRef:vdi"].content = nil
		format := FormatVHD
		if _, ok := src.(disk.Stream); ok {
			format = FormatRaw
		}
		if err := c.ImportRawVDI(t.Context(), "OpaqueRef:vdi", format, src, nil); err != nil {
			t.Fatalf("import %T through a redirect: %v", src, err)
		}
		if !bytes.Equal(d.vdis["OpaqueRef:vdi"].content, pt.Bytes()) {
			t.Fatalf("import %T through a redirect: content differs", src)
		}
	}
	if redirected.Load() != 3 {
		t.Errorf("%d redirects", redirected.Load())
	}
}

func TestWaitTask(t *testing.T) {
	d := newDiskFake(t)
	c := d.client(t)
	ctx := t.Context()
	newTask := func() TaskRef {
		ref, err := c.Task().Create(ctx, "t", "")
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	// Polling (the fake has no event.from): progress, then success.
	task := newTask()
	var ctr progress.Counter
	polls := atomic.Int32{}
	d.handle("task.get_record", func(p []any) (any, *Error) {
		n := polls.Add(1)
		d.mu.Lock()
		defer d.mu.Unlock()
		r := d.tasks[p[1].(string)]
		switch {
		case n < 3:
			r["progress"] = 0.25 * float64(n)
		default:
			r["status"], r["progress"], r["result"] = "success", 1.0, "<value>OpaqueRef:vm</value>"
		}
		return r, nil
	})
	res, err := c.WaitTask(ctx, task, &ctr)
	if err != nil || ResultRefs(res)[0] != "OpaqueRef:vm" {
		t.Fatalf("%q %v", res, err)
	}
	if s := ctr.Snapshot(); s.Total != TaskProgressUnits || s.Done != TaskProgressUnits {
		t.Errorf("progress %+v", s)
	}
	// Failure carries error_info.
	d.handle("task.get_record", func(p []any) (any, *Error) {
		return map[string]any{"name_label": "VM.start", "status": "failure", "error_info": []string{"VM_BAD_POWER_STATE", "OpaqueRef:vm", "halted", "running"}}, nil
	})
	_, err = c.WaitTask(ctx, newTask(), nil)
	if !HasCode(err, "VM_BAD_POWER_STATE") || !errs.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "VM.start") {
		t.Errorf("failure: %v", err)
	}
	// Cancelled by the server.
	d.handle("task.get_record", func(p []any) (any, *Error) {
		return map[string]any{"status": "cancelled"}, nil
	})
	if _, err = c.WaitTask(ctx, newTask(), nil); !errs.Is(err, errs.Canceled) {
		t.Errorf("cancelled task: %v", err)
	}
	// Cancelled by the caller: task.cancel is called.
	d.handle("task.get_record", func(p []any) (any, *Error) {
		return map[string]any{"status": "pending"}, nil
	})
	cctx, cancel := context.WithCancel(ctx)
	polls.Store(0)
	d.handle("task.get_record", func(p []any) (any, *Error) {
		if polls.Add(1) == 2 {
			cancel()
		}
		return map[string]any{"status": "pending"}, nil
	})
	task = newTask()
	if _, err = c.WaitTask(cctx, task, nil); !errs.Is(err, errs.Canceled) {
		t.Errorf("caller cancelled: %v", err)
	}
	if cs := d.callsTo("task.cancel"); len(cs) == 0 || cs[len(cs)-1].Params[1] != string(task) {
		t.Errorf("task.cancel calls %v", cs)
	}

	// event.from on the task, when the server has it.
	var froms atomic.Int32
	d.handle("event.from", func(p []any) (any, *Error) {
		classes := p[1].([]any)
		if len(classes) != 1 || classes[0] != "task/OpaqueRef:ev" {
			return nil, &Error{Code: "INVALID_VALUE", Params: []string{"classes"}}
		}
		n := froms.Add(1)
		status := "pending"
		if n == 3 {
			status = "success"
		}
		return map[string]any{"token": strconv.Itoa(int(n)), "valid_ref_counts": map[string]any{}, "events": []any{
			map[string]any{"id": n, "class": "task", "operation": "mod", "ref": "OpaqueRef:ev",
				"snapshot": map[string]any{"status": status, "progress": 0.3 * float64(n), "result": "done"}},
		}}, nil
	})
	d.handle("task.get_record", func(p []any) (any, *Error) {
		return nil, &Error{Code: "HANDLE_INVALID", Params: []string{"task"}}
	})
	if res, err := c.WaitTask(ctx, "OpaqueRef:ev", nil); err != nil || res != "done" || froms.Load() != 3 {
		t.Errorf("via events: %q %v after %d calls", res, err, froms.Load())
	}
	if cs := d.callsTo("event.from"); cs[len(cs)-2].Params[2] != "1" {
		t.Errorf("token not passed on: %v", cs[1].Params)
	}
}

// TestExportImportVM covers the whole-VM handlers, including an upload of
// unknown length (ended by closing the write side, as xapi expects).
func TestExportImportVM(t *testing.T) {
	xva := bytes.Repeat([]byte("xva-archive-bytes"), 100_000)
	d := newDiskFake(t)
	d.handle("VM.get_uuid", func(p []any) (any, *Error) { return "uuid-1", nil })
	d.handle("VM.get_record", func(p []any) (any, *Error) {
		return map[string]any{"is_a_snapshot": p[1] == "OpaqueRef:snap", "is_a_template": false}, nil
	})
	d.handlePath("/export", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("uuid") != "uuid-1" || r.URL.Query().Get("session_id") != fakeSession {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		w.Write(xva)
		d.setTask(r.URL.Query().Get("task_id"), "success", "", nil)
	})
	var got []byte
	var gotLen int64
	d.handlePath("/import", func(w http.ResponseWriter, r *http.Request) {
		task := r.URL.Query().Get("task_id")
		gotLen = r.ContentLength
		if r.ContentLength > 0 {
			got, _ = io.ReadAll(r.Body)
			d.setTask(task, "success", "<value><array><data><value>OpaqueRef:snap</value><value>OpaqueRef:vm</value></data></array></value>", nil)
			return
		}
		// No length: read until the client closes its side, as xapi does.
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		if r.Header.Get("Expect") == "100-continue" {
			io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		got, _ = io.ReadAll(bw)
		d.setTask(task, "success", "<value><array><data><value>OpaqueRef:vm</value></data></array></value>", nil)
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
	})
	c := d.client(t)
	var out bytes.Buffer
	n, err := c.ExportVM(t.Context(), "OpaqueRef:vm", &out)
	if err != nil || n != int64(len(xva)) || !bytes.Equal(out.Bytes(), xva) {
		t.Fatalf("export: %d %v", n, err)
	}
	vm, err := c.ImportVM(t.Context(), "OpaqueRef:sr", bytes.NewReader(xva), nil)
	if err != nil || vm != "OpaqueRef:vm" || !bytes.Equal(got, xva) || gotLen != int64(len(xva)) {
		t.Fatalf("import with a length: %q %v (%d bytes, length %d)", vm, err, len(got), gotLen)
	}
	got = nil
	vm, err = c.ImportVM(t.Context(), "OpaqueRef:sr", io.MultiReader(bytes.NewReader(xva)), nil)
	if err != nil || vm != "OpaqueRef:vm" || !bytes.Equal(got, xva) {
		t.Fatalf("import without a length: %q %v (%d bytes)", vm, err, len(got))
	}
}
