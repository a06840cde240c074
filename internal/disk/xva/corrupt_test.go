package xva

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// kaPattern is a 4 MiB disk with data in chunks 0, 1 and 3; chunk 2 is
// all zeros and left out.
func kaPattern() *disktest.Pattern {
	return &disktest.Pattern{Name: "ka", Size: 4 * MiB, Seed: 7, Data: []disk.Extent{
		{Off: 0, Len: 8192}, {Off: MiB + 4096, Len: 4096}, {Off: 3*MiB + 512, Len: 4096},
	}}
}

// kaMembers returns the members of the base archive and its VDI's ref.
func kaMembers(t testing.TB) ([]member, string) {
	t.Helper()
	pt := kaPattern()
	ms := members(t, writeXVA(t, vmFor("ka", pt), []*disktest.Pattern{pt}, nil))
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	ref := ms[1].name[:strings.IndexByte(ms[1].name, '/')]
	want := []string{"ova.xml", ref + "/00000000", ref + "/00000000.xxhash", ref + "/00000001", ref + "/00000001.xxhash", ref + "/00000003", ref + "/00000003.xxhash"}
	if !slices.Equal(names, want) {
		t.Fatalf("base archive holds %v, want %v", names, want)
	}
	return ms, ref
}

// TestKeepAlive: xapi's exporter sends a zero-length chunk when the disk
// is slow; it takes a chunk number but no room. The importer's rule puts
// the following chunks where they belong, and so must ferry.
func TestKeepAlive(t *testing.T) {
	ms, ref := kaMembers(t)
	c0, c1, c3 := ms[1].data, ms[3].data, ms[5].data
	pt := kaPattern()
	var ka []member
	ka = append(ka, ms[0])
	ka = append(ka, chunkPair(ref, 0, c0, sumXXH)...)
	ka = append(ka, chunkPair(ref, 1, nil, sumXXH)...) // keep-alive: chunk 1's data comes as number 2
	ka = append(ka, chunkPair(ref, 2, c1, sumXXH)...)
	ka = append(ka, chunkPair(ref, 3, nil, sumXXH)...) // another, right before a gap
	ka = append(ka, chunkPair(ref, 5, c3, sumXXH)...)  // number 4 (offset 2 MiB) omitted
	b := tarOf(t, ka)
	checkWrites(t, importerModel(t, b, []int64{pt.Size})[0], pt)

	r := openBytes(t, b)
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	disktest.VerifyImage(t, img, pt)
	if err := r.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, err := Format().OpenStream(t.Context(), onlyReader{bytes.NewReader(b)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, ds, err := s.NextDisk(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	verifyStream(t, ds, pt)

	// A keep-alive's checksum is checked too.
	ka[4].data = []byte("0000000000000000")
	bad := tarOf(t, ka)
	_, err = Format().Open(t.Context(), disk.BytesFile("test.xva", bad), nil)
	wantErr(t, err, errs.Corrupt, "test.xva", `disk 0 "ka"`, ref, "chunk 1")
	wantErr(t, streamAll(t.Context(), bytes.NewReader(bad), 1<<40), errs.Corrupt, "xva stream", "chunk 1")
}

// TestLegacySHA1 reads .checksum members (SHA-1, lower-case hex), as old
// hosts write them, mixed with .xxhash ones.
func TestLegacySHA1(t *testing.T) {
	ms, ref := kaMembers(t)
	var out []member
	out = append(out, ms[0])
	out = append(out, chunkPair(ref, 0, ms[1].data, sumSHA1)...)
	out = append(out, chunkPair(ref, 1, ms[3].data, sumSHA1)...)
	out = append(out, chunkPair(ref, 3, ms[5].data, sumXXH)...)
	b := tarOf(t, out)
	r := openBytes(t, b)
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	disktest.VerifyImage(t, img, kaPattern())
	if got := r.Info().Extra["checksum"]; !slices.Equal(got.([]string), []string{"xxhash", "sha1"}) {
		t.Fatalf("checksum info %v", got)
	}
	if err := streamAll(t.Context(), bytes.NewReader(b), 1<<40); err != nil {
		t.Fatal(err)
	}
}

func replaceXML(ms []member, old, new string) []member {
	ms = slices.Clone(ms)
	ms[0] = member{ms[0].name, []byte(strings.Replace(string(ms[0].data), old, new, 1))}
	return ms
}

func TestCorrupt(t *testing.T) {
	ms, ref := kaMembers(t)
	base := tarOf(t, ms)
	c1 := ref + "/00000001"
	sizeField := fmt.Sprintf("<name>virtual_size</name><value>%d</value>", 4*MiB)
	vmObj := func(x string) string {
		i := strings.Index(x, "<value><struct><member><name>class</name><value>VM</value>")
		j := strings.Index(x[i+1:], "<value><struct><member><name>class</name>") + i + 1
		return x[i:j]
	}
	xmlOf := func(ms []member) string { return string(ms[0].data) }

	tests := []struct {
		name string
		b    []byte
		// where the fault shows: at Open, or only when the data is read
		open       errs.Code
		read       errs.Code
		mentions   []string
		streamMent []string
	}{
		{name: "flipped data byte", b: func() []byte {
			m := slices.Clone(ms)
			d := slices.Clone(m[3].data)
			d[100] ^= 1
			m[3].data = d
			return tarOf(t, m)
		}(), read: errs.Corrupt, mentions: []string{`disk 0 "ka"`, ref, "chunk 1 "}},
		{name: "checksum text in lower case", b: func() []byte {
			m := slices.Clone(ms)
			m[4].data = []byte(strings.ToLower(string(m[4].data)))
			return tarOf(t, m)
		}(), read: errs.Corrupt, mentions: []string{`disk 0 "ka"`, "chunk 1 "}},
		{name: "missing checksum member", b: tarOf(t, slices.Delete(slices.Clone(ms), 4, 5)),
			open: errs.Corrupt, mentions: []string{c1, "checksum member"}},
		{name: "checksum of another chunk", b: func() []byte {
			m := slices.Clone(ms)
			m[4].name = ref + "/00000003.xxhash"
			return tarOf(t, m)
		}(), open: errs.Corrupt, mentions: []string{c1, "checksum member"}},
		{name: "unknown checksum kind", b: func() []byte {
			m := slices.Clone(ms)
			m[4].name = c1 + ".md5"
			return tarOf(t, m)
		}(), open: errs.Corrupt, mentions: []string{c1 + ".md5"}},
		{name: "chunks out of order", b: tarOf(t, []member{ms[0], ms[3], ms[4], ms[1], ms[2], ms[5], ms[6]}),
			open: errs.Corrupt, mentions: []string{ref + "/00000000", "follows " + c1, "must increase"}},
		{name: "chunk number repeated", b: tarOf(t, []member{ms[0], ms[1], ms[2], ms[3], ms[4], ms[3], ms[4], ms[5], ms[6]}),
			open: errs.Corrupt, mentions: []string{c1, "must increase"}},
		{name: "chunk name not 8 digits", b: func() []byte {
			m := slices.Clone(ms)
			m[3].name, m[4].name = ref+"/1", ref+"/1.xxhash"
			return tarOf(t, m)
		}(), open: errs.Corrupt, mentions: []string{ref + "/1", "8 decimal digits"}},
		{name: "chunk past the disk's end", b: func() []byte {
			m := slices.Clone(ms[:5])
			return tarOf(t, append(m, chunkPair(ref, 4, ms[5].data, sumXXH)...))
		}(), open: errs.Corrupt, mentions: []string{ref + "/00000004", "past the disk's size"}},
		{name: "chunk too big", b: func() []byte {
			m := slices.Clone(ms[:3])
			return tarOf(t, append(m, chunkPair(ref, 1, make([]byte, maxChunkLen+1), sumXXH)...))
		}(), open: errs.Unimplemented, mentions: []string{c1, "bytes"}},
		{name: "chunk of another VDI", b: func() []byte {
			m := slices.Clone(ms[:1])
			return tarOf(t, append(m, chunkPair("Ref:999", 0, ms[1].data, sumXXH)...))
		}(), open: errs.Corrupt, mentions: []string{"Ref:999/00000000", "expected the disk's first chunk (" + ref}},
		{name: "truncated in a chunk", b: base[:len(base)/2], open: errs.Corrupt,
			mentions: []string{c1, "truncated"}, streamMent: []string{"chunk 1 ", "truncated"}},
		{name: "truncated between chunks", b: tarOf(t, ms[:5])[:len(tarOf(t, ms[:5]))-1024],
			open: errs.Corrupt, mentions: []string{"ends after " + c1, "2097152 of 4194304"}},
		{name: "no ova.xml", b: tarOf(t, append([]member{{"ova2.xml", ms[0].data}}, ms[1:]...)),
			open: errs.Corrupt, mentions: []string{"ova.xml", "ova2.xml"}},
		{name: "ova.xml not first", b: tarOf(t, append([]member{ms[1]}, ms...)),
			open: errs.Corrupt, mentions: []string{"ova.xml", ref + "/00000000"}},
		{name: "empty file", b: nil, open: errs.Corrupt, mentions: []string{"ova.xml"}},
		{name: "not a tar", b: bytes.Repeat([]byte("not a tar archive "), 100), open: errs.Corrupt, mentions: []string{"tar"}},
		{name: "garbage XML", b: tarOf(t, append([]member{{"ova.xml", []byte("<value><struct><member>")}}, ms[1:]...)),
			open: errs.Corrupt, mentions: []string{"ova.xml"}},
		{name: "not XML-RPC", b: tarOf(t, append([]member{{"ova.xml", []byte("<html><body/></html>")}}, ms[1:]...)),
			open: errs.Corrupt, mentions: []string{"ova.xml", "<html>"}},
		{name: "deeply nested", b: tarOf(t, append([]member{{"ova.xml", []byte(strings.Repeat("<value><array><data>", 100))}}, ms[1:]...)),
			open: errs.Corrupt, mentions: []string{"ova.xml", "nested"}},
		{name: "no objects", b: tarOf(t, replaceXML(ms, "<name>objects</name>", "<name>objs</name>")),
			open: errs.Corrupt, mentions: []string{"ova.xml", "objects"}},
		{name: "absurd VDI size", b: tarOf(t, replaceXML(ms, sizeField, "<name>virtual_size</name><value>4611686018427387904</value>")),
			open: errs.Corrupt, mentions: []string{"ova.xml", ref, "4611686018427387904"}},
		{name: "negative VDI size", b: tarOf(t, replaceXML(ms, sizeField, "<name>virtual_size</name><value>-1</value>")),
			open: errs.Corrupt, mentions: []string{"ova.xml", ref}},
		{name: "VDI size not a number", b: tarOf(t, replaceXML(ms, sizeField, "<name>virtual_size</name><value>big</value>")),
			open: errs.Corrupt, mentions: []string{"ova.xml", ref, "virtual_size"}},
		{name: "VBD names a missing VDI", b: tarOf(t, replaceXML(ms, "<name>VDI</name><value>"+ref+"</value>", "<name>VDI</name><value>Ref:77</value>")),
			open: errs.Corrupt, mentions: []string{"ova.xml", "Ref:77"}},
		{name: "two VMs", b: func() []byte {
			x := xmlOf(ms)
			vm := vmObj(x)
			m := replaceXML(ms, vm, vm+strings.Replace(vm, "<value>Ref:0</value>", "<value>Ref:98</value>", 1))
			return tarOf(t, m)
		}(), open: errs.Unimplemented, mentions: []string{"2 VMs"}},
		{name: "no VM", b: func() []byte {
			x := xmlOf(ms)
			return tarOf(t, replaceXML(ms, vmObj(x), ""))
		}(), open: errs.Corrupt, mentions: []string{"no VM"}},
		{name: "directory among chunks", b: func() []byte {
			var buf bytes.Buffer
			buf.Write(tarOf(t, ms[:3]))
			buf.Truncate(buf.Len() - 1024)
			h := make([]byte, 512)
			tarHeader(h, ref+"/", 0, 0)
			h[156] = '5'
			copy(h[148:156], "        ")
			sum := 0
			for _, c := range h {
				sum += int(c)
			}
			octal(h[148:155], int64(sum))
			buf.Write(h)
			buf.Write(make([]byte, 1024))
			return buf.Bytes()
		}(), open: errs.Corrupt, mentions: []string{ref + "/", "not a regular file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			r, err := Format().Open(ctx, disk.BytesFile("test.xva", tc.b), nil)
			if tc.open != errs.Unknown {
				wantErr(t, err, tc.open, append([]string{"xva test.xva: "}, tc.mentions...)...)
			} else {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer r.Close()
				wantErr(t, readAll(ctx, r), tc.read, append([]string{"xva test.xva: "}, tc.mentions...)...)
				wantErr(t, r.Verify(ctx), tc.read, append([]string{"xva test.xva: "}, tc.mentions...)...)
				// The failure is not remembered as verified.
				wantErr(t, r.Verify(ctx), tc.read)
			}
			code := tc.open
			if code == errs.Unknown {
				code = tc.read
			}
			ment := tc.streamMent
			if ment == nil {
				ment = tc.mentions
			}
			wantErr(t, streamAll(ctx, onlyReader{bytes.NewReader(tc.b)}, 1<<40), code, ment...)
		})
	}
}

// TestStreamAbandon: NextDisk reads past what the caller left of a disk,
// checking it, and a failure there is reported.
func TestStreamAbandon(t *testing.T) {
	ctx := t.Context()
	pats := []*disktest.Pattern{kaPattern(), sparsePattern()}
	b := writeXVA(t, vmFor("two", pats...), pats, nil)
	s, err := Format().OpenStream(ctx, bytes.NewReader(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, d0, err := s.NextDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d0.Next(ctx); err != nil {
		t.Fatal(err)
	}
	i, d1, err := s.NextDisk(ctx)
	if err != nil || i != 1 {
		t.Fatalf("second disk: %d, %v", i, err)
	}
	if _, _, err := d0.Next(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("reading a passed disk: %v", err)
	}
	verifyStream(t, d1, pats[1])
	if _, _, err := s.NextDisk(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
	s.Close()

	// Skipping a disk with a bad chunk fails at NextDisk.
	ms := members(t, b)
	d := slices.Clone(ms[3].data)
	d[7] ^= 0x40
	ms[3].data = d
	s, err = Format().OpenStream(ctx, bytes.NewReader(tarOf(t, ms)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.NextDisk(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.NextDisk(ctx)
	wantErr(t, err, errs.Corrupt, `disk 0 "ka"`, "chunk 1 ")
}

// TestOtherVDIs: VDIs in the archive that are not disks of the VM (a
// suspend image here) are indexed and skipped; ISO-library VDIs are not
// expected at all.
func TestOtherVDIs(t *testing.T) {
	ms, ref := kaMembers(t)
	x := string(ms[0].data)
	// A suspend VDI Ref:9 (sorts after the disk's Ref:10) with one chunk.
	suspend := `<value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:9</value></member>` +
		`<member><name>snapshot</name><value><struct><member><name>name_label</name><value>suspend image</value></member>` +
		`<member><name>virtual_size</name><value>1048576</value></member><member><name>type</name><value>suspend</value></member>` +
		`<member><name>SR</name><value>OpaqueRef:NULL</value></member></struct></value></member></struct></value>`
	iso := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(suspend, "Ref:9", "Ref:6"), ">suspend<", ">user<"), "OpaqueRef:NULL", "Ref:7")
	isoVBD := `<value><struct><member><name>class</name><value>VBD</value></member><member><name>id</name><value>Ref:8</value></member>` +
		`<member><name>snapshot</name><value><struct><member><name>VM</name><value>Ref:0</value></member><member><name>VDI</name><value>Ref:6</value></member>` +
		`<member><name>type</name><value>Disk</value></member><member><name>userdevice</name><value>3</value></member></struct></value></member></struct></value>`
	isoSR := `<value><struct><member><name>class</name><value>SR</value></member><member><name>id</name><value>Ref:7</value></member>` +
		`<member><name>snapshot</name><value><struct><member><name>content_type</name><value>iso</value></member></struct></value></member></struct></value>`
	x = strings.Replace(x, "<name>objects</name><value><array><data>", "<name>objects</name><value><array><data>"+suspend+iso+isoVBD+isoSR, 1)
	if !strings.Contains(x, suspend) || !(ref < "Ref:9") {
		t.Fatalf("setup: disk ref %s", ref)
	}
	susp := bytes.Repeat([]byte{0xab}, int(MiB))
	out := []member{{"ova.xml", []byte(x)}}
	out = append(out, ms[1:]...)
	out = append(out, chunkPair("Ref:9", 0, susp, sumXXH)...)
	b := tarOf(t, out)
	r := openBytes(t, b)
	if d := r.VM().Disks; len(d) != 1 || d[0].Name != "ka" {
		t.Fatalf("disks %+v", d)
	}
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	disktest.VerifyImage(t, img, kaPattern())
	if err := r.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, err := Format().OpenStream(t.Context(), bytes.NewReader(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	i, ds, err := s.NextDisk(t.Context())
	if err != nil || i != 0 {
		t.Fatalf("next disk %d, %v", i, err)
	}
	verifyStream(t, ds, kaPattern())
	// A bad chunk in the skipped suspend image is still caught.
	susp[5] = 0
	bad := slices.Clone(out)
	bad[len(bad)-2] = member{bad[len(bad)-2].name, susp}
	b = tarOf(t, bad)
	r2, err := Format().Open(t.Context(), disk.BytesFile("test.xva", b), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	wantErr(t, r2.Verify(t.Context()), errs.Corrupt, `VDI "suspend image" (Ref:9)`, "chunk 0 ")
	wantErr(t, streamAll(context.Background(), bytes.NewReader(b), 1<<40), errs.Corrupt, "Ref:9", "chunk 0 ")
}

// TestFirstChunkLength: gaps are worth the archive's first chunk's length,
// whatever it is (512 bytes here), as in xapi's importer.
func TestFirstChunkLength(t *testing.T) {
	b := miniSeeds(t)[0]
	r := openBytes(t, b)
	vm := r.VM()
	if vm.Name != "mini" || vm.Firmware != core.UEFI || vm.CPUs != 1 || vm.MemoryBytes != 256<<20 ||
		len(vm.Disks) != 1 || vm.Disks[0] != (core.DiskSpec{Name: "d", Size: 2048, Bootable: true, Position: 0}) {
		t.Fatalf("VM %+v", vm)
	}
	img, err := r.OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2048)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(append(bytes.Repeat([]byte{1}, 512), make([]byte, 512)...), bytes.Repeat([]byte{3}, 512)...), make([]byte, 512)...)
	if !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
	var ext []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, 2048) {
		if err != nil {
			t.Fatal(err)
		}
		ext = append(ext, e)
	}
	if want := []disk.Extent{{Off: 0, Len: 512, Kind: disk.Data}, {Off: 512, Len: 512, Kind: disk.Unallocated}, {Off: 1024, Len: 1024, Kind: disk.Data}}; !slices.Equal(ext, want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	for _, c := range []compression{gzipped, zstded} {
		s, err := Format().OpenStream(t.Context(), bytes.NewReader(compressed(t, b, c)), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, ds, err := s.NextDisk(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2048)
		for {
			off, p, err := ds.Next(t.Context())
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			copy(got[off:], p)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s stream content differs", c)
		}
		s.Close()
	}
}
