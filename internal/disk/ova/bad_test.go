package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// smallPatterns are two small disks for the bad-input tests.
func smallPatterns() []*disktest.Pattern {
	return []*disktest.Pattern{
		{Name: "d1", Size: 1 << 20, Seed: 11, Data: []disk.Extent{{Off: 0, Len: 64 << 10}, {Off: 512 << 10, Len: 4096}}},
		{Name: "d2", Size: 2 << 20, Seed: 12, Data: []disk.Extent{{Off: 1 << 20, Len: 128 << 10}}},
	}
}

// baseOVA is a valid two-disk OVA written by ferry to a file.
func baseOVA(t testing.TB) []byte {
	t.Helper()
	pts := smallPatterns()
	path := writeFile(t, t.TempDir(), testVM("base", core.BIOS, pts...), pts, nil)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readMembers lists the regular members of an OVA with their data.
func readMembers(t testing.TB, b []byte) []tarMember {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var ms []tarMember
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ms
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, tarMember{h.Name, data})
	}
}

// rebuild rewrites an OVA with edit applied to its members.
func rebuild(t testing.TB, b []byte, edit func([]tarMember) []tarMember) []byte {
	t.Helper()
	return buildTar(t, edit(readMembers(t, b)))
}

// reManifest recomputes the manifest member from the others.
func reManifest(ms []tarMember) []tarMember {
	var mf strings.Builder
	for _, m := range ms {
		if !strings.HasSuffix(m.name, ".mf") {
			s := sha256.Sum256(m.data)
			mf.WriteString("SHA256(" + m.name + ")= " + hex.EncodeToString(s[:]) + "\n")
		}
	}
	for i, m := range ms {
		if strings.HasSuffix(m.name, ".mf") {
			ms[i].data = []byte(mf.String())
		}
	}
	return ms
}

// editMember applies fn to the data of the member called name.
func editMember(name string, fn func([]byte) []byte) func([]tarMember) []tarMember {
	return func(ms []tarMember) []tarMember {
		for i, m := range ms {
			if m.name == name {
				ms[i].data = fn(bytes.Clone(m.data))
			}
		}
		return ms
	}
}

// editOVF replaces old by new in the descriptor and fixes the manifest.
func editOVF(old, new string) func([]tarMember) []tarMember {
	return func(ms []tarMember) []tarMember {
		return reManifest(editMember("base.ovf", func(b []byte) []byte {
			return []byte(strings.Replace(string(b), old, new, 1))
		})(ms))
	}
}

func drop(name string) func([]tarMember) []tarMember {
	return func(ms []tarMember) []tarMember {
		var out []tarMember
		for _, m := range ms {
			if m.name != name {
				out = append(out, m)
			}
		}
		return out
	}
}

// memberOffset is where member name's data starts in b.
func memberOffset(t testing.TB, b []byte, name string) int64 {
	t.Helper()
	ms, err := indexTar(disk.BytesFile("x", b))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.name == name {
			return m.off
		}
	}
	t.Fatalf("no member %s", name)
	return 0
}

// fileErr opens b as a file, opens every disk and verifies.
func fileErr(b []byte) error {
	ctx := context.Background()
	r, err := openBytes(b)
	if err != nil {
		return err
	}
	defer r.Close()
	for i := range r.VM().Disks {
		img, err := r.OpenDisk(ctx, i)
		if err != nil {
			return err
		}
		img.Close()
	}
	return r.Verify(ctx)
}

