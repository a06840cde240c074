package formats_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/service"
)

// variant is one way of writing a disk: a format and its options, with the
// names qemu-img uses for the same.
type variant struct {
	name    string
	format  string
	options map[string]string
	qemuFmt string // qemu-img's format name
	qemuOpt string // qemu-img convert -o for the same variant
	qemuArg []string
	// check: qemu-img check supports the format.
	check bool
	// backing: write the output over a backing file (qcow2 -B).
	backing bool
	// noProbe: qemu-img cannot recognise the variant by content (a fixed
	// VHD has no footer copy at offset 0, which is all qemu's probe
	// reads), so the oracle is told the format.
	noProbe bool
	// noEmpty: qemu-img 7.2 cannot open a 0-byte image of the variant.
	noEmpty bool
}

var variants = []variant{
	{name: "raw", format: "raw", qemuFmt: "raw"},
	{name: "qcow2", format: "qcow2", qemuFmt: "qcow2", check: true},
	{name: "qcow2-zlib", format: "qcow2", options: map[string]string{"compress": "on"}, qemuFmt: "qcow2", qemuArg: []string{"-c"}, check: true},
	{name: "qcow2-zstd", format: "qcow2", options: map[string]string{"compress": "on", "compression_type": "zstd"}, qemuFmt: "qcow2", qemuOpt: "compression_type=zstd", qemuArg: []string{"-c"}, check: true},
	{name: "qcow2-backing", format: "qcow2", qemuFmt: "qcow2", check: true, backing: true},
	{name: "vhd-dynamic", format: "vhd", options: map[string]string{"subformat": "dynamic"}, qemuFmt: "vpc", qemuOpt: "subformat=dynamic,force_size=on"},
	{name: "vhd-fixed", format: "vhd", options: map[string]string{"subformat": "fixed"}, qemuFmt: "vpc", qemuOpt: "subformat=fixed,force_size=on", noProbe: true, noEmpty: true},
	{name: "vhdx-dynamic", format: "vhdx", qemuFmt: "vhdx", check: true},
	{name: "vhdx-fixed", format: "vhdx", options: map[string]string{"subformat": "fixed"}, qemuFmt: "vhdx", qemuOpt: "subformat=fixed", check: true},
	{name: "vmdk-sparse", format: "vmdk", qemuFmt: "vmdk", check: true, noEmpty: true},
	{name: "vmdk-stream", format: "vmdk", options: map[string]string{"subformat": "streamOptimized"}, qemuFmt: "vmdk", qemuOpt: "subformat=streamOptimized", check: true, noEmpty: true},
	{name: "vmdk-flat", format: "vmdk", options: map[string]string{"subformat": "monolithicFlat"}, qemuFmt: "vmdk", qemuOpt: "subformat=monolithicFlat", noEmpty: true},
	{name: "vdi-dynamic", format: "vdi", qemuFmt: "vdi", check: true},
	{name: "vdi-static", format: "vdi", options: map[string]string{"static": "on"}, qemuFmt: "vdi", qemuOpt: "static=on", check: true},
}

// matrixPatterns are the disks of the matrix: not a multiple of any block
// or cluster size, empty, fully allocated, and (long mode only) sparse over
// 4 GiB virtual.
func matrixPatterns() []*disktest.Pattern {
	var out []*disktest.Pattern
	for _, p := range disktest.Patterns(true) {
		switch p.Name {
		case "unaligned", "empty", "full":
			out = append(out, p)
		case "sparse-5g":
			if !testing.Short() {
				out = append(out, p)
			}
		}
	}
	return out
}

