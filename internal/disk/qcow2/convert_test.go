package qcow2

import (
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestConvert runs disk.Convert (which zero-detects in whole clusters for
// a Granular writer) from raw into qcow2, plain and compressed, and from
// the result back to raw; over a base image, only differences are written.
func TestConvert(t *testing.T) {
	disktest.QemuImg(t)
	pt := disktest.MakePattern("conv", 24*MiB, 0.4, 41)
	for _, v := range []variant{variants[0], variants[2], variants[5], variants[6]} {
		t.Run(v.name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			disktest.WriteRaw(t, pt, src)
			in, err := registry().Open(ctx, src, &disk.RegistryOpenOptions{Format: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			path := filepath.Join(dir, "out.qcow2")
			w, err := registry().Create(ctx, path, "qcow2", in.Size(), &disk.CreateOptions{Options: v.opts})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := disk.Convert(ctx, w, in, nil); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			disktest.Qemu(t, "compare", "-f", "qcow2", "-F", "raw", path, src)
			checkClean(t, path)
			disktest.VerifyImage(t, openPath(t, path), pt)

			// an overlay of the result holding a changed copy
			pt2 := disktest.MakePattern("conv2", 24*MiB, 0.3, 42)
			src2 := filepath.Join(dir, "src2.raw")
			disktest.WriteRaw(t, pt2, src2)
			in2, err := registry().Open(ctx, src2, &disk.RegistryOpenOptions{Format: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			defer in2.Close()
			base := openPath(t, path)
			top := filepath.Join(dir, "top.qcow2")
			w2, err := registry().Create(ctx, top, "qcow2", in2.Size(), &disk.CreateOptions{
				Options: v.opts, BackingFile: "out.qcow2", BackingFormat: "qcow2", Backing: base,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer w2.Close()
			if _, err := disk.Convert(ctx, w2, in2, &disk.ConvertOptions{Base: base}); err != nil {
				t.Fatal(err)
			}
			if err := w2.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			disktest.Qemu(t, "compare", "-f", "qcow2", "-F", "raw", top, src2)
			checkClean(t, top)
		})
	}
}