// streamErr reads b as a stream to its end, every disk's data included.
func streamErr(b []byte) error {
	ctx := context.Background()
	sr, err := Format().OpenStream(ctx, bytes.NewReader(b), &archive.OpenOptions{Disks: testRegistry()})
	if err != nil {
		return err
	}
	defer sr.Close()
	for {
		_, s, err := sr.NextDisk(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for {
			_, _, err := s.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
	}
}

type want struct {
	code errs.Code // Unknown: accepted
	what string
}

func check(t *testing.T, how string, err error, w want) {
	t.Helper()
	if w.code == errs.Unknown {
		if err != nil {
			t.Fatalf("%s: %v, want success", how, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s: accepted, want %v naming %q", how, w.code, w.what)
	}
	if errs.CodeOf(err) != w.code || !strings.Contains(err.Error(), w.what) {
		t.Fatalf("%s: %q (%v), want %v naming %q", how, err, errs.CodeOf(err), w.code, w.what)
	}
	name := "test.ova"
	if how == "stream" {
		name = "ova stream"
	}
	if !strings.Contains(err.Error(), name) {
		t.Fatalf("%s: %q does not name %s", how, err, name)
	}
}

func TestBadInput(t *testing.T) {
	base := baseOVA(t)
	d1Off := memberOffset(t, base, "base-disk1.vmdk")
	d2Off := memberOffset(t, base, "base-disk2.vmdk")
	flip := func(off int64) func(*testing.T) []byte {
		return func(*testing.T) []byte { b := bytes.Clone(base); b[off] ^= 0x55; return b }
	}
	cut := func(n int64) func(*testing.T) []byte {
		return func(*testing.T) []byte { return bytes.Clone(base[:n]) }
	}
	re := func(edit func([]tarMember) []tarMember) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return rebuild(t, base, edit) }
	}
	tests := []struct {
		name         string
		make         func(*testing.T) []byte
		file, stream want
	}{
		{"valid", func(*testing.T) []byte { return base }, want{}, want{}},
		// 60000 is inside the VMDK's unused front padding: the disk
		// reads fine and only the digest tells.
		{"disk byte flipped", flip(d1Off + 60000),
			want{errs.Corrupt, "base-disk1.vmdk: SHA256 digest"}, want{errs.Corrupt, "base-disk1.vmdk: SHA256 digest"}},
		{"ovf padding flipped", flip(int64(bytes.Index(base, []byte("</Envelope>"))) + 14),
			want{errs.Corrupt, "base.ovf: SHA256 digest"}, want{errs.Corrupt, "base.ovf: SHA256 digest"}},
		{"missing disk member", re(drop("base-disk2.vmdk")),
			want{errs.Corrupt, "member base-disk2.vmdk is missing"}, want{errs.Corrupt, "member base-disk2.vmdk is missing"}},
		{"ovf not first", re(func(ms []tarMember) []tarMember { return append(ms[1:], ms[0]) }),
			want{}, want{errs.Unimplemented, "not the first member"}},
		{"manifest last", re(func(ms []tarMember) []tarMember { return append(append(ms[:1:1], ms[2:]...), ms[1]) }),
			want{}, want{}},
		{"manifest last, disk flipped", re(func(ms []tarMember) []tarMember {
			ms[2].data = bytes.Clone(ms[2].data)
			ms[2].data[60000] ^= 1
			return append(append(ms[:1:1], ms[2:]...), ms[1])
		}), want{errs.Corrupt, "base-disk1.vmdk: SHA256 digest"}, want{errs.Corrupt, "base-disk1.vmdk: SHA256 digest"}},
		{"no manifest", re(drop("base.mf")), want{}, want{}},
		{"garbage ovf", re(reManifest2(editMember("base.ovf", func([]byte) []byte { return []byte("this is <not xml") }))),
			want{errs.Corrupt, "base.ovf: descriptor is not well-formed"}, want{errs.Corrupt, "base.ovf: descriptor is not well-formed"}},
		{"not an envelope", re(reManifest2(editMember("base.ovf", func([]byte) []byte { return []byte("<?xml version='1.0'?><Foo/>") }))),
			want{errs.Corrupt, "not an OVF <Envelope>"}, want{errs.Corrupt, "not an OVF <Envelope>"}},
		{"no virtual system", re(editOVF("<VirtualSystem ", "<VirtualSystemX ")), // unbalanced: not well-formed
			want{errs.Corrupt, "base.ovf"}, want{errs.Corrupt, "base.ovf"}},
		{"capacity mismatch", re(editOVF(`ovf:capacity="1048576"`, `ovf:capacity="2097152"`)),
			want{errs.Corrupt, "disk 0: member base-disk1.vmdk holds a 1048576-byte disk but the descriptor's capacity is 2097152"},
			want{errs.Corrupt, "disk 0: member base-disk1.vmdk holds a 1048576-byte disk but the descriptor's capacity is 2097152"}},
		{"gzip", re(editOVF(`ovf:id="file1"`, `ovf:id="file1" ovf:compression="gzip"`)),
			want{errs.Unimplemented, "base-disk1.vmdk is gzip-compressed"}, want{errs.Unimplemented, "base-disk1.vmdk is gzip-compressed"}},
		{"chunked", re(editOVF(`ovf:id="file2"`, `ovf:id="file2" ovf:chunkSize="1048576"`)),
			want{errs.Unimplemented, "ovf:chunkSize"}, want{errs.Unimplemented, "ovf:chunkSize"}},
		{"ovf:size mismatch", re(editOVF(`ovf:id="file1" ovf:size="`, `ovf:id="file1" ovf:size="1`)),
			want{errs.Corrupt, "ovf:size"}, want{errs.Corrupt, "ovf:size"}},
		{"absurd capacity", re(editOVF(`ovf:capacity="1048576" ovf:capacityAllocationUnits="byte"`, `ovf:capacity="4096" ovf:capacityAllocationUnits="byte * 2^50"`)),
			want{errs.Corrupt, "over the"}, want{errs.Corrupt, "over the"}},
		{"absurd capacity units", re(editOVF(`ovf:capacityAllocationUnits="byte"`, `ovf:capacityAllocationUnits="byte * 2^99"`)),
			want{errs.Corrupt, "capacityAllocationUnits"}, want{errs.Corrupt, "capacityAllocationUnits"}},
		{"absurd memory", re(editOVF(`<rasd:VirtualQuantity>3072</rasd:VirtualQuantity>`, `<rasd:VirtualQuantity>999999999999</rasd:VirtualQuantity>`)),
			want{errs.Corrupt, "memory item"}, want{errs.Corrupt, "memory item"}},
		{"absurd cpus", re(editOVF(`<rasd:VirtualQuantity>2</rasd:VirtualQuantity>`, `<rasd:VirtualQuantity>-2</rasd:VirtualQuantity>`)),
			want{errs.Corrupt, "CPU item"}, want{errs.Corrupt, "CPU item"}},
		{"disk names missing file", re(editOVF(`ovf:fileRef="file2"`, `ovf:fileRef="file9"`)),
			want{errs.Corrupt, "file9"}, want{errs.Corrupt, "file9"}},
		{"disk attached twice", re(editOVF(`ovf:/disk/vmdisk2`, `ovf:/disk/vmdisk1`)),
			want{errs.Corrupt, "attached twice"}, want{errs.Corrupt, "attached twice"}},
		{"two disks one file", re(editOVF(`ovf:fileRef="file2"`, `ovf:fileRef="file1"`)),
			want{errs.Corrupt, "same file"}, want{errs.Corrupt, "same file"}},
		{"collection", re(editOVF(`</Envelope>`, `<VirtualSystemCollection ovf:id="c"/></Envelope>`)),
			want{errs.Unimplemented, "VirtualSystemCollection"}, want{errs.Unimplemented, "VirtualSystemCollection"}},
		{"delta disk", re(editOVF(`ovf:diskId="vmdisk2"`, `ovf:diskId="vmdisk2" ovf:parentRef="vmdisk1"`)),
			want{errs.Unimplemented, "parentRef"}, want{errs.Unimplemented, "parentRef"}},
		{"manifest lists a missing member", re(editMember("base.mf", func(b []byte) []byte {
			return append(b, "SHA256(ghost.iso)= "+strings.Repeat("ab", 32)+"\n"...)
		})), want{errs.Corrupt, "ghost.iso"}, want{errs.Corrupt, "ghost.iso"}},
		{"member not in manifest", re(editMember("base.mf", func(b []byte) []byte {
			lines := strings.SplitAfter(string(b), "\n")
			return []byte(lines[0] + lines[1])
		})), want{errs.Corrupt, "base-disk2.vmdk is not in the manifest"}, want{errs.Corrupt, "base-disk2.vmdk is not in the manifest"}},
		{"manifest syntax", re(editMember("base.mf", func(b []byte) []byte { return append(b, "garbage\n"...) })),
			want{errs.Corrupt, "base.mf: line 4"}, want{errs.Corrupt, "base.mf: line 4"}},
		{"manifest bad digest", re(editMember("base.mf", func(b []byte) []byte { return bytes.Replace(b, []byte("= "), []byte("= zz"), 1) })),
			want{errs.Corrupt, "base.mf: line 1"}, want{errs.Corrupt, "base.mf: line 1"}},
		{"manifest md5", re(editMember("base.mf", func(b []byte) []byte { return append(b, "MD5(x)= 00\n"...) })),
			want{errs.Unimplemented, "MD5"}, want{errs.Unimplemented, "MD5"}},
		{"duplicate member", re(func(ms []tarMember) []tarMember { return append(ms, ms[2]) }),
			want{errs.Corrupt, "base-disk1.vmdk appears twice"}, want{errs.Corrupt, "base-disk1.vmdk appears twice"}},
		{"second ovf", re(func(ms []tarMember) []tarMember { return append(ms, tarMember{"other.ovf", ms[0].data}) }),
			want{errs.Unimplemented, "other.ovf"}, want{errs.Unimplemented, "other.ovf"}},
		{"not a vmdk", re(reManifest2(editMember("base-disk1.vmdk", func(b []byte) []byte { return bytes.Repeat([]byte{7}, len(b)) }))),
			want{errs.Corrupt, "base-disk1.vmdk is not a VMDK"}, want{errs.Corrupt, "base-disk1.vmdk is not a VMDK"}},
		{"bad tar checksum", flip(d2Off - blockSize + 3), want{errs.Corrupt, "tar header"}, want{errs.Corrupt, "tar header"}},
		{"truncated in a disk", cut(d2Off + 4096), want{errs.Corrupt, "truncated"}, want{errs.Corrupt, "truncated"}},
		{"truncated in a header", cut(d2Off - 100), want{errs.Corrupt, "truncated"}, want{errs.Corrupt, "truncated"}},
		{"truncated after the descriptor", cut(memberOffset(t, base, "base.mf") - blockSize),
			want{errs.Corrupt, "is missing"}, want{errs.Corrupt, "is missing"}},
		{"truncated to a block", cut(blockSize), want{errs.Corrupt, "truncated"}, want{errs.Corrupt, "truncated"}},
		{"empty", cut(0), want{errs.Corrupt, "no tar header"}, want{errs.Corrupt, "truncated"}},
		{"zeros", func(*testing.T) []byte { return make([]byte, 4096) }, want{errs.Corrupt, "no tar header"}, want{errs.Corrupt, "truncated"}},
		{"not a tar", func(*testing.T) []byte { return bytes.Repeat([]byte("garbage!"), 1000) }, want{errs.Corrupt, "tar header"}, want{errs.Corrupt, "first member"}},
		{"no ovf", re(drop("base.ovf")), want{errs.Corrupt, "no .ovf"}, want{errs.Unimplemented, "not the first member"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.make(t)
			check(t, "file", fileErr(b), tt.file)
			check(t, "stream", streamErr(b), tt.stream)
		})
	}
}

// reManifest2 applies edit and then fixes the manifest.
func reManifest2(edit func([]tarMember) []tarMember) func([]tarMember) []tarMember {
	return func(ms []tarMember) []tarMember { return reManifest(edit(ms)) }
}

// TestOVFNotFirstInfo: a file whose .ovf comes later opens and says so.
func TestOVFNotFirstInfo(t *testing.T) {
	b := rebuild(t, baseOVA(t), func(ms []tarMember) []tarMember { return append(ms[1:], ms[0]) })
	r, err := openBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	info := r.Info()
	if info.Extra["ovf-first"] != false || info.Extra["note"] == nil {
		t.Fatalf("info extra %v", info.Extra)
	}
	img, err := r.OpenDisk(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	disktest.VerifyImage(t, img, smallPatterns()[1])
	if _, err := r.OpenDisk(t.Context(), 2); errs.CodeOf(err) != errs.NotFound {
		t.Fatalf("disk 2 of 2: %v", err)
	}
}

// TestStreamCloseVerifies: a caller that stops after the last disk still
// learns from Close that the trailing manifest does not match.
func TestStreamCloseVerifies(t *testing.T) {
	b := rebuild(t, baseOVA(t), func(ms []tarMember) []tarMember {
		ms[3].data = bytes.Clone(ms[3].data)
		ms[3].data[60000] ^= 1
		return append(append(ms[:1:1], ms[2:]...), ms[1])
	})
	ctx := t.Context()
	sr, err := Format().OpenStream(ctx, bytes.NewReader(b), &archive.OpenOptions{Disks: testRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	pts := smallPatterns()
	for range 2 {
		i, s, err := sr.NextDisk(ctx)
		if err != nil {
			t.Fatal(err)
		}
		verifyStream(t, s, pts[i])
	}
	wantCode(t, sr.Close(), errs.Corrupt, "base-disk2.vmdk")
}

// TestStreamSkipsDisks: NextDisk may be called without reading a disk's
// stream; the member is still hashed and checked.
func TestStreamSkipsDisks(t *testing.T) {
	base := baseOVA(t)
	bad := bytes.Clone(base)
	bad[memberOffset(t, base, "base-disk1.vmdk")+60000] ^= 1
	for _, tt := range []struct {
		name string
		b    []byte
		err  bool
	}{{"valid", base, false}, {"flipped", bad, true}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			sr, err := Format().OpenStream(ctx, bytes.NewReader(tt.b), &archive.OpenOptions{Disks: testRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			defer sr.Close()
			var last error
			for {
				_, s, err := sr.NextDisk(ctx)
				if err != nil {
					last = err
					break
				}
				s.Close()
			}
			if tt.err {
				wantCode(t, last, errs.Corrupt, "base-disk1.vmdk")
			} else if last != io.EOF {
				t.Fatalf("end: %v", last)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	base := baseOVA(t)
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"ova", base, true},
		{"ovf later", rebuild(t, base, func(ms []tarMember) []tarMember { return append(ms[1:], ms[0]) }), true},
		{"tar without ovf", rebuild(t, base, drop("base.ovf")), false},
		{"vmdk", readMembers(t, base)[2].data, false},
		{"zeros", make([]byte, 8192), false},
		{"short", []byte("ustar"), false},
		{"xva-like", buildTar(t, []tarMember{{"ova.xml", []byte("<value/>")}}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Format().Probe(disk.BytesFile("x", tt.b)); got != tt.want {
				t.Fatalf("probe = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCreateRefuses(t *testing.T) {
	pts := smallPatterns()
	reg := testRegistry()
	tests := []struct {
		name string
		vm   func(core.VMSpec) core.VMSpec
		opts *archive.CreateOptions
		what string
	}{
		{"no registry", nil, &archive.CreateOptions{}, "no disk registry"},
		{"nil options", nil, nil, "no disk registry"},
		{"unknown option", nil, &archive.CreateOptions{Disks: reg, Options: map[string]string{"compress": "1"}}, `"compress"`},
		{"bad manifest", nil, &archive.CreateOptions{Disks: reg, Options: map[string]string{"manifest": "md5"}}, "md5"},
		{"bad nic type", nil, &archive.CreateOptions{Disks: reg, Options: map[string]string{"nic_type": "rtl8139"}}, "rtl8139"},
		{"bad firmware", func(v core.VMSpec) core.VMSpec { v.Firmware = "coreboot"; return v }, nil, "coreboot"},
		{"negative size", func(v core.VMSpec) core.VMSpec { v.Disks[1].Size = -1; return v }, nil, "disk 1"},
		{"huge size", func(v core.VMSpec) core.VMSpec { v.Disks[0].Size = 1 << 60; return v }, nil, "disk 0"},
		{"negative cpus", func(v core.VMSpec) core.VMSpec { v.CPUs = -1; return v }, nil, "CPUs"},
		{"negative memory", func(v core.VMSpec) core.VMSpec { v.MemoryBytes = -1; return v }, nil, "memory"},
		{"too many disks", func(v core.VMSpec) core.VMSpec { v.Disks = make([]core.DiskSpec, 61); return v }, nil, "61 disks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := testVM("refuse", core.BIOS, pts...)
			if tt.vm != nil {
				v = tt.vm(v)
			}
			o := tt.opts
			if o == nil && tt.vm != nil {
				o = &archive.CreateOptions{Disks: reg}
			}
			_, err := Format().Create(t.Context(), &bytes.Buffer{}, v, o)
			wantCode(t, err, errs.InvalidArgument, tt.what)
		})
	}
}

// TestWriterMisuse: out-of-order calls and abandoned disks are refused,
// and an abandoned archive leaves no staged files.
func TestWriterMisuse(t *testing.T) {
	pts := smallPatterns()
	vm := testVM("misuse", core.BIOS, pts...)
	for _, how := range []string{"file", "stream"} {
		t.Run(how, func(t *testing.T) {
			ctx := t.Context()
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			var tg disk.Target = &bytes.Buffer{}
			if how == "file" {
				f, err := os.Create(filepath.Join(t.TempDir(), "x.ova"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				tg = f
			}
			w, err := Format().Create(ctx, tg, vm, &archive.CreateOptions{Disks: testRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			wantCode(t, w.Commit(ctx), errs.FailedPrecondition, "0 of the VM's 2 disks")
			dw, err := w.NextDisk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = w.NextDisk(ctx)
			wantCode(t, err, errs.FailedPrecondition, "disk 0 is still being written")
			if _, err := dw.WriteAt([]byte{1}, 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := dw.WriteAt([]byte{1}, 0); err == nil {
				t.Fatal("a write behind the position was accepted")
			}
			dw.Close()
			wantCode(t, w.Commit(ctx), errs.FailedPrecondition, "disk 0 (d1) was not finished")
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			disktest.AssertOnly(t, tmp)
		})
	}
}

// TestAbortLeavesNothing: Close without Commit in the middle of a disk.
func TestAbortLeavesNothing(t *testing.T) {
	pts := smallPatterns()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ctx := t.Context()
	w, err := Format().Create(ctx, &bytes.Buffer{}, testVM("abort", core.BIOS, pts...), &archive.CreateOptions{Disks: testRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := w.NextDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(ctx, dw, disktest.PatternImage{P: pts[0]}, nil); err != nil {
		t.Fatal(err)
	}
	if err := dw.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.NextDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	disktest.AssertOnly(t, tmp)
	if _, err := w.NextDisk(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("NextDisk after Close: %v", err)
	}
}

func TestParseManifest(t *testing.T) {
	h := strings.Repeat("0a", 32)
	h1 := strings.Repeat("1b", 20)
	tests := []struct {
		name, text string
		want       map[string]string // name → alg
		code       errs.Code
	}{
		{"ovftool", "SHA256(a.ovf)= " + h + "\nSHA1(b.vmdk)= " + h1 + "\n", map[string]string{"a.ovf": algSHA256, "b.vmdk": algSHA1}, 0},
		{"openssl spaces", "SHA256 (a.ovf) = " + h + "\r\n\r\n", map[string]string{"a.ovf": algSHA256}, 0},
		{"dot slash", "SHA256(./a b(1).vmdk)= " + h, map[string]string{"a b(1).vmdk": algSHA256}, 0},
		{"sha2-256", "SHA2-256(a)= " + h, map[string]string{"a": algSHA256}, 0},
		{"sha512", "SHA512(a)= " + strings.Repeat("cc", 64), map[string]string{"a": algSHA512}, 0},
		{"short digest", "SHA256(a)= abcd", nil, errs.Corrupt},
		{"no equals", "SHA256(a) " + h, nil, errs.Corrupt},
		{"no parens", "SHA256 a = " + h, nil, errs.Corrupt},
		{"twice", "SHA256(a)= " + h + "\nSHA256(a)= " + h, nil, errs.Corrupt},
		{"sha256sum format", h + "  a.ovf", nil, errs.Corrupt},
		{"md5", "MD5(a)= 00", nil, errs.Unimplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseManifest("x.mf", []byte(tt.text))
			if tt.code != errs.Unknown {
				wantCode(t, err, tt.code, "x.mf")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.entries) != len(tt.want) {
				t.Fatalf("entries %v", m.entries)
			}
			for n, a := range tt.want {
				if m.entries[n].alg != a {
					t.Fatalf("%s: %+v", n, m.entries[n])
				}
			}
		})
	}
}

func TestParseUnits(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 7, true},
		{"byte", 1, true},
		{"byte * 2^30", 1 << 30, true},
		{"byte*2^20", 1 << 20, true},
		{"byte * 1024", 1024, true},
		{"2^10 * byte", 1024, true},
		{"MegaBytes", 1 << 20, true},
		{"GB", 1 << 30, true},
		{"byte * 10^3", 1000, true},
		{"hertz * 10^6", 0, false},
		{"byte * 2^63", 0, false},
		{"byte * 2^40 * 2^40", 0, false},
		{"byte * byte", 0, false},
		{"byte * -1", 0, false},
		{"byte * 0", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseUnits(tt.in, 7)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("parseUnits(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestOVFDetails covers descriptor features the round trip does not.
func TestOVFDetails(t *testing.T) {
	env := func(hw string) string {
		return `<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">
<References><File ovf:id="f" ovf:href="./d.vmdk"/></References>
<DiskSection><Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>
<VirtualSystem ovf:id="sys"><VirtualHardwareSection>` + hw + `</VirtualHardwareSection></VirtualSystem></Envelope>`
	}
	tests := []struct {
		name string
		xml  string
		want core.VMSpec
		code errs.Code
		what string
	}{
		{"ovf2 storage item", env(`<StorageItem><ResourceType>17</ResourceType><HostResource>ovf:/disk/d</HostResource><AddressOnParent>3</AddressOnParent></StorageItem>
<EthernetPortItem><ResourceType>10</ResourceType><Connection>lan</Connection><Address>aa:bb</Address></EthernetPortItem>
<Item><ResourceType>4</ResourceType><VirtualQuantity>512</VirtualQuantity></Item>`),
			core.VMSpec{Name: "sys", Firmware: core.BIOS, MemoryBytes: 512 << 20,
				Disks: []core.DiskSpec{{Name: "d", Size: 2 << 30, Bootable: true, Position: 3}},
				NICs:  []core.NICSpec{{Network: "lan", MAC: "aa:bb"}}}, 0, ""},
		{"unattached disk", env(``),
			core.VMSpec{Name: "sys", Firmware: core.BIOS, Disks: []core.DiskSpec{{Name: "d", Size: 2 << 30, Bootable: true}}}, 0, ""},
		{"file host resource", env(`<Item><ResourceType>17</ResourceType><HostResource>ovf:/file/f</HostResource></Item>`),
			core.VMSpec{}, errs.Unimplemented, "ovf:/file/f"},
		{"unknown disk", env(`<Item><ResourceType>17</ResourceType><HostResource>ovf:/disk/zz</HostResource></Item>`),
			core.VMSpec{}, errs.Corrupt, "ovf:/disk/zz"},
		{"bad slot", env(`<Item><ResourceType>17</ResourceType><HostResource>ovf:/disk/d</HostResource><AddressOnParent>x</AddressOnParent></Item>`),
			core.VMSpec{}, errs.Corrupt, "AddressOnParent"},
		{"property capacity", strings.Replace(env(``), `ovf:capacity="2"`, `ovf:capacity="${size}"`, 1),
			core.VMSpec{}, errs.Unimplemented, "${size}"},
		{"remote file", strings.Replace(env(``), `./d.vmdk`, `http://example.invalid/d.vmdk`, 1),
			core.VMSpec{}, errs.Unimplemented, "outside the package"},
		{"blank disk", strings.Replace(env(``), `ovf:fileRef="f"`, ``, 1),
			core.VMSpec{}, errs.Unimplemented, "blank disk"},
		{"two systems", strings.Replace(env(``), `</Envelope>`, `<VirtualSystem ovf:id="b"/></Envelope>`, 1),
			core.VMSpec{}, errs.Unimplemented, "2 VirtualSystems"},
		{"no system", `<Envelope/>`, core.VMSpec{}, errs.Corrupt, "no VirtualSystem"},
		{"latin1", `<?xml version="1.0" encoding="ISO-8859-1"?><Envelope/>`, core.VMSpec{}, errs.Corrupt, "x.ovf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseDescriptor("x.ovf", []byte(tt.xml))
			if tt.code != errs.Unknown {
				wantCode(t, err, tt.code, tt.what)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := d.vm; !equalVM(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			if d.disks[0].href != "d.vmdk" || d.disks[0].fileSize != -1 {
				t.Fatalf("disk ref %+v", d.disks[0])
			}
		})
	}
}

func equalVM(a, b core.VMSpec) bool { return reflect.DeepEqual(a, b) }

// TestRawMember reads an OVA whose disk is a raw member (the fuzz seed).
func TestRawMember(t *testing.T) {
	for _, mfLast := range []bool{false, true} {
		b := rawOVA(t, mfLast)
		if err := fileErr(b); err != nil {
			t.Fatalf("file: %v", err)
		}
		if err := streamErr(b); err != nil {
			t.Fatalf("stream: %v", err)
		}
		r, err := openBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		want := core.VMSpec{Name: "r", CPUs: 1, MemoryBytes: 256 << 20, Firmware: core.UEFI, OSType: "otherLinux64Guest",
			Disks: []core.DiskSpec{{Name: "root", Size: 4096, Bootable: true}},
			NICs:  []core.NICSpec{{Name: "nic", Network: "lan", MAC: "00:50:56:00:00:01"}}}
		if !equalVM(r.VM(), want) {
			t.Fatalf("VM %+v", r.VM())
		}
		if info := r.Info(); info.Disks[0].Format != "raw" || info.Disks[0].StoredSize != 4096 {
			t.Fatalf("info %+v", info)
		}
		r.Close()
	}
}

// TestDescriptorRoundTrip renders descriptors for awkward VMs and parses
// them back.
func TestDescriptorRoundTrip(t *testing.T) {
	many := make([]core.DiskSpec, 17)
	for i := range many {
		many[i] = core.DiskSpec{Name: "d", Size: int64(i) * 1000, Position: 0}
	}
	tests := []struct {
		name  string
		vm    core.VMSpec
		nic   string
		units []int
		ctrls int
	}{
		{"own positions", core.VMSpec{Name: "a", Disks: []core.DiskSpec{{Name: "x", Size: 512, Position: 3}, {Name: "y", Size: 1024, Position: 8}}}, "E1000", []int{3, 8}, 1},
		{"clashing positions", core.VMSpec{Name: "b", Disks: []core.DiskSpec{{Size: 512, Position: 1}, {Size: 512, Position: 1}}}, "VmxNet3", []int{0, 1}, 1},
		{"unit 7", core.VMSpec{Name: "c", Disks: []core.DiskSpec{{Size: 512, Position: 7}}}, "VmxNet3", []int{0}, 1},
		{"17 disks", core.VMSpec{Name: "d", Disks: many}, "VmxNet3", []int{0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1}, 2},
		{"odd names", core.VMSpec{Name: `ü "q" <x> ]]> &amp; 'a'`, Description: "line1\nline2 ]]>", OSType: "ubuntu64Guest",
			Disks: []core.DiskSpec{{Name: "<disk>", Size: 1}}, NICs: []core.NICSpec{{Network: "n<1>"}}}, "VmxNet3", []int{0}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := makePlan(tt.vm, tt.nic)
			if err != nil {
				t.Fatal(err)
			}
			sizes := make([]int64, len(p.vm.Disks))
			x := p.descriptorXML(sizes)
			if !strings.Contains(string(x), "<rasd:ResourceSubType>"+tt.nic+"</rasd:ResourceSubType>") && len(p.vm.NICs) > 0 {
				t.Fatalf("no %s NIC in\n%s", tt.nic, x)
			}
			if n := strings.Count(string(x), "<rasd:ResourceSubType>lsilogic<"); n != tt.ctrls {
				t.Fatalf("%d controllers, want %d", n, tt.ctrls)
			}
			d, err := parseDescriptor("x.ovf", x)
			if err != nil {
				t.Fatalf("%v\n%s", err, x)
			}
			want := p.vm
			for i := range want.Disks {
				want.Disks[i].Position = tt.units[i]
				want.Disks[i].Bootable = i == 0
			}
			if !equalVM(d.vm, want) {
				t.Fatalf("got  %+v\nwant %+v", d.vm, want)
			}
		})
	}
}
