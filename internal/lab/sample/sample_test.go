package sample

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// Environment switches shared with the rest of ferry's tests: with 1, a
// missing tool or QEMU fails the test instead of skipping it.
const (
	requireToolsEnv = "FERRY_REQUIRE_TOOLS"
	requireQemuEnv  = "FERRY_REQUIRE_QEMU"
)

// buildOrSkip builds (or finds cached) the sample image in the shared
// cache, so that CI and repeated runs build it once.
func buildOrSkip(t *testing.T) Result {
	t.Helper()
	if err := Check(); err != nil {
		if os.Getenv(requireToolsEnv) == "1" {
			t.Fatalf("%v (%s=1)", err, requireToolsEnv)
		}
		t.Skip(err)
	}
	start := time.Now()
	r, err := Build(t.Context(), Options{CacheDir: DefaultCacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sample image %s (kernel %s) in %v", r.Path, r.Kernel, time.Since(start).Round(time.Millisecond))
	return r
}

func TestLabSampleBuild(t *testing.T) {
	r := buildOrSkip(t)
	if r.Size != DiskSize || !strings.Contains(r.Kernel, "-cloud-amd64") || filepath.Base(r.Path) != "sample-linux-"+r.Kernel+".raw" {
		t.Fatalf("result %+v", r)
	}
	f, err := os.Open(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() != DiskSize {
		t.Errorf("file size %d, want %d", st.Size(), DiskSize)
	}
	// Sparse: little of the 1 GiB is allocated.
	if sys, ok := st.Sys().(interface{ Blocks() int64 }); ok && sys.Blocks()*512 > 128<<20 {
		t.Errorf("%d bytes allocated: not sparse", sys.Blocks()*512)
	}
	sector := make([]byte, 512)
	if _, err := io.ReadFull(f, sector); err != nil {
		t.Fatal(err)
	}
	p, err := ParseMBR(sector)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Partition{Bootable: true, Type: 6, Start: 2048, Sectors: (64 << 20) / 512}); p != want {
		t.Errorf("partition 1 %+v, want %+v", p, want)
	}
	mbr, err := os.ReadFile(tools[len(tools)-1].lookup())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sector[:mbrCodeLength], mbr[:min(len(mbr), mbrCodeLength)]) {
		t.Error("the boot code is not syslinux's mbr.bin")
	}
	// The partition is FAT16.
	boot := make([]byte, 512)
	if _, err := f.ReadAt(boot, 2048*512); err != nil {
		t.Fatal(err)
	}
	if string(boot[54:62]) != "FAT16   " || boot[510] != 0x55 || boot[511] != 0xAA {
		t.Errorf("partition boot sector: fs type %q, signature %x", boot[54:62], boot[510:512])
	}

	if qemuImg, err := exec.LookPath("qemu-img"); err == nil {
		out, err := exec.CommandContext(t.Context(), qemuImg, "info", "--output", "json", r.Path).Output()
		if err != nil {
			t.Fatal(err)
		}
		var info struct {
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual-size"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatal(err)
		}
		if info.Format != "raw" || info.VirtualSize != 1<<30 {
			t.Errorf("qemu-img info: %s", out)
		}
	} else if os.Getenv(requireQemuEnv) == "1" {
		t.Errorf("qemu-img not found and %s=1", requireQemuEnv)
	}

	// A second build returns the cached file at once, untouched.
	start := time.Now()
	r2, err := Build(t.Context(), Options{CacheDir: filepath.Dir(r.Path)})
	if err != nil || r2 != r {
		t.Fatalf("second build: %+v %v", r2, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cached build took %v", d)
	}
	if st2, _ := os.Stat(r.Path); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("the cached image was rewritten")
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(r.Path), ".build-*"))
	for _, l := range leftovers {
		if st, err := os.Stat(l); err == nil && time.Since(st.ModTime()) < time.Minute {
			t.Errorf("build directory left behind: %s", l)
		}
	}
}

