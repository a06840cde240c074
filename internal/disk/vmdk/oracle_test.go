package vmdk

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// qemu-img cannot open a VMDK of size 0 (it takes a zero capacity for a
// descriptor, or asserts), so the oracle tests leave the empty pattern out.
func oraclePatterns() []*disktest.Pattern {
	var ps []*disktest.Pattern
	for _, pt := range disktest.Patterns(testing.Short()) {
		if pt.Size > 0 {
			ps = append(ps, pt)
		}
	}
	return ps
}

// TestQemuReadsFerry: ferry writes, qemu-img info, compare and check judge.
func TestQemuReadsFerry(t *testing.T) {
	disktest.QemuImg(t)
	for _, sub := range []string{MonolithicSparse, StreamOptimized, MonolithicFlat} {
		for _, pt := range oraclePatterns() {
			t.Run(sub+"/"+pt.Name, func(t *testing.T) {
				dir := t.TempDir()
				path := writeImage(t, dir, "disk.vmdk", sub, pt)
				qi := disktest.QemuInfoOf(t, path, "")
				if qi.Format != "vmdk" || qi.VirtualSize != roundSector(pt.Size) {
					t.Fatalf("qemu-img info: format %s size %d, want vmdk %d", qi.Format, qi.VirtualSize, roundSector(pt.Size))
				}
				if ct := qi.Specific.Data["create-type"]; ct != sub {
					t.Fatalf("qemu-img info: create-type %v, want %s", ct, sub)
				}
				raw := filepath.Join(dir, "src.raw")
				want := *pt
				want.Size = roundSector(pt.Size)
				disktest.WriteRaw(t, &want, raw)
				disktest.Qemu(t, "compare", "-q", "-f", "vmdk", "-F", "raw", path, raw)
				if sub != MonolithicFlat {
					if code, out := disktest.QemuExit(t, "check", "-f", "vmdk", path); code != 0 {
						t.Fatalf("qemu-img check: exit %d\n%s", code, out)
					}
				}
			})
		}
	}
}

// TestFerryReadsQemu: qemu-img writes every subformat it has, ferry reads.
func TestFerryReadsQemu(t *testing.T) {
	disktest.QemuImg(t)
	for _, sub := range []string{MonolithicSparse, StreamOptimized, MonolithicFlat, "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		for _, pt := range oraclePatterns() {
			t.Run(sub+"/"+pt.Name, func(t *testing.T) {
				path := disktest.QemuMake(t, pt, "vmdk", "subformat="+sub)
				img := openPath(t, path)
				want := *pt
				want.Size = roundSector(pt.Size)
				verifyImage(t, img, &want)
				checkClean(t, img)
				info := img.Info()
				if info.Specific["create-type"] != sub {
					t.Fatalf("create-type %v, want %s", info.Specific["create-type"], sub)
				}
				qi := disktest.QemuInfoOf(t, path, "vmdk")
				if info.Specific["cid"] != int64(qi.Specific.Data["cid"].(float64)) {
					t.Fatalf("cid %v, qemu says %v", info.Specific["cid"], qi.Specific.Data["cid"])
				}
				if exts := info.Specific["extents"].([]map[string]any); len(exts) != len(qi.Specific.Data["extents"].([]any)) {
					t.Fatalf("%d extents, qemu says %d", len(exts), len(qi.Specific.Data["extents"].([]any)))
				}
			})
		}
	}
}

// TestFerryReadsQemuStream: qemu's streamOptimized layout (tables at the
// front, no markers after the grains) read front to back with OpenStream.
func TestFerryReadsQemuStream(t *testing.T) {
	disktest.QemuImg(t)
	for _, pt := range oraclePatterns() {
		t.Run(pt.Name, func(t *testing.T) {
			path := disktest.QemuMake(t, pt, "vmdk", "subformat=streamOptimized")
			want := *pt
			want.Size = roundSector(pt.Size)
			verifyStream(t, mustOpenStream(t, path), &want)
		})
	}
}

