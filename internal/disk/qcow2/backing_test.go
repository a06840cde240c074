package qcow2

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

const (
	KiB = disktest.KiB
	MiB = disktest.MiB
)

// op is a write (data != nil) or a zero of [off, off+n).
type op struct {
	off, n int64
	zero   bool
}

// overlayOps covers partial and whole clusters, sub-sector zeros, the
// end of the backing file and the end of the disk; ascending and disjoint.
var overlayOps = []op{
	{off: 1000, n: 4000},
	{off: 70000, n: 130000, zero: true},
	{off: 300000, n: 3 * 65536},
	{off: MiB, n: MiB, zero: true},
	{off: 2*MiB + 512, n: 512},
	{off: 3*MiB + 100, n: 100, zero: true},
	{off: 3*MiB + 4096, n: 100},
	{off: 6*MiB - 1000, n: 2000},
	{off: 7 * MiB, n: MiB - 4096, zero: true},
	{off: 8*MiB - 100, n: 100},
}

// applyOps applies ops to w (in reverse order unless w is sequential)
// and to want.
func applyOps(t testing.TB, w disk.Writer, ops []op, want []byte) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	data := make([][]byte, len(ops))
	for i, o := range ops {
		if o.zero {
			clear(want[o.off : o.off+o.n])
			continue
		}
		data[i] = make([]byte, o.n)
		for j := range data[i] {
			data[i][j] = byte(r.Uint32()) | 1
		}
		copy(want[o.off:], data[i])
	}
	do := func(i int) {
		o := ops[i]
		var err error
		if o.zero {
			err = w.Zero(o.off, o.n)
		} else {
			_, err = w.WriteAt(data[i], o.off)
		}
		if err != nil {
			t.Fatalf("op %+v: %v", o, err)
		}
	}
	if w.Sequential() {
		for i := range ops {
			do(i)
		}
		return
	}
	for i := len(ops) - 1; i >= 0; i-- {
		do(i)
	}
}

// makeBase writes a 6 MiB base image with qemu-img in format fmt and
// returns its content.
func makeBase(t testing.TB, dir, name, fmt string) []byte {
	t.Helper()
	pt := disktest.MakePattern("base", 6*MiB, 0.7, 11)
	disktest.WriteRaw(t, pt, filepath.Join(dir, "base-src.raw"))
	disktest.Qemu(t, "convert", "-f", "raw", "-O", fmt, filepath.Join(dir, "base-src.raw"), filepath.Join(dir, name))
	os.Remove(filepath.Join(dir, "base-src.raw"))
	return pt.Bytes()
}

// TestFerryWritesOverlay: ferry writes an overlay over a qemu-written raw
// or qcow2 base; qemu reads the chain as expected and checks it clean.
func TestFerryWritesOverlay(t *testing.T) {
	disktest.QemuImg(t)
	for _, baseFmt := range []string{"raw", "qcow2"} {
		for _, v := range variants {
			if v.name == "c2m" || v.name == "zstd-c2m" {
				continue // a 2 MiB cluster covers most of the disk
			}
			t.Run(baseFmt+"/"+v.name, func(t *testing.T) {
				ctx := t.Context()
				dir := t.TempDir()
				baseName := "base." + baseFmt
				want := make([]byte, 8*MiB)
				copy(want, makeBase(t, dir, baseName, baseFmt))
				back, err := registry().Open(ctx, filepath.Join(dir, baseName), &disk.RegistryOpenOptions{Format: baseFmt})
				if err != nil {
					t.Fatal(err)
				}
				defer back.Close()
				path := filepath.Join(dir, "top.qcow2")
				w, err := registry().Create(ctx, path, "qcow2", 8*MiB, &disk.CreateOptions{
					Options: v.opts, BackingFile: baseName, BackingFormat: baseFmt, Backing: back,
				})
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				applyOps(t, w, overlayOps, want)
				if err := w.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				qi := disktest.QemuInfoOf(t, path, "qcow2")
				if qi.Backing != baseName {
					t.Fatalf("qemu-img info: backing %q, want %q", qi.Backing, baseName)
				}
				wantPath := writeFile(t, dir, "want.raw", want)
				disktest.Qemu(t, "compare", "-f", "qcow2", "-F", "raw", path, wantPath)
				checkClean(t, path)
				img := openPath(t, path)
				if info := img.Info(); info.BackingFile != baseName || info.BackingFormat != baseFmt || info.Backing == nil || info.Backing.Format != baseFmt {
					t.Fatalf("info %+v", info)
				}
				got := make([]byte, len(want))
				if _, err := img.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("ferry reads the overlay differently")
				}
			})
		}
	}
}