// TestLabSampleBoot boots the image under QEMU (TCG): the guest prints the
// marker with values it computed, then powers off on the ACPI power
// button.
func TestLabSampleBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under TCG (about 10 s)")
	}
	r := buildOrSkip(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv(requireQemuEnv) == "1" {
			t.Fatalf("qemu-system-x86_64 not found and %s=1", requireQemuEnv)
		}
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	qmpSock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.CommandContext(t.Context(), qemu, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-drive", "file="+r.Path+",format=raw,snapshot=on", "-serial", "stdio",
		"-qmp", "unix:"+qmpSock+",server=on,wait=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 64)
	var console bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	defer func() {
		cmd.Process.Kill()
		for range lines {
		}
	}()

	re := regexp.MustCompile(regexp.QuoteMeta(Marker) + ` kernel=(\S+) answer=(\d+) uptime=([0-9.]+)`)
	deadline := time.After(90 * time.Second)
	var m []string
	for m == nil {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("QEMU exited before the marker: %s\nconsole:\n%s", stderr.String(), console.String())
			}
			console.WriteString(l + "\n")
			m = re.FindStringSubmatch(l)
		case <-deadline:
			t.Fatalf("no %s line in 90 s; console:\n%s", Marker, console.String())
		}
	}
	t.Logf("marker after %v: %s", time.Since(start).Round(time.Millisecond), m[0])
	if m[1] != r.Kernel || m[2] != "42" {
		t.Errorf("guest said kernel=%s answer=%s, want %s and 42", m[1], m[2], r.Kernel)
	}
	if up, err := strconv.ParseFloat(m[3], 64); err != nil || up <= 0 {
		t.Errorf("uptime %q", m[3])
	}
	if strings.Contains(console.String(), "Kernel panic") {
		t.Errorf("panic on the console:\n%s", console.String())
	}

	// The ACPI power button powers the guest off: QEMU exits by itself.
	if err := qmp(qmpSock, "system_powerdown"); err != nil {
		t.Fatal(err)
	}
	deadline = time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if ok {
				console.WriteString(l + "\n")
				continue
			}
			if err := <-exited; err != nil {
				t.Fatalf("QEMU after power-off: %v %s", err, stderr.String())
			}
			if !strings.Contains(console.String(), "power button pressed") {
				t.Errorf("no word of the power button:\n%s", console.String())
			}
			return
		case <-deadline:
			t.Fatalf("the guest did not power off in 30 s; console:\n%s", console.String())
		}
	}
}

// qmp connects to a QMP socket and runs one command.
func qmp(sock, command string) error {
	// QEMU made the socket before it started the guest.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil {
		return err
	}
	for _, c := range []string{"qmp_capabilities", command} {
		if _, err := conn.Write([]byte(`{"execute":"` + c + `"}` + "\n")); err != nil {
			return err
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return err
			}
			if bytes.Contains(line, []byte(`"return"`)) {
				break
			}
			if bytes.Contains(line, []byte(`"error"`)) {
				return errors.New(string(line))
			}
		}
	}
	return nil
}

func TestLabSampleInitramfs(t *testing.T) {
	gz, err := initramfs([]byte("BUSYBOX"), []byte("EVDEV"), []byte("BUTTON!"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	// Walk the archive as the kernel does.
	type entry struct {
		mode, size, rmajor, rminor int64
		data                       string
	}
	got := map[string]entry{}
	off := 0
	for {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) int64 {
			v, err := strconv.ParseInt(string(raw[off+6+8*i:off+14+8*i]), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		name := string(raw[off+110 : off+110+int(namesize)-1])
		off = (off + 110 + int(namesize) + 3) &^ 3
		data := string(raw[off : off+int(size)])
		off = (off + int(size) + 3) &^ 3
		if name == "TRAILER!!!" {
			break
		}
		got[name] = entry{mode, size, rmaj, rmin, data}
	}
	if off != len(raw) {
		t.Errorf("%d bytes after the trailer", len(raw)-off)
	}
	tests := []struct {
		name string
		mode int64
		data string
	}{
		{".", 0o040755, ""},
		{"dev", 0o040755, ""},
		{"init", 0o100755, initScript},
		{"bin/busybox", 0o100755, "BUSYBOX"},
		{"lib/modules/button.ko", 0o100644, "BUTTON!"},
		{"dev/console", 0o020600, ""},
	}
	for _, tt := range tests {
		e, ok := got[tt.name]
		if !ok {
			t.Errorf("%s missing", tt.name)
			continue
		}
		if e.mode != tt.mode || e.data != tt.data {
			t.Errorf("%s: mode %o data %q", tt.name, e.mode, e.data)
		}
	}
	if c := got["dev/console"]; c.rmajor != 5 || c.rminor != 1 {
		t.Errorf("dev/console is %d:%d", c.rmajor, c.rminor)
	}
	// Deterministic: the same input gives the same bytes.
	gz2, _ := initramfs([]byte("BUSYBOX"), []byte("EVDEV"), []byte("BUTTON!"))
	if !bytes.Equal(gz, gz2) {
		t.Error("initramfs is not reproducible")
	}
}

func TestLabSampleMissingTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := Check()
	if !errors.Is(err, errs.ErrFailedPrecondition) {
		t.Fatalf("Check with an empty PATH: %v", err)
	}
	for _, want := range []string{"apt-get", "dpkg-deb", "mcopy", "mtools", "syslinux"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %s", err, want)
		}
	}
}