// TestDeltaDisk: a qemu-made delta disk over a ferry-made parent reads as
// the parent with the delta's writes on top; without OpenBacking it is
// refused naming the parent.
func TestDeltaDisk(t *testing.T) {
	disktest.QemuImg(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	dir := t.TempDir()
	base := &disktest.Pattern{Name: "base", Size: 8 * mib, Seed: 9, Data: []disk.Extent{{Off: 0, Len: 3 * mib}, {Off: 5 * mib, Len: mib}}}
	writeImage(t, dir, "base.vmdk", MonolithicSparse, base)
	child := filepath.Join(dir, "child.vmdk")
	disktest.Qemu(t, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	if out, err := exec.CommandContext(t.Context(), "qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 1M 64k", "-c", "write -z 2M 64k", child).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	img := openPath(t, child)
	want := base.Bytes()
	copy(want[mib:], bytes.Repeat([]byte{0x5a}, 64*1024))
	clear(want[2*mib : 2*mib+64*1024])
	got := make([]byte, len(want))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("delta disk does not read as parent plus delta")
	}
	var kinds []disk.ExtentKind
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, e.Kind)
	}
	if len(kinds) < 3 {
		t.Fatalf("extents %v: the parent's data and holes should show through", kinds)
	}
	info := img.Info()
	if info.BackingFile != "base.vmdk" || info.Backing == nil || info.Backing.VirtualSize != base.Size {
		t.Fatalf("info: backing %q %+v", info.BackingFile, info.Backing)
	}
	f, err := disk.OpenFile(child)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Format().Open(t.Context(), f, &disk.OpenOptions{})
	wantErr(t, err, errs.FailedPrecondition, "base.vmdk")
}

// TestVmdkstreamOracle: python3-vmdkstream, a second writer of VMware's
// stream layout (with the "# Disk Descriptor File" spelling and a short
// last grain), read by Open and OpenStream.
func TestVmdkstreamOracle(t *testing.T) {
	script := "/usr/lib/python3/dist-packages/VMDKstream.py"
	py, err := exec.LookPath("python3")
	if _, serr := os.Stat(script); serr != nil || err != nil {
		t.Skip("python3-vmdkstream not installed")
	}
	for _, pt := range oraclePatterns() {
		if pt.Size > 64*mib {
			continue // vmdkstream reads every byte of its input in Python
		}
		t.Run(pt.Name, func(t *testing.T) {
			dir := t.TempDir()
			raw, path := filepath.Join(dir, "src.raw"), filepath.Join(dir, "out.vmdk")
			disktest.WriteRaw(t, pt, raw)
			if out, err := exec.CommandContext(t.Context(), py, script, raw, path).CombinedOutput(); err != nil {
				t.Fatalf("VMDKstream: %v\n%s", err, out)
			}
			want := *pt
			want.Size = roundSector(pt.Size)
			img := openPath(t, path)
			verifyImage(t, img, &want)
			checkClean(t, img)
			verifyStream(t, mustOpenStream(t, path), &want)
		})
	}
}

// TestConvertToStream: disk.Convert from a qemu-made monolithicSparse into
// ferry's streamOptimized writer; qemu-img compares the two.
func TestConvertToStream(t *testing.T) {
	disktest.QemuImg(t)
	var pt *disktest.Pattern
	for _, p := range disktest.Patterns(false) {
		if p.Name == "mixed" {
			pt = p
		}
	}
	src := disktest.QemuMake(t, pt, "vmdk", "subformat=monolithicSparse")
	img := openPath(t, src)
	dst := filepath.Join(t.TempDir(), "out.vmdk")
	w, err := disk.NewRegistry(Format()).Create(t.Context(), dst, "vmdk", img.Size(), &disk.CreateOptions{Options: map[string]string{"subformat": StreamOptimized}, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := disk.Convert(t.Context(), w, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	disktest.Qemu(t, "compare", "-q", src, dst)
	if code, out := disktest.QemuExit(t, "check", dst); code != 0 {
		t.Fatalf("qemu-img check: exit %d\n%s", code, out)
	}
}
