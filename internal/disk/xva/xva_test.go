package xva

import (
	"archive/tar"
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
)

func mixedPattern() *disktest.Pattern {
	return &disktest.Pattern{Name: "mixed", Size: 37 * MiB, Seed: 2, Data: synth.Mixed(37*MiB, 2)}
}

// sparsePattern has an unaligned tail and all-zero chunks in the middle.
func sparsePattern() *disktest.Pattern {
	return &disktest.Pattern{Name: "sparse", Size: 9*MiB + 1536, Seed: 5, Data: []disk.Extent{
		{Off: 0, Len: 4096}, {Off: 5*MiB + 100*512, Len: 8192}, {Off: 9*MiB + 512, Len: 1024},
	}}
}

func compressed(t testing.TB, b []byte, c compression) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch c {
	case gzipped:
		z, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		if err != nil {
			t.Fatal(err)
		}
		w = z
	case zstded:
		z, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			t.Fatal(err)
		}
		w = z
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	ctx := t.Context()
	pats := []*disktest.Pattern{mixedPattern(), sparsePattern()}
	vm := vmFor("round <trip> & co", pats...)
	vm.Description = "two disks, two NICs"
	vm.Firmware = core.UEFI
	vm.OSType = "linux"
	vm.CPUs = 3
	vm.MemoryBytes = 3 << 30
	vm.Disks[1].Position = 2
	vm.NICs = []core.NICSpec{
		{Network: "backend", MAC: "02:00:00:aa:bb:01"},
		{MAC: "02:00:00:aa:bb:02"},
	}
	want := vm
	want.NICs = []core.NICSpec{
		{Network: "backend", MAC: "02:00:00:aa:bb:01"},
		{Network: defaultNetwork, MAC: "02:00:00:aa:bb:02"},
	}
	for _, tc := range []struct {
		name string
		opts map[string]string
		kind string
	}{
		{"xxhash", nil, "xxhash"},
		{"sha1", map[string]string{"checksum": "sha1"}, "sha1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := writeXVA(t, vm, pats, tc.opts)
			f := disk.BytesFile("rt.xva", b)
			if !Format().Probe(f) {
				t.Fatal("probe does not recognise an archive it wrote")
			}
			r := openBytes(t, b)
			if got := r.VM(); !reflect.DeepEqual(got, want) {
				t.Fatalf("VM:\n got %+v\nwant %+v", got, want)
			}
			for i, pt := range pats {
				img, err := r.OpenDisk(ctx, i)
				if err != nil {
					t.Fatal(err)
				}
				disktest.VerifyImage(t, img, pt)
			}
			if err := r.Verify(ctx); err != nil {
				t.Fatalf("verify: %v", err)
			}
			info := r.Info()
			if info.Format != "xva" || len(info.Disks) != 2 || info.Extra["checksum"] != tc.kind {
				t.Fatalf("info %+v", info)
			}
			for i, d := range info.Disks {
				if d.Index != i || d.Name != pats[i].Name || d.Format != "raw" || d.VirtualSize != pats[i].Size ||
					!strings.HasPrefix(d.Member, "Ref:") || d.StoredSize <= 0 || d.StoredSize > d.VirtualSize {
					t.Fatalf("disk info %+v", d)
				}
			}
			if v := info.Extra["version"].(map[string]any); v["export_vsn"] != int64(2) || v["hostname"] != "ferry" {
				t.Fatalf("version %+v", v)
			}

			streams := []compression{plain, gzipped, zstded}
			if tc.kind == "sha1" {
				streams = streams[:1] // the checksum does not change how streams decompress
			}
			for _, c := range streams {
				t.Run("stream-"+c.String(), func(t *testing.T) {
					src := b
					if c != plain {
						src = compressed(t, b, c)
						if !Format().Probe(disk.BytesFile("c.xva", src)) {
							t.Fatal("probe does not recognise a compressed archive")
						}
						_, err := Format().Open(ctx, disk.BytesFile("c.xva", src), nil)
						wantErr(t, err, errs.Unimplemented, "c.xva", "stream")
					}
					s, err := Format().OpenStream(ctx, onlyReader{bytes.NewReader(src)}, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer s.Close()
					if got := s.VM(); !reflect.DeepEqual(got, want) {
						t.Fatalf("stream VM %+v", got)
					}
					for i := range pats {
						idx, ds, err := s.NextDisk(ctx)
						if err != nil {
							t.Fatal(err)
						}
						if idx != i {
							t.Fatalf("disk index %d, want %d", idx, i)
						}
						verifyStream(t, ds, pats[i])
					}
					if _, _, err := s.NextDisk(ctx); !errors.Is(err, io.EOF) {
						t.Fatalf("after the last disk: %v", err)
					}
				})
			}

			got := importerModel(t, b, []int64{pats[0].Size, pats[1].Size})
			for i, pt := range pats {
				checkWrites(t, got[i], pt)
			}
		})
	}
}

