package vdi

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// variants are the kinds of image ferry writes, with the create options of
// ferry and of qemu-img for each.
var variants = []struct {
	name      string
	opts      map[string]string
	qemuOpts  string
	subformat string
}{
	{"dynamic", nil, "", "dynamic"},
	{"static", map[string]string{"static": "on"}, "static=on", "fixed"},
}

func TestConformance(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			disktest.TestFormat(t, Format(), disktest.FormatOptions{Create: v.opts})
		})
	}
}

// writeFerry writes pt into a new image at path with the registry.
func writeFerry(t *testing.T, pt *disktest.Pattern, path string, opts map[string]string) {
	t.Helper()
	w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "vdi", pt.Size, &disk.CreateOptions{Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := disktest.WritePattern(t.Context(), w, pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestQemuReadsFerry: what ferry writes, qemu-img reads as the same disk and
// finds clean.
func TestQemuReadsFerry(t *testing.T) {
	disktest.QemuImg(t)
	for _, v := range variants {
		for _, pt := range disktest.Patterns(testing.Short()) {
			t.Run(v.name+"/"+pt.Name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "img.vdi")
				writeFerry(t, pt, path, v.opts)
				qi := disktest.QemuInfoOf(t, path, "")
				if qi.Format != "vdi" || qi.VirtualSize != pt.Size {
					t.Fatalf("qemu-img info: format %q size %d, want vdi %d", qi.Format, qi.VirtualSize, pt.Size)
				}
				if qi.ClusterSize != defaultBlockSize {
					t.Fatalf("qemu-img info: cluster size %d, want %d", qi.ClusterSize, defaultBlockSize)
				}
				ref := filepath.Join(dir, "ref.raw")
				disktest.WriteRaw(t, pt, ref)
				disktest.Qemu(t, "compare", "-f", "vdi", "-F", "raw", path, ref)
				if code, out := disktest.QemuExit(t, "check", "-f", "vdi", path); code != 0 {
					t.Fatalf("qemu-img check: exit %d\n%s", code, out)
				}
			})
		}
	}
}

// TestFerryReadsQemu: what qemu-img writes, ferry reads as the same disk and
// finds clean.
func TestFerryReadsQemu(t *testing.T) {
	disktest.QemuImg(t)
	for _, v := range variants {
		for _, pt := range disktest.Patterns(testing.Short()) {
			t.Run(v.name+"/"+pt.Name, func(t *testing.T) {
				path := disktest.QemuMake(t, pt, "vdi", v.qemuOpts)
				f, err := disk.OpenFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !Format().Probe(f) {
					f.Close()
					t.Fatal("probe does not recognise qemu's vdi")
				}
				img, err := Format().Open(t.Context(), f, &disk.OpenOptions{})
				if err != nil {
					f.Close()
					t.Fatal(err)
				}
				defer img.Close()
				disktest.VerifyImage(t, img, pt)
				info := img.Info()
				if info.Specific["subformat"] != v.subformat || info.ClusterSize != defaultBlockSize {
					t.Fatalf("info %+v: want subformat %s, cluster size 1 MiB", info, v.subformat)
				}
				res, err := img.(disk.Checker).Check(t.Context())
				if err != nil || !res.Clean() {
					t.Fatalf("check: %+v, %v", res, err)
				}
			})
		}
	}
}

// TestOddSizes: sizes that are not a multiple of 512 round up, as qemu's do.
func TestOddSizes(t *testing.T) {
	disktest.QemuImg(t)
	for _, size := range []int64{1, 1000, disktest.MiB + 1, 3*disktest.MiB - 100} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			want := (size + 511) &^ 511
			dir := t.TempDir()
			path := filepath.Join(dir, "img.vdi")
			pt := &disktest.Pattern{Name: "odd", Size: size, Seed: 5, Data: []disk.Extent{{Off: 0, Len: size}}}
			writeFerry(t, pt, path, nil)
			if qi := disktest.QemuInfoOf(t, path, "vdi"); qi.VirtualSize != want {
				t.Fatalf("qemu-img info: size %d, want %d", qi.VirtualSize, want)
			}
			img, err := disk.NewRegistry(Format()).Open(t.Context(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			padded := *pt
			padded.Size = want
			disktest.VerifyImage(t, img, &padded)
		})
	}
}
