package vmdk

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// suiteMax keeps the patterns that disktest.VerifyImage misjudges for a
// writer that drops all-zero grains (see verifyImage) out of
// disktest.TestFormat; conformBig runs them with verifyImage.
const suiteMax = 32 * mib

func TestFormat(t *testing.T) {
	for _, sub := range []string{MonolithicSparse, StreamOptimized} {
		t.Run(sub, func(t *testing.T) {
			disktest.TestFormat(t, Format(), disktest.FormatOptions{
				Create:       map[string]string{"subformat": sub},
				SizeRounding: roundSector,
				MaxSize:      suiteMax,
			})
			for _, pt := range disktest.Patterns(testing.Short()) {
				if pt.Size > suiteMax {
					t.Run(pt.Name, func(t *testing.T) { conform(t, sub, pt, "img") })
				}
			}
		})
	}
}

// TestFormatFlat is the conformance suite for monolithicFlat, which
// disktest.TestFormat cannot run: it expects one output file, and
// monolithicFlat writes two (img and img-flat.vmdk).
func TestFormatFlat(t *testing.T) {
	for _, pt := range disktest.Patterns(testing.Short()) {
		t.Run(pt.Name, func(t *testing.T) { conform(t, MonolithicFlat, pt, "img", "img-flat.vmdk") })
	}
	t.Run("abort", func(t *testing.T) {
		dir := t.TempDir()
		w, err := disk.NewRegistry(Format()).Create(t.Context(), filepath.Join(dir, "img"), "vmdk", 4*mib, opts(MonolithicFlat))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("close without commit: %v", err)
		}
		disktest.AssertOnly(t, dir)
	})
	t.Run("zero", func(t *testing.T) {
		dir := t.TempDir()
		pt := &disktest.Pattern{Name: "zeroed", Size: 4 * mib}
		w, err := disk.NewRegistry(Format()).Create(t.Context(), filepath.Join(dir, "img.vmdk"), "vmdk", pt.Size, opts(MonolithicFlat))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 3*int(mib)), 0); err != nil {
			t.Fatal(err)
		}
		if err := w.Zero(4096, 3*mib-8192); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		img := openPath(t, filepath.Join(dir, "img.vmdk"))
		got := make([]byte, 3*mib)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 3*mib)
		copy(want, bytes.Repeat([]byte{7}, 4096))
		copy(want[3*mib-4096:], bytes.Repeat([]byte{7}, 4096))
		if !bytes.Equal(got, want) {
			t.Fatal("zeroed range does not read back as zeros")
		}
	})
}

// conform writes pt, commits, checks the directory holds exactly files,
// then probes, opens, verifies and checks the image, as
// disktest.TestFormat does.
func conform(t *testing.T, sub string, pt *disktest.Pattern, files ...string) {
	dir := t.TempDir()
	path := writeImage(t, dir, files[0], sub, pt)
	disktest.AssertOnly(t, dir, files...)
	f, err := disk.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !probe(f) {
		f.Close()
		t.Fatalf("probe does not recognise a %s image ferry wrote", sub)
	}
	img, err := Format().Open(t.Context(), f, &disk.OpenOptions{})
	if err != nil {
		f.Close()
		t.Fatalf("open: %v", err)
	}
	defer img.Close()
	want := *pt
	want.Size = roundSector(pt.Size)
	verifyImage(t, img, &want)
	info := img.Info()
	if info.Format != "vmdk" || info.VirtualSize != want.Size || info.Specific["create-type"] != sub {
		t.Fatalf("info %+v: want vmdk, %d bytes, %s", info, want.Size, sub)
	}
	checkClean(t, img)
}