// TestMatrix converts every variant into every other with ferry and checks
// each output with qemu-img (info: format and exact size; compare against
// the pattern; check where qemu has one), then reads qemu-img's own output
// of every variant with ferry.
func TestMatrix(t *testing.T) {
	disktest.QemuImg(t)
	reg := formats.Registry()
	svc := service.NewImages(reg, formats.Archives(), nil)
	for _, pt := range matrixPatterns() {
		t.Run(pt.Name, func(t *testing.T) {
			dir := t.TempDir()
			ref := filepath.Join(dir, "ref.raw")
			disktest.WriteRaw(t, pt, ref)
			// a backing file that shares part of the content: the first half
			base := filepath.Join(dir, "base.qcow2")
			half := *pt
			half.Data = nil
			for _, e := range pt.Data {
				if e.Off < pt.Size/2 {
					e.Len = min(e.Len, pt.Size/2-e.Off)
					half.Data = append(half.Data, e)
				}
			}
			halfRaw := filepath.Join(dir, "half.raw")
			disktest.WriteRaw(t, &half, halfRaw)
			disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", halfRaw, base)

			// sources: ferry writes each variant from the raw reference
			srcs := map[string]string{}
			for _, v := range variants {
				if v.backing {
					continue
				}
				p := filepath.Join(dir, "src-"+v.name)
				if _, err := svc.Convert(t.Context(), service.ConvertRequest{Src: service.OpenRequest{Path: ref}, Dst: p, DstFormat: v.format, Options: v.options}); err != nil {
					t.Fatalf("write %s: %v", v.name, err)
				}
				checkWithQemu(t, p, v, pt, ref)
				srcs[v.name] = p
			}
			for _, from := range variants {
				if from.backing {
					continue
				}
				for _, to := range variants {
					t.Run(from.name+"->"+to.name, func(t *testing.T) {
						t.Parallel()
						out := filepath.Join(t.TempDir(), "out")
						req := service.ConvertRequest{Src: service.OpenRequest{Path: srcs[from.name]}, Dst: out, DstFormat: to.format, Options: to.options}
						if to.backing {
							req.BackingFile = base
						}
						if _, err := svc.Convert(t.Context(), req); err != nil {
							t.Fatal(err)
						}
						checkWithQemu(t, out, to, pt, ref)
					})
				}
			}
			// qemu-img writes each variant; ferry reads it
			for _, v := range variants {
				if v.backing {
					continue
				}
				t.Run("qemu-"+v.name, func(t *testing.T) {
					t.Parallel()
					if pt.Size == 0 && v.noEmpty {
						t.Skip("qemu-img 7.2 cannot write or open a 0-byte " + v.name)
					}
					p := filepath.Join(t.TempDir(), "q")
					args := append([]string{"convert", "-f", "raw", "-O", v.qemuFmt}, v.qemuArg...)
					if v.qemuOpt != "" {
						args = append(args, "-o", v.qemuOpt)
					}
					disktest.Qemu(t, append(args, ref, p)...)
					img, err := reg.Open(t.Context(), p, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer img.Close()
					if got := img.Info().Format; got != v.format {
						t.Fatalf("probed as %s, want %s", got, v.format)
					}
					disktest.VerifyImage(t, img, pt)
				})
			}
			// qemu-img writes an overlay over the base; ferry reads the chain
			t.Run("qemu-qcow2-backing", func(t *testing.T) {
				p := filepath.Join(dir, "qemu-overlay.qcow2")
				disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", "-B", base, "-F", "qcow2", ref, p)
				img, err := reg.Open(t.Context(), p, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				if img.Info().BackingFile == "" {
					t.Fatal("overlay has no backing file")
				}
				disktest.VerifyImage(t, img, pt)
			})
		})
	}
}

// checkWithQemu checks an image ferry wrote: qemu-img info (format, exact
// size), compare against the reference, check where qemu supports it.
func checkWithQemu(t *testing.T, path string, v variant, pt *disktest.Pattern, ref string) {
	t.Helper()
	if pt.Size == 0 && v.noEmpty {
		return // qemu-img cannot open it; ferry's own reading is checked elsewhere
	}
	probe := ""
	if v.noProbe {
		probe = v.qemuFmt
	}
	qi := disktest.QemuInfoOf(t, path, probe)
	if qi.Format != v.qemuFmt {
		t.Fatalf("%s: qemu-img sees format %s, want %s", path, qi.Format, v.qemuFmt)
	}
	if qi.VirtualSize != pt.Size {
		t.Fatalf("%s: qemu-img sees %d bytes, want %d", path, qi.VirtualSize, pt.Size)
	}
	if v.backing && qi.Backing == "" {
		t.Fatalf("%s: no backing file recorded", path)
	}
	if code, out := disktest.QemuExit(t, "compare", "-f", v.qemuFmt, "-F", "raw", path, ref); code != 0 {
		t.Fatalf("qemu-img compare %s: exit %d: %s", path, code, out)
	}
	if v.check {
		if code, out := disktest.QemuExit(t, "check", "-f", v.qemuFmt, path); code != 0 {
			t.Fatalf("qemu-img check %s: exit %d: %s", path, code, strings.TrimSpace(string(out)))
		}
	}
}
