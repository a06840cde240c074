package formats_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/errs"
)

// samplesDir returns the directory of qemu's sample images
// (scripts/fetch-samples), or skips. FERRY_REQUIRE_QEMU=1 makes a missing
// directory a failure.
func samplesDir(t *testing.T) string {
	dir := os.Getenv("FERRY_SAMPLES")
	if dir == "" {
		if os.Getenv(disktest.RequireQemuEnv) == "1" {
			t.Fatal("FERRY_SAMPLES not set (scripts/fetch-samples)")
		}
		t.Skip("FERRY_SAMPLES not set; run scripts/fetch-samples")
	}
	return dir
}

// TestSamples reads images that ferry did not write (Hyper-V, Virtual PC,
// disk2vhd, VMware, fuzzed files) and checks each against qemu-img: same
// format, same size (or the documented difference), same content; or, for
// damaged files, a clear refusal.
func TestSamples(t *testing.T) {
	dir := samplesDir(t)
	qemu := disktest.QemuImg(t)
	reg := formats.Registry()
	tests := []struct {
		file   string
		format string
		// qemuSize, when non-zero, is the size qemu reports where ferry
		// deliberately differs (VHD: ferry uses current_size, qemu the CHS
		// product for Virtual PC's creator).
		qemuSize int64
		size     int64
		// refuse: ferry must refuse with this code.
		refuse errs.Code
		// replay: qemu needs the log replayed on a writable copy first.
		replay bool
	}{
		{file: "hyperv2012r2-dynamic.vhd", format: "vhd", size: 136365211648},
		{file: "virtualpc-dynamic.vhd", format: "vhd", size: 136365211648, qemuSize: 136363130880},
		{file: "d2v-zerofilled.vhd", format: "vhd", size: 263454720},
		{file: "test-disk2vhd.vhdx", format: "vhdx", size: 268435456},
		{file: "iotest-dynamic-1G.vhdx", format: "vhdx", size: 1 << 30},
		{file: "iotest-dirtylog-10G-4M.vhdx", format: "vhdx", size: 10 << 30, replay: true},
		{file: "iotest-version3.vmdk", format: "vmdk", size: 16 << 30},
		{file: "afl5.img", refuse: errs.Corrupt},
		{file: "afl9.vmdk", refuse: errs.Corrupt},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join(dir, tt.file)
			img, err := reg.Open(t.Context(), path, &disk.RegistryOpenOptions{NoBacking: true})
			if tt.refuse != errs.Unknown {
				if err == nil {
					img.Close()
					t.Fatalf("opened a damaged image")
				}
				if !errs.Is(err, tt.refuse) || !strings.Contains(err.Error(), tt.file) {
					t.Fatalf("error %q: want code %v naming the file", err, tt.refuse)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got := img.Info().Format; got != tt.format {
				t.Fatalf("format %s, want %s", got, tt.format)
			}
			if img.Size() != tt.size {
				t.Fatalf("size %d, want %d", img.Size(), tt.size)
			}
			src := path
			if tt.replay {
				// qemu replays a VHDX log only when it may write: do it on a copy
				src = filepath.Join(t.TempDir(), tt.file)
				if out, err := exec.Command("cp", "--sparse=always", path, src).CombinedOutput(); err != nil {
					t.Fatalf("cp: %v %s", err, out)
				}
				disktest.Qemu(t, "check", "-r", "all", src)
			}
			qi := disktest.QemuInfoOf(t, src, "")
			want := tt.size
			if tt.qemuSize != 0 {
				want = tt.qemuSize
			}
			if qi.VirtualSize != want {
				t.Fatalf("qemu-img size %d, want %d", qi.VirtualSize, want)
			}
			// content: qemu-img's raw conversion against ferry's reading
			ref := filepath.Join(t.TempDir(), "ref.raw")
			if out, err := exec.CommandContext(t.Context(), qemu, "convert", "-O", "raw", src, ref).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v %s", err, out)
			}
			refImg, err := reg.Open(t.Context(), ref, &disk.RegistryOpenOptions{Format: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			defer refImg.Close()
			res, err := disk.Compare(t.Context(), img, refImg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Identical {
				t.Fatalf("content differs from qemu-img's at offset %d", res.Offset)
			}
		})
	}
}
