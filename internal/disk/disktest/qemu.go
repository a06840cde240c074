package disktest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireQemuEnv, when set to 1, turns a missing qemu-img into a test
// failure instead of a skip. CI sets it so that the oracle tests cannot
// silently vanish.
const RequireQemuEnv = "FERRY_REQUIRE_QEMU"

// QemuImg returns the path of qemu-img, or skips the test when it is not
// installed (fails instead when FERRY_REQUIRE_QEMU=1).
func QemuImg(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv(RequireQemuEnv) == "1" {
			t.Fatalf("qemu-img not found and %s=1", RequireQemuEnv)
		}
		t.Skip("qemu-img not installed (apt-get install qemu-utils)")
	}
	return p
}

// Qemu runs qemu-img with args and returns its combined output, failing
// the test on a non-zero exit.
func Qemu(t testing.TB, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), QemuImg(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
	return out
}

// QemuExit runs qemu-img and returns its exit code and output without
// failing.
func QemuExit(t testing.TB, args ...string) (int, []byte) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), QemuImg(t), args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out
	}
	if err != nil {
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return 0, out
}

// QemuInfo is the part of `qemu-img info --output json` the tests use.
type QemuInfo struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size"`
	Backing     string `json:"backing-filename"`
	Specific    struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	} `json:"format-specific"`
}

// QemuInfoOf runs qemu-img info on path, with format fixed if not "".
func QemuInfoOf(t testing.TB, path, format string) QemuInfo {
	t.Helper()
	args := []string{"info", "--output", "json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out := Qemu(t, append(args, path)...)
	var qi QemuInfo
	if err := json.Unmarshal(out, &qi); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", path, err, out)
	}
	return qi
}

// WriteRaw writes pt as a sparse raw file at path.
func WriteRaw(t testing.TB, pt *Pattern, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(pt.Size); err != nil {
		t.Fatal(err)
	}
	for _, e := range pt.Data {
		for off := e.Off; off < e.End(); off += 4 * MiB {
			b := make([]byte, min(4*MiB, e.End()-off))
			pt.Fill(off, b)
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// QemuMake writes pt with qemu-img convert into a new image of format fmt
// (qemu's name) with the given -o options and returns its path.
func QemuMake(t testing.TB, pt *Pattern, fmt string, opts string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	WriteRaw(t, pt, raw)
	out := filepath.Join(dir, "img."+fmt)
	args := []string{"convert", "-f", "raw", "-O", fmt}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, extra...)
	Qemu(t, append(args, raw, out)...)
	os.Remove(raw)
	return out
}
