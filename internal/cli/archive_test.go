package cli

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestArchiveCommands builds an XVA from two disks, describes it, and takes
// it apart again from the file and from a (gzip-compressed) stream.
func TestArchiveCommands(t *testing.T) {
	dir := t.TempDir()
	a := writeRaw(t, dir, "a.raw", &disktest.Pattern{Name: "a", Size: 5 << 20, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 2 << 20}}})
	b := writeRaw(t, dir, "b.raw", &disktest.Pattern{Name: "b", Size: 3<<20 + 512, Seed: 2, Data: []disk.Extent{{Off: 1 << 20, Len: 4096}}})
	xva := filepath.Join(dir, "vm.xva")
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, errs := run(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		return out
	}
	same := func(x, y string) {
		t.Helper()
		if code, out, errs := run(t, "image", "compare", x, y); code != 0 {
			t.Fatalf("compare %s %s: %d %s %s", x, y, code, out, errs)
		}
	}
	mustRun("image", "convert", "-O", "xva", "--vm-name", "web", "--cpus", "4", "--memory", "3G", "--firmware", "uefi", a, b, xva)

	var info struct {
		Format string `json:"format"`
		VM     struct {
			Name        string `json:"name"`
			CPUs        int    `json:"cpus"`
			MemoryBytes int64  `json:"memory_bytes"`
			Firmware    string `json:"firmware"`
		} `json:"vm"`
		Disks []struct {
			Name        string `json:"name"`
			VirtualSize int64  `json:"virtual-size"`
		} `json:"disks"`
	}
	if err := json.Unmarshal([]byte(mustRun("image", "info", "--output", "json", xva)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "xva" || info.VM.Name != "web" || info.VM.CPUs != 4 || info.VM.MemoryBytes != 3<<30 || info.VM.Firmware != "uefi" ||
		len(info.Disks) != 2 || info.Disks[0].Name != "a" || info.Disks[1].VirtualSize != 3<<20+512 {
		t.Fatalf("info %+v", info)
	}
	if out := mustRun("image", "info", xva); !strings.Contains(out, "[1] b: raw") {
		t.Fatalf("human info:\n%s", out)
	}

	mustRun("image", "convert", "-O", "raw", xva, filepath.Join(dir, "all.raw"))
	same(a, filepath.Join(dir, "all-0.raw"))
	same(b, filepath.Join(dir, "all-1.raw"))
	mustRun("image", "convert", "--disk", "b", "-O", "raw", xva, filepath.Join(dir, "b2.raw"))
	same(b, filepath.Join(dir, "b2.raw"))
	if code, _, errs := run(t, "image", "convert", "--disk", "7", "-O", "raw", xva, filepath.Join(dir, "x.raw")); code == 0 || !strings.Contains(errs, "has 2 disks") {
		t.Fatalf("bad --disk: %d %s", code, errs)
	}

	// the same archive, gzip-compressed, on standard input
	raw, err := os.ReadFile(xva)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	var out, errb bytes.Buffer
	if code := Execute(t.Context(), []string{"image", "convert", "--disk", "0", "-O", "raw", "-", filepath.Join(dir, "s.raw")}, &gz, &out, &errb); code != 0 {
		t.Fatalf("stdin: %d %s", code, errb.String())
	}
	same(a, filepath.Join(dir, "s.raw"))

	// archive to archive through standard output
	out.Reset()
	if code := Execute(t.Context(), []string{"image", "convert", "-O", "xva", "-", "-"}, bytes.NewReader(raw), &out, &errb); code != 0 {
		t.Fatalf("stdin to stdout: %d %s", code, errb.String())
	}
	again := filepath.Join(dir, "again.xva")
	os.WriteFile(again, out.Bytes(), 0o644)
	mustRun("image", "convert", "--disk", "1", "-O", "raw", again, filepath.Join(dir, "again-b.raw"))
	same(b, filepath.Join(dir, "again-b.raw"))

	// a corrupt chunk is named
	bad := append([]byte{}, raw...)
	for k := len(bad) / 2; k < len(bad)/2+64; k++ { // inside disk 0's data
		bad[k] ^= 0xff
	}
	badPath := filepath.Join(dir, "bad.xva")
	os.WriteFile(badPath, bad, 0o644)
	code, _, errs := run(t, "image", "convert", "-O", "raw", badPath, filepath.Join(dir, "bad.raw"))
	if code == 0 || !strings.Contains(errs, "corrupt") || !strings.Contains(errs, "chunk") {
		t.Fatalf("corrupt archive: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad-0.raw")); err == nil {
		t.Error("the corrupt disk's output was left behind")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "ferry-tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}