// TestOverlayNeedsBackingImage: a partial-cluster write over a backing
// file needs the opened backing image.
func TestOverlayNeedsBackingImage(t *testing.T) {
	dir := t.TempDir()
	w, err := registry().Create(t.Context(), filepath.Join(dir, "top.qcow2"), "qcow2", 4*MiB, &disk.CreateOptions{BackingFile: "base.raw"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(make([]byte, 65536), 65536); err != nil {
		t.Fatalf("whole-cluster write: %v", err)
	}
	_, err = w.WriteAt([]byte{1}, 10)
	wantCode(t, err, errs.FailedPrecondition, "top.qcow2", "base.raw")
}

// TestFerryReadsQemuChain: qemu builds overlays with partial clusters
// (qemu-img rebase copies only what differs), ferry reads the chain.
func TestFerryReadsQemuChain(t *testing.T) {
	disktest.QemuImg(t)
	for _, small := range []bool{false, true} {
		name := "same-size"
		if small {
			name = "smaller-base"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			// content the top must show, and two different bases
			want := &disktest.Pattern{Name: "want", Size: 9 * MiB, Seed: 21, Data: []disk.Extent{
				{Off: 0, Len: 3 * MiB}, {Off: 4*MiB + 512, Len: 1536}, {Off: 5 * MiB, Len: 2*MiB + 4096},
			}}
			oldBase := filepath.Join(dir, "old.raw")
			disktest.WriteRaw(t, want, oldBase)
			baseSize := want.Size
			if small {
				baseSize = 6 * MiB
			}
			base := &disktest.Pattern{Name: "base", Size: baseSize, Seed: 22, Data: []disk.Extent{{Off: 2 * MiB, Len: 3 * MiB}}}
			disktest.WriteRaw(t, base, filepath.Join(dir, "base.raw"))
			disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", filepath.Join(dir, "base.raw"), filepath.Join(dir, "base.qcow2"))
			// mid: an empty overlay of base.qcow2, then top over mid
			disktest.Qemu(t, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "mid.qcow2"), "9M")
			top := filepath.Join(dir, "top.qcow2")
			disktest.Qemu(t, "create", "-f", "qcow2", "-b", "old.raw", "-F", "raw", top, "9M")
			disktest.Qemu(t, "rebase", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
			img := openPath(t, top)
			disktest.VerifyImage(t, img, want)
			if img.Info().Backing == nil || img.Info().Backing.Backing == nil || img.Info().Backing.Backing.BackingFile != "" {
				t.Fatalf("chain info %+v", img.Info())
			}
			if small {
				// past the end of base: unallocated, not data
				for e, err := range img.Extents(t.Context(), 8*MiB, MiB) {
					if err != nil || e.Kind == disk.Data {
						t.Fatalf("extent %+v, %v beyond the end of the base", e, err)
					}
				}
			}
		})
	}
}

// TestBackingRefused: without OpenBacking, an image naming a backing file
// is refused with an error naming it.
func TestBackingRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "top.qcow2")
	w, err := registry().Create(t.Context(), path, "qcow2", MiB, &disk.CreateOptions{BackingFile: "secret/base.img", BackingFormat: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err = registry().Open(t.Context(), path, &disk.RegistryOpenOptions{NoBacking: true})
	wantCode(t, err, errs.FailedPrecondition, "top.qcow2", "secret/base.img")
	_, err = registry().Open(t.Context(), path, nil)
	wantCode(t, err, errs.NotFound, "", "secret/base.img")
}

// TestBackingLoop and chain depth are the opener's job; check that qcow2
// goes through it.
func TestBackingLoopAndDepth(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	mk := func(name, backing string) string {
		p := filepath.Join(dir, name)
		co := &disk.CreateOptions{BackingFile: backing}
		if backing != "" {
			co.BackingFormat = "qcow2"
		}
		w, err := registry().Create(ctx, p, "qcow2", MiB, co)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := mk("a.qcow2", "b.qcow2")
	mk("b.qcow2", "a.qcow2")
	_, err := registry().Open(ctx, a, nil)
	wantCode(t, err, errs.Corrupt, "a.qcow2", "loop")

	mk("c0.qcow2", "")
	for i := 1; i < 5; i++ {
		mk("c"+string(rune('0'+i))+".qcow2", "c"+string(rune('0'+i-1))+".qcow2")
	}
	top := filepath.Join(dir, "c4.qcow2")
	if _, err := registry().Open(ctx, top, &disk.RegistryOpenOptions{MaxChain: 4}); err == nil {
		t.Fatal("a chain of 5 opened with MaxChain 4")
	} else {
		wantCode(t, err, errs.Corrupt, "c4.qcow2", "longer")
	}
	img, err := registry().Open(ctx, top, &disk.RegistryOpenOptions{MaxChain: 5})
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
}

// TestZeroWrites: Zero over written, unwritten and backed ranges, both
// versions, random-access writer; verified by qemu.
func TestZeroWrites(t *testing.T) {
	disktest.QemuImg(t)
	for _, compat := range []string{"1.1", "0.10"} {
		for _, backed := range []bool{false, true} {
			name := compat
			if backed {
				name += "-backed"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				dir := t.TempDir()
				want := make([]byte, 8*MiB)
				co := &disk.CreateOptions{Options: map[string]string{"compat": compat}}
				if backed {
					copy(want, makeBase(t, dir, "base.raw", "raw"))
					back, err := registry().Open(ctx, filepath.Join(dir, "base.raw"), &disk.RegistryOpenOptions{Format: "raw"})
					if err != nil {
						t.Fatal(err)
					}
					defer back.Close()
					co.BackingFile, co.BackingFormat, co.Backing = "base.raw", "raw", back
				}
				path := filepath.Join(dir, "img.qcow2")
				w, err := registry().Create(ctx, path, "qcow2", 8*MiB, co)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				// write everything, then zero over it and more
				applyOps(t, w, []op{{off: 0, n: 4 * MiB}}, want)
				applyOps(t, w, []op{
					{off: 100, n: 1000, zero: true},
					{off: 65536, n: 3 * 65536, zero: true},
					{off: 2*MiB - 10, n: 3*MiB + 20, zero: true},
					{off: 7*MiB + 3, n: MiB - 3, zero: true},
				}, want)
				if err := w.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				wantPath := writeFile(t, dir, "want.raw", want)
				disktest.Qemu(t, "compare", "-f", "qcow2", "-F", "raw", path, wantPath)
				checkClean(t, path)
			})
		}
	}
}