// TestPatterns puts each standard pattern in a one-disk VM, written to a
// file, and reads it back by file, by stream and by xapi's import rules.
func TestPatterns(t *testing.T) {
	ps := disktest.Patterns(testing.Short())
	if !testing.Short() {
		ps = append(ps, &disktest.Pattern{Name: "odd-size", Size: 3*MiB + 100, Seed: 9, Data: []disk.Extent{{Off: 3 * MiB, Len: 100}}})
	}
	for _, pt := range ps {
		t.Run(pt.Name, func(t *testing.T) {
			ctx := t.Context()
			want := *pt
			want.Size = (pt.Size + 511) &^ 511
			dir := t.TempDir()
			out, err := disk.CreateOutputFile(dir + "/vm.xva")
			if err != nil {
				t.Fatal(err)
			}
			if err := writeTo(ctx, out, vmFor(pt.Name, pt), []*disktest.Pattern{pt}, nil); err != nil {
				out.Abort()
				t.Fatal(err)
			}
			if err := out.Commit(); err != nil {
				t.Fatal(err)
			}
			disktest.AssertOnly(t, dir, "vm.xva")
			f, err := disk.OpenFile(dir + "/vm.xva")
			if err != nil {
				t.Fatal(err)
			}
			r, err := Format().Open(ctx, f, nil)
			if err != nil {
				f.Close()
				t.Fatal(err)
			}
			defer r.Close()
			if d := r.VM().Disks; len(d) != 1 || d[0].Size != want.Size {
				t.Fatalf("disks %+v, want size %d", d, want.Size)
			}
			img, err := r.OpenDisk(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			disktest.VerifyImage(t, img, &want)
			if err := r.Verify(ctx); err != nil {
				t.Fatal(err)
			}
			b := readFileBytes(t, dir+"/vm.xva")
			s, err := Format().OpenStream(ctx, onlyReader{bytes.NewReader(b)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, ds, err := s.NextDisk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			verifyStream(t, ds, &want)
			checkWrites(t, importerModel(t, b, []int64{want.Size})[0], &want)
			qemuCompare(t, img, &want)
			if tarBin, err := exec.LookPath("tar"); err == nil {
				out, err := exec.CommandContext(ctx, tarBin, "-tvf", dir+"/vm.xva").CombinedOutput()
				if err != nil || !strings.Contains(string(out), "ova.xml") {
					t.Fatalf("tar -tvf: %v\n%s", err, out)
				}
			}
		})
	}
}

// TestOmittedZeroChunks checks the tar listing: every chunk that is all
// zeros is left out, except the first and the last, and the gaps read as
// zeros and are reported unallocated.
func TestOmittedZeroChunks(t *testing.T) {
	pt := sparsePattern()
	b := writeXVA(t, vmFor("zero", pt), []*disktest.Pattern{pt}, nil)
	var got, want []string
	for _, m := range members(t, b)[1:] {
		if !strings.HasSuffix(m.name, ".xxhash") {
			got = append(got, m.name[strings.IndexByte(m.name, '/')+1:])
		}
	}
	last := (pt.Size - 1) / MiB
	for c := int64(0); c <= last; c++ {
		buf := make([]byte, min(MiB, pt.Size-c*MiB))
		pt.Fill(c*MiB, buf)
		if c == 0 || c == last || !disktest.IsZero(buf) {
			want = append(want, fmt.Sprintf("%08d", c))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("chunks %v, want %v", got, want)
	}
	if len(want) >= int(last)+1 {
		t.Fatalf("the pattern has no zero chunk to omit: %v", want)
	}
	r := openBytes(t, b)
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	disktest.VerifyImage(t, img, pt)
	var ext []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		ext = append(ext, e)
	}
	wantExt := []disk.Extent{{Off: 0, Len: MiB, Kind: disk.Data}, {Off: MiB, Len: 4 * MiB, Kind: disk.Unallocated},
		{Off: 5 * MiB, Len: MiB, Kind: disk.Data}, {Off: 6 * MiB, Len: 3 * MiB, Kind: disk.Unallocated},
		{Off: 9 * MiB, Len: 1536, Kind: disk.Data}}
	if !slices.Equal(ext, wantExt) {
		t.Fatalf("extents %v, want %v", ext, wantExt)
	}
	zero := make([]byte, MiB)
	if n, err := img.ReadAt(zero, 3*MiB); err != nil || n != int(MiB) || !disktest.IsZero(zero) {
		t.Fatalf("omitted chunk reads %d, %v, zero=%v", n, err, disktest.IsZero(zero))
	}
}

// TestSmallFirstDisk: a first disk under 1 MiB makes the archive's first
// chunk short; xapi's importer would size later gaps by it, so nothing of
// the later disks may be omitted.
func TestSmallFirstDisk(t *testing.T) {
	small := &disktest.Pattern{Name: "small", Size: 64 << 10, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 4096}}}
	big := sparsePattern()
	b := writeXVA(t, vmFor("small-first", small, big), []*disktest.Pattern{small, big}, nil)
	n := 0
	for _, m := range members(t, b) {
		if strings.HasSuffix(m.name, ".xxhash") {
			n++
		}
	}
	if want := 1 + 10; n != want {
		t.Fatalf("%d chunks, want %d (none omitted)", n, want)
	}
	got := importerModel(t, b, []int64{small.Size, big.Size})
	checkWrites(t, got[0], small)
	checkWrites(t, got[1], big)
	r := openBytes(t, b)
	for i, pt := range []*disktest.Pattern{small, big} {
		img, err := r.OpenDisk(t.Context(), i)
		if err != nil {
			t.Fatal(err)
		}
		disktest.VerifyImage(t, img, pt)
	}
}

// TestManyDisks: VDI refs must sort as strings in disk order, even past
// ten disks.
func TestManyDisks(t *testing.T) {
	var pats []*disktest.Pattern
	for i := range 12 {
		pats = append(pats, &disktest.Pattern{Name: fmt.Sprintf("d%d", i), Size: 2 * MiB, Seed: uint64(i),
			Data: []disk.Extent{{Off: int64(i) * 4096, Len: 4096}}})
	}
	vm := vmFor("many", pats...)
	vm.NICs = make([]core.NICSpec, 12)
	b := writeXVA(t, vm, pats, nil)
	sizes := make([]int64, len(pats))
	for i := range sizes {
		sizes[i] = pats[i].Size
	}
	got := importerModel(t, b, sizes)
	r := openBytes(t, b)
	for i, pt := range pats {
		checkWrites(t, got[i], pt)
		img, err := r.OpenDisk(t.Context(), i)
		if err != nil {
			t.Fatal(err)
		}
		disktest.VerifyImage(t, img, pt)
	}
}

// qemuCompare extracts img to a raw file and has qemu-img compare it with
// the pattern written by disktest.WriteRaw.
func qemuCompare(t *testing.T, img disk.Image, pt *disktest.Pattern) {
	t.Helper()
	disktest.QemuImg(t)
	dir := t.TempDir()
	want, got := filepath.Join(dir, "want.raw"), filepath.Join(dir, "got.raw")
	disktest.WriteRaw(t, pt, want)
	out, err := disk.CreateOutputFile(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := raw.Format().Create(t.Context(), out, img.Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), w, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	disktest.Qemu(t, "compare", "-f", "raw", "-F", "raw", want, got)
}

func readFileBytes(t testing.TB, p string) []byte {
	t.Helper()
	f, err := disk.OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, f.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

type write struct {
	off  int64
	data []byte
}

// importerModel replays, independently of the package's reader, what
// xapi's importer (stream_vdi.ml, recv_all_vdi) does with an archive whose
// VDIs have the given sizes in archive order: it returns the writes it
// would make to each VDI. It fails the test where xapi would fail.
func importerModel(t testing.TB, b []byte, sizes []int64) [][]write {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	h, err := tr.Next()
	if err != nil || h.Name != "ova.xml" {
		t.Fatalf("first member %v, %v", h, err)
	}
	xml, _ := io.ReadAll(tr)
	firstLen := int64(-1)
	prevPrefix := ""
	var out [][]write
	for _, size := range sizes {
		var ws []write
		last, offset, prefix := "-1", int64(0), ""
		for offset < size {
			h, err := tr.Next()
			if err != nil {
				t.Fatalf("importer: next chunk at %d of %d: %v", offset, size, err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if firstLen < 0 {
				firstLen = int64(len(data))
			}
			slash := strings.LastIndexByte(h.Name, '/')
			if slash < 0 {
				t.Fatalf("importer: member %q is no chunk", h.Name)
			}
			p, suffix := h.Name[:slash], h.Name[slash+1:]
			if prefix == "" {
				prefix = p
				if prefix <= prevPrefix {
					t.Fatalf("importer: VDI %s comes after %s", prefix, prevPrefix)
				}
				if !strings.Contains(string(xml), "<name>id</name><value>"+prefix+"</value>") {
					t.Fatalf("importer: %s is no object of ova.xml", prefix)
				}
			} else if p != prefix {
				t.Fatalf("importer: expected a chunk of %s, got %s", prefix, h.Name)
			}
			if suffix <= last {
				t.Fatalf("importer: chunk %s after %s", suffix, last)
			}
			n, _ := strconv.Atoi(suffix)
			l, _ := strconv.Atoi(last)
			offset += int64(n-l-1) * firstLen
			ws = append(ws, write{offset, data})
			offset += int64(len(data))
			last = suffix
			ch, err := tr.Next()
			if err != nil {
				t.Fatalf("importer: checksum of %s: %v", h.Name, err)
			}
			sum, _ := io.ReadAll(tr)
			var want string
			switch path.Ext(ch.Name) {
			case ".xxhash":
				want = fmt.Sprintf("%016X", xxhash.Sum64(data))
			case ".checksum":
				s := sha1.Sum(data)
				want = hex.EncodeToString(s[:])
			default:
				t.Fatalf("importer: unsupported checksum file %s", ch.Name)
			}
			if strings.TrimSuffix(ch.Name, path.Ext(ch.Name)) != h.Name || string(sum) != want {
				t.Fatalf("importer: %s holds %q, want %q", ch.Name, sum, want)
			}
		}
		if offset != size {
			t.Fatalf("importer: VDI %s filled to %d, size %d", prefix, offset, size)
		}
		if prefix != "" {
			prevPrefix = prefix
		}
		out = append(out, ws)
	}
	if h, err := tr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("importer: trailing member %v, %v", h, err)
	}
	return out
}

// checkWrites checks an importer's writes against a pattern.
func checkWrites(t testing.TB, ws []write, pt *disktest.Pattern) {
	t.Helper()
	var next int64
	for _, w := range ws {
		if err := gapIsZero(pt, next, w.off); err != nil {
			t.Fatalf("%s: %v", pt.Name, err)
		}
		want := make([]byte, len(w.data))
		pt.Fill(w.off, want)
		if !bytes.Equal(w.data, want) {
			t.Fatalf("%s: importer writes wrong data at %d", pt.Name, w.off)
		}
		next = w.off + int64(len(w.data))
	}
	if err := gapIsZero(pt, next, pt.Size); err != nil {
		t.Fatalf("%s: %v", pt.Name, err)
	}
}

// TestOVAXML checks the descriptor the writer produces against what
// xapi's importer needs: every field without a default in the datamodel
// (../shared/xapi/xenapi.json), with a value of the right shape.
func TestOVAXML(t *testing.T) {
	vm := vmFor("xml", sparsePattern())
	vm.NICs = []core.NICSpec{{MAC: "02:00:00:00:00:01", Network: "n"}}
	b := writeXVA(t, vm, []*disktest.Pattern{sparsePattern()}, nil)
	root, err := parseXMLRPC(members(t, b)[0].data)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"hostname", "date", "product_version", "product_brand", "build_number", "xapi_major", "xapi_minor", "export_vsn"} {
		if root.field("version").field(k) == nil {
			t.Errorf("version lacks %s", k)
		}
	}
	classes := map[string]int{}
	for _, o := range root.field("objects").items {
		classes[o.field("class").str()]++
	}
	if want := map[string]int{"VM": 1, "VBD": 1, "VDI": 1, "VIF": 1, "network": 1, "SR": 1}; !reflect.DeepEqual(classes, want) {
		t.Fatalf("classes %v, want %v", classes, want)
	}
	model := loadDatamodel(t)
	if model == nil {
		return
	}
	for _, o := range root.field("objects").items {
		class := o.field("class").str()
		rec := o.field("snapshot")
		for _, f := range model[class] {
			v := rec.field(f.Name)
			if v == nil {
				if f.Default == nil {
					t.Errorf("%s.%s: required by the importer (no default), missing", class, f.Name)
				}
				continue
			}
			if err := shapeOK(f.Type, v); err != nil {
				t.Errorf("%s.%s (%s): %v", class, f.Name, f.Type, err)
			}
		}
	}
}

// shapeOK checks a value against a datamodel type the way xapi's XML-RPC
// unmarshalling would read it.
func shapeOK(typ string, v *xv) error {
	switch {
	case strings.HasSuffix(typ, " map"):
		if v.typ != "struct" {
			return fmt.Errorf("want a struct, got %q", v.typ)
		}
	case strings.HasSuffix(typ, " set"):
		if v.typ != "array" {
			return fmt.Errorf("want an array, got %q", v.typ)
		}
	case typ == "bool":
		if v.typ != "boolean" {
			return fmt.Errorf("want a boolean, got %q", v.typ)
		}
	case typ == "int":
		if _, ok := v.int(); !ok || v.typ != "" {
			return fmt.Errorf("want an int as a string, got %q %q", v.typ, v.text)
		}
	case typ == "float":
		if v.typ != "double" {
			return fmt.Errorf("want a double, got %q", v.typ)
		}
	case typ == "datetime":
		if v.typ != "dateTime.iso8601" {
			return fmt.Errorf("want a dateTime.iso8601, got %q", v.typ)
		}
	case typ == "string" || strings.HasSuffix(typ, " ref") || strings.HasPrefix(typ, "enum "):
		if !v.isScalar() || v.typ != "" {
			return fmt.Errorf("want a string, got %q", v.typ)
		}
	}
	return nil
}

// TestTranscriptShapes reads the VM record of a recorded
// VM.get_all_records answer through the same field readers the package
// uses on ova.xml, to check names and value shapes line up.
func TestTranscriptShapes(t *testing.T) {
	rec := loadTranscriptVM(t)
	if rec == nil {
		return
	}
	m := &manifest{vmRef: "Ref:0"}
	if err := m.readVM(rec); err != nil {
		t.Fatal(err)
	}
	if m.vm.Name != "win11-x64" || m.vm.CPUs != 2 || m.vm.MemoryBytes != 8<<30 || m.vm.Firmware != core.UEFI || m.vm.OSType != "Windows 11" {
		t.Fatalf("VM from the transcript: %+v", m.vm)
	}
}
