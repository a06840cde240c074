package xenlab

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/disk/xva"
)

// vhdStream writes img as a streamed dynamic VHD.
func vhdStream(t *testing.T, img disk.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := vhd.Format().Create(t.Context(), disk.PlainTarget(&buf), img.Size(), &disk.CreateOptions{Source: img})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), w, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// openBytes opens exported raw or VHD bytes as an Image.
func openBytes(t *testing.T, format string, b []byte, backing func(ctx context.Context, path, format string) (disk.Image, error)) disk.Image {
	t.Helper()
	f := disk.BytesFile("export."+format, b)
	var img disk.Image
	var err error
	if format == "raw" {
		p := filepath.Join(t.TempDir(), "x.raw")
		os.WriteFile(p, b, 0o644)
		reg := newSchemaRegistry()
		img, err = reg.Open(t.Context(), p, &disk.RegistryOpenOptions{Format: "raw"})
	} else {
		img, err = vhd.Format().Open(t.Context(), f, &disk.OpenOptions{OpenBacking: backing})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func compareImages(t *testing.T, what string, a, b disk.Image) {
	t.Helper()
	res, err := disk.Compare(t.Context(), a, b, &disk.CompareOptions{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Identical {
		t.Fatalf("%s: differ at offset %d (sizes %d, %d)", what, res.Offset, res.SizeA, res.SizeB)
	}
}

func TestDiskRoundTrip(t *testing.T) {
	l := newLab(t, "")
	pats := []*disktest.Pattern{
		{Name: "small", Size: 3 << 20, Seed: 5, Data: []disk.Extent{{Off: 0, Len: 4096}, {Off: 1<<20 + 512, Len: 70000}, {Off: 3<<20 - 4096, Len: 4096}}},
		{Name: "mixed", Size: 9 << 20, Seed: 6, Data: []disk.Extent{{Off: 64 << 10, Len: 3 << 20}, {Off: 5 << 20, Len: 1 << 20}}},
		{Name: "empty", Size: 2 << 20},
	}
	for _, pt := range pats {
		for _, in := range []string{"raw", "vhd"} {
			t.Run(pt.Name+"/"+in, func(t *testing.T) {
				c := *l
				c.t = t
				src := disktest.PatternImage{P: pt}
				vdi := c.mkVDI(pt.Name, pt.Size)
				body := pt.Bytes()
				if in == "vhd" {
					body = vhdStream(t, src)
				}
				resp, b := c.put("/import_raw_vdi", url.Values{"vdi": {vdi}, "format": {in}}, body)
				if resp.StatusCode != 200 {
					t.Fatalf("import: %s %s", resp.Status, b)
				}
				if resp.Header.Get("Task-Id") == "" {
					t.Error("no Task-Id header")
				}
				for _, out := range []string{"raw", "vhd"} {
					resp, b := c.get("/export_raw_vdi", url.Values{"vdi": {vdi}, "format": {out}})
					if resp.StatusCode != 200 {
						t.Fatalf("export %s: %s", out, resp.Status)
					}
					compareImages(t, in+" -> "+out, src, openBytes(t, out, b, nil))
					if out == "vhd" {
						qemuCompare(t, pt, b)
					}
				}
			})
		}
	}
}

// qemuCompare checks an exported VHD against the pattern with qemu-img,
// when it is installed.
func qemuCompare(t *testing.T, pt *disktest.Pattern, vhdBytes []byte) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return
	}
	dir := t.TempDir()
	rawPath, vhdPath := filepath.Join(dir, "p.raw"), filepath.Join(dir, "e.vhd")
	disktest.WriteRaw(t, pt, rawPath)
	if err := os.WriteFile(vhdPath, vhdBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	disktest.Qemu(t, "compare", "-f", "raw", "-F", "vpc", rawPath, vhdPath)
}

// zeroParent stands for the base of a delta: the base's identity, no
// data, so that the delta's own sectors show as its extents.
type zeroParent struct{ disk.Image }

func (z zeroParent) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off+int64(len(p)) > z.Size() {
		return int(max(z.Size()-off, 0)), io.EOF
	}
	return len(p), nil
}

func (z zeroParent) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return parentView(z).Extents(ctx, off, n)
}

func TestDeltaAndCBT(t *testing.T) {
	l := newLab(t, "")
	const size = 4 << 20
	base := pattern(size, 1)
	vdi := l.mkVDI("cbt", size)
	l.importRaw(vdi, base)
	l.mustCall(nil, "VDI.enable_cbt", vdi)
	var s1 string
	l.mustCall(&s1, "VDI.snapshot", vdi, map[string]any{})
	// the snapshot shares the VDI's file until the VDI is written
	if !l.sameFile(vdi, s1) {
		t.Error("the snapshot does not share the VDI's file")
	}
	var cbt bool
	l.field("VDI", s1, "cbt_enabled", &cbt)
	if !cbt {
		t.Fatal("snapshot of a CBT VDI has cbt_enabled false")
	}

	// change blocks 0 (a byte), 5 (to zeros), 17 and 18 (a run across
	// them), rewrite 30 with the same bytes (no change)
	mod := bytes.Clone(base)
	mod[100] ^= 0xff
	clear(mod[5*cbtBlock : 6*cbtBlock])
	for i := 17*cbtBlock + 1000; i < 18*cbtBlock+5; i++ {
		mod[i] ^= 0x5a
	}
	want := map[int64]bool{0: true, 5: true, 17: true, 18: true}
	l.importRaw(vdi, mod)
	if l.sameFile(vdi, s1) {
		t.Error("the VDI, written, still shares its file with the snapshot")
	}
	if _, got := l.get("/export_raw_vdi", url.Values{"vdi": {s1}, "format": {"raw"}}); !bytes.Equal(got, base) {
		t.Error("the snapshot changed when its VDI was written")
	}
	var s2 string
	l.mustCall(&s2, "VDI.snapshot", vdi, map[string]any{})

	checkBitmap := func(from, to string, want map[int64]bool) {
		t.Helper()
		var b64 string
		l.mustCall(&b64, "VDI.list_changed_blocks", from, to)
		bm, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		if len(bm) != size/cbtBlock/8 {
			t.Fatalf("bitmap of %d bytes, want %d", len(bm), size/cbtBlock/8)
		}
		for i := int64(0); i < size/cbtBlock; i++ {
			if bitmap(bm).has(i) != want[i] {
				t.Errorf("block %d: changed %v, want %v", i, bitmap(bm).has(i), want[i])
			}
		}
	}
	checkBitmap(s1, s2, want)
	checkBitmap(s2, vdi, nil) // nothing since s2
	checkBitmap(s1, vdi, want)

	// a later write shows from s1 and from s2, not between them
	mod2 := bytes.Clone(mod)
	mod2[40*cbtBlock+9] = 0x42
	l.importRaw(vdi, mod2)
	var s3 string
	l.mustCall(&s3, "VDI.snapshot", vdi, map[string]any{})
	checkBitmap(s2, s3, map[int64]bool{40: true})
	both := map[int64]bool{40: true}
	for k := range want {
		both[k] = true
	}
	checkBitmap(s1, s3, both)

	// delta export: a differencing VHD holding exactly the changed blocks
	resp, delta := l.get("/export_raw_vdi", url.Values{"vdi": {s2}, "base": {s1}, "format": {"vhd"}})
	if resp.StatusCode != 200 {
		t.Fatalf("delta export: %s %s", resp.Status, delta)
	}
	s1img, err := l.s.openVHD(t.Context(), l.vdiFile(s1))
	if err != nil {
		t.Fatal(err)
	}
	defer s1img.Close()
	// over the real base it reads as s2
	full := openBytes(t, "vhd", delta, func(ctx context.Context, path, format string) (disk.Image, error) {
		return l.s.openVHD(ctx, l.vdiFile(s1))
	})
	if !strings.HasSuffix(full.Info().BackingFile, ".vhd") {
		t.Errorf("delta names parent %q", full.Info().BackingFile)
	}
	s2img, err := l.s.openVHD(t.Context(), l.vdiFile(s2))
	if err != nil {
		t.Fatal(err)
	}
	defer s2img.Close()
	compareImages(t, "delta over base", s2img, full)
	// over an empty parent its data extents are the changed blocks
	own := openBytes(t, "vhd", delta, func(ctx context.Context, path, format string) (disk.Image, error) {
		img, err := l.s.openVHD(ctx, l.vdiFile(s1))
		if err != nil {
			return nil, err
		}
		return zeroParent{img}, nil
	})
	got := map[int64]bool{}
	for e, err := range own.Extents(t.Context(), 0, own.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			if e.Off%cbtBlock != 0 || e.Len%cbtBlock != 0 {
				t.Errorf("delta extent %+v not on 64 KiB blocks", e)
			}
			for b := e.Off / cbtBlock; b < e.End()/cbtBlock; b++ {
				got[b] = true
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delta holds blocks %v, want %v", got, want)
	}

	// data_destroy keeps the metadata
	l.mustCall(nil, "VDI.data_destroy", s1)
	var typ string
	l.field("VDI", s1, "type", &typ)
	if typ != "cbt_metadata" {
		t.Errorf("type after data_destroy %q", typ)
	}
	checkBitmap(s1, s2, want)
	if _, err := os.Stat(l.vdiFile(s1)); !os.IsNotExist(err) {
		t.Errorf("data of a data_destroyed VDI still there: %v", err)
	}
	resp, _ = l.get("/export_raw_vdi", url.Values{"vdi": {s2}, "base": {s1}, "format": {"vhd"}})
	if resp.StatusCode == 200 {
		t.Error("delta over a data_destroyed base served")
	}

	// errors
	other := l.mkVDI("other", size)
	l.wantErr(l.call("VDI.list_changed_blocks", other, s2), errVDINoCBTMetadata, other)
	l.mustCall(nil, "VDI.enable_cbt", other)
	l.wantErr(l.call("VDI.list_changed_blocks", other, s2), errSRBackendFailureCBT)
	l.wantErr(l.call("VDI.list_changed_blocks", s3, s2), errSRBackendFailureCBT)
	l.wantErr(l.call("VDI.data_destroy", vdi), errOperationNotAllowed)
	l.wantErr(l.call("VDI.snapshot", s1, map[string]any{}), errVDIIncompatibleType, s1, "cbt_metadata")
	// disable: snapshots keep their metadata, the VDI starts afresh
	l.mustCall(nil, "VDI.disable_cbt", vdi)
	l.wantErr(l.call("VDI.list_changed_blocks", s2, vdi), errVDINoCBTMetadata, vdi)
	checkBitmap(s2, s3, map[int64]bool{40: true})
}

func TestTruncatedImports(t *testing.T) {
	l := newLab(t, "")
	const size = 2 << 20
	orig := pattern(size, 9)
	vdi := l.mkVDI("keep", size)
	l.importRaw(vdi, orig)
	before := l.srFiles()

	// send a Content-Length and then less data
	truncated := func(t *testing.T, format string, body []byte, length int) (int, string) {
		t.Helper()
		var task string
		l.mustCall(&task, "task.create", "import", "")
		u, _ := url.Parse(l.httpURL("/import_raw_vdi", url.Values{"vdi": {vdi}, "format": {format}, "task_id": {task}}))
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", u.RequestURI(), u.Host, length)
		conn.Write(body)
		conn.(*net.TCPConn).CloseWrite()
		resp, err := http.ReadResponse(bufioReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, task
	}
	tests := []struct {
		name   string
		format string
		body   []byte
		length int
	}{
		{"raw short", "raw", pattern(size, 10)[:size/2], size},
		{"vhd cut", "vhd", func() []byte {
			b := vhdStream(t, disktest.PatternImage{P: disktest.MakePattern("v", size, 0.6, 3)})
			return b[:len(b)*2/3]
		}(), -1},
		{"not a vhd", "vhd", pattern(size, 11), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.length
			if n < 0 {
				n = len(tt.body)
			}
			status, task := truncated(t, tt.format, tt.body, n)
			if status == 200 {
				t.Fatalf("truncated import answered 200")
			}
			rec := l.waitTask(task)
			if rec["status"] != "failure" || len(rec["error_info"].([]any)) == 0 {
				t.Errorf("task %v %v", rec["status"], rec["error_info"])
			}
			if got := l.exportRaw(vdi); !bytes.Equal(got, orig) {
				t.Error("the VDI changed after a failed import")
			}
			if after := l.srFiles(); !slices.Equal(before, after) {
				t.Errorf("SR files %v, before %v", after, before)
			}
		})
	}
	t.Run("too big", func(t *testing.T) {
		resp, _ := l.put("/import_raw_vdi", url.Values{"vdi": {vdi}, "format": {"raw"}}, make([]byte, size+512))
		if resp.StatusCode != 400 {
			t.Errorf("oversized raw import: %s", resp.Status)
		}
	})
	t.Run("auth", func(t *testing.T) {
		resp, _ := l.put("/import_raw_vdi", url.Values{"vdi": {vdi}, "session_id": {"OpaqueRef:bad"}}, orig)
		if resp.StatusCode != 401 {
			t.Errorf("bad session: %s", resp.Status)
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, l.hs.URL+"/export_raw_vdi?format=raw&vdi="+vdi, nil)
		req.SetBasicAuth(testUser, testPW)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || !bytes.Equal(b, orig) {
			t.Errorf("basic auth export: %s, %d bytes", r.Status, len(b))
		}
	})
	t.Run("chunked refused", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, l.httpURL("/import_raw_vdi", url.Values{"vdi": {vdi}}), io.NopCloser(bytes.NewReader(orig)))
		req.ContentLength = -1
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 404 {
			t.Errorf("chunked import: %s, want 404 as xapi", r.Status)
		}
	})
}

func TestXVA(t *testing.T) {
	l := newLab(t, "")
	vm := l.mkVM("xva-src")
	d0, d1 := pattern(3<<20, 21), pattern(1<<20+512*3, 22)
	v0, v1 := l.mkVDI("root", int64(len(d0))), l.mkVDI("data", int64(len(d1)))
	l.importRaw(v0, d0)
	l.importRaw(v1, d1)
	l.attach(vm, v0, "0", true)
	l.attach(vm, v1, "1", false)
	var vmUUID string
	l.field("VM", vm, "uuid", &vmUUID)

	for _, comp := range []string{"", "true", "zstd"} {
		t.Run("export "+comp, func(t *testing.T) {
			resp, b := l.get("/export", url.Values{"uuid": {vmUUID}, "use_compression": {comp}})
			if resp.StatusCode != 200 {
				t.Fatalf("export: %s", resp.Status)
			}
			ar, err := xva.Format().OpenStream(t.Context(), bytes.NewReader(b), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ar.Close()
			spec := ar.VM()
			if spec.Name != "xva-src" || len(spec.Disks) != 2 || !spec.Disks[0].Bootable || spec.MemoryBytes != 64<<20 {
				t.Fatalf("spec %+v", spec)
			}
			for {
				i, st, err := ar.NextDisk(t.Context())
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				want := [][]byte{d0, d1}[i]
				got := make([]byte, len(want))
				for {
					off, p, err := st.Next(t.Context())
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					copy(got[off:], p)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("disk %d differs", i)
				}
			}
		})
	}

	// an archive written by the xva package imports as a VM
	spec := core.VMSpec{Name: "from-xva", CPUs: 2, MemoryBytes: 128 << 20, Disks: []core.DiskSpec{{Name: "a", Size: 2 << 20, Bootable: true}, {Name: "b", Size: 1 << 20, Position: 1}}, NICs: []core.NICSpec{{MAC: "aa:bb:cc:dd:ee:01", Network: "lab-net"}}}
	pats := []*disktest.Pattern{disktest.MakePattern("a", 2<<20, 0.5, 7), disktest.MakePattern("b", 1<<20, 0.9, 8)}
	var archive bytes.Buffer
	aw, err := xva.Format().Create(t.Context(), disk.PlainTarget(&archive), spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range pats {
		dw, err := aw.NextDisk(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := disk.Convert(t.Context(), dw, disktest.PatternImage{P: pt}, nil); err != nil {
			t.Fatal(err)
		}
		if err := dw.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := aw.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(archive.Bytes())
	zw.Close()
	for name, body := range map[string][]byte{"plain": archive.Bytes(), "gzip": gz.Bytes()} {
		t.Run("import "+name, func(t *testing.T) {
			resp, b := l.put("/import", url.Values{"sr_id": {l.defaultSR()}}, body)
			if resp.StatusCode != 200 {
				t.Fatalf("import: %s %s", resp.Status, b)
			}
			var task string
			task = resp.Header.Get("Task-Id")
			rec := l.waitTask(task)
			res := rec["result"].(string)
			ref := strings.TrimSuffix(strings.TrimPrefix(res, "<value><array><data><value>"), "</value></data></array></value>")
			var vmrec map[string]any
			l.mustCall(&vmrec, "VM.get_record", ref)
			if vmrec["name_label"] != "from-xva" || vmrec["VCPUs_max"] != 2.0 || len(vmrec["VBDs"].([]any)) != 2 || len(vmrec["VIFs"].([]any)) != 1 {
				t.Fatalf("imported VM %v", vmrec)
			}
			for _, vbd := range vmrec["VBDs"].([]any) {
				var vdi, ud string
				l.field("VBD", vbd.(string), "VDI", &vdi)
				l.field("VBD", vbd.(string), "userdevice", &ud)
				pt := pats[map[string]int{"0": 0, "1": 1}[ud]]
				compareImages(t, "imported disk "+ud, disktest.PatternImage{P: pt}, openBytes(t, "raw", l.exportRaw(vdi), nil))
			}
		})
	}
	t.Run("import truncated", func(t *testing.T) {
		var vms, vdis []string
		l.mustCall(&vms, "VM.get_all")
		l.mustCall(&vdis, "VDI.get_all")
		files := l.srFiles()
		resp, _ := l.put("/import", url.Values{"sr_id": {l.defaultSR()}}, archive.Bytes()[:archive.Len()*3/4])
		if resp.StatusCode == 200 {
			t.Fatal("truncated XVA imported")
		}
		var vms2, vdis2 []string
		l.mustCall(&vms2, "VM.get_all")
		l.mustCall(&vdis2, "VDI.get_all")
		if len(vms2) != len(vms) || len(vdis2) != len(vdis) || !slices.Equal(files, l.srFiles()) {
			t.Errorf("a failed import left objects: VMs %d -> %d, VDIs %d -> %d, files %v -> %v", len(vms), len(vms2), len(vdis), len(vdis2), files, l.srFiles())
		}
	})
}
