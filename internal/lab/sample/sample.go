// Package sample builds the lab's sample Linux VM: a small bootable disk
// made from Debian's own packages, without root, mounts or loop devices.
//
// The disk is a 1 GiB sparse raw image with an MBR (syslinux's mbr.bin)
// and one bootable FAT16 partition of 64 MiB at sector 2048 (type 6)
// holding syslinux, Debian's cloud kernel (linux-image-cloud-amd64's
// current kernel package) and an initramfs of busybox-static. Booted on a
// BIOS machine with a serial port, the guest prints one line on ttyS0,
//
//	FERRY-SAMPLE-OK kernel=6.1.0-56-cloud-amd64 answer=42 uptime=2.31
//
// computed by the guest (so it cannot be an echo of the script), then
// idles; pressing its ACPI power button powers it off.
//
// Build downloads the two packages with apt-get download, unpacks what it
// needs with dpkg-deb, writes the initramfs itself (cpio newc, gzip) and
// lays the disk out with mkfs.vfat, mcopy, syslinux and sfdisk working on
// plain files. The image is cached per kernel in Options.CacheDir and made
// visible only once complete.
package sample

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// Marker starts the line the guest prints on its serial console once it
// is up.
const Marker = "FERRY-SAMPLE-OK"

// Name is the name the lab gives the VM made from the sample disk.
const Name = "sample-linux"

// Disk geometry.
const (
	DiskSize      = 1 << 30  // bytes
	partStart     = 2048     // sectors of 512 bytes
	partSize      = 64 << 20 // bytes
	mbrCodeLength = 440      // the boot code before the disk signature
)

// metaPackage names Debian's current cloud kernel; its one dependency is
// the versioned kernel package (linux-image-<kernel>).
const metaPackage = "linux-image-cloud-amd64"

// Options configure Build.
type Options struct {
	// CacheDir holds built images (sample-linux-<kernel>.raw); required.
	// DefaultCacheDir is the usual choice.
	CacheDir string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Result describes a built (or cached) image.
type Result struct {
	Path   string // the raw image
	Kernel string // the guest kernel's release, e.g. 6.1.0-56-cloud-amd64
	Size   int64  // virtual size in bytes
}

// DefaultCacheDir is $FERRY_CACHE/sample, else <user cache dir>/ferry/sample
// (~/.cache/ferry/sample), where ferry's scripts and CI keep what they
// download once.
func DefaultCacheDir() string {
	if c := os.Getenv("FERRY_CACHE"); c != "" {
		return filepath.Join(c, "sample")
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "ferry", "sample")
	}
	return filepath.Join(os.TempDir(), "ferry-cache", "sample")
}

// tool is a command Build runs, or a file it reads, and the Debian
// package that provides it.
type tool struct {
	name  string   // the command, or the file's name
	pkg   string   // the Debian package providing it
	dirs  []string // searched after PATH (sbin is often not on a user's PATH)
	files []string // for a file: where distributions put it
}

var sbin = []string{"/usr/sbin", "/sbin"}

// mbrBin is syslinux's MBR boot code.
const mbrBin = "mbr.bin"

var tools = []tool{
	{name: "apt-get", pkg: "apt"},
	{name: "apt-cache", pkg: "apt"},
	{name: "dpkg-deb", pkg: "dpkg"},
	{name: "mkfs.vfat", pkg: "dosfstools", dirs: sbin},
	{name: "mcopy", pkg: "mtools"},
	{name: "syslinux", pkg: "syslinux"},
	{name: "sfdisk", pkg: "fdisk", dirs: sbin},
	{name: mbrBin, pkg: "syslinux-common", files: []string{"/usr/lib/syslinux/mbr/mbr.bin", "/usr/share/syslinux/mbr.bin", "/usr/lib/syslinux/mbr.bin"}},
}

// lookup returns the path of t, or "".
func (t tool) lookup() string {
	for _, p := range t.files {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	if t.files != nil {
		return ""
	}
	if p, err := exec.LookPath(t.name); err == nil {
		return p
	}
	for _, d := range t.dirs {
		p := filepath.Join(d, t.name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// findTools looks every tool up and returns their paths by name, or a
// precondition error naming what is missing and the packages to install.
func findTools() (map[string]string, error) {
	found := map[string]string{}
	var missing, pkgs []string
	for _, t := range tools {
		p := t.lookup()
		if p == "" {
			missing = append(missing, t.name)
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
			continue
		}
		found[t.name] = p
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("sample disk: missing %s: install the Debian packages %s (busybox-static and the kernel are downloaded, not installed): %w",
			strings.Join(missing, ", "), strings.Join(pkgs, " "), errs.ErrFailedPrecondition)
	}
	return found, nil
}

// Check reports whether Build can build an image on this machine: nil, or
// an error wrapping errs.ErrFailedPrecondition that names the missing
// commands and the Debian packages that provide them.
func Check() error {
	_, err := findTools()
	return err
}

// Build returns the sample image for Debian's current cloud kernel,
// building it into o.CacheDir first if it is not there. A cached image
// returns at once. When the current kernel cannot be resolved (apt-cache
// missing or without package lists) an image cached earlier is used.
func Build(ctx context.Context, o Options) (Result, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.CacheDir == "" {
		return Result{}, fmt.Errorf("sample disk: no cache directory: %w", errs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return Result{}, fmt.Errorf("sample disk: %w", err)
	}
	kernel, kerr := resolveKernel(ctx)
	if kerr == nil {
		if r, ok := cached(o.CacheDir, kernel); ok {
			return r, nil
		}
	} else if r, ok := newestCached(o.CacheDir); ok {
		log.Warn("sample disk: cannot resolve the current kernel; using a cached image", "error", kerr, "path", r.Path)
		return r, nil
	}
	bin, err := findTools()
	if err != nil {
		return Result{}, err
	}
	if kerr != nil {
		return Result{}, kerr
	}
	removeStale(o.CacheDir)
	tmp, err := os.MkdirTemp(o.CacheDir, ".build-")
	if err != nil {
		return Result{}, fmt.Errorf("sample disk: %w", err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	log.Info("sample disk: building", "kernel", kernel, "dir", tmp)
	img, err := build(ctx, bin, tmp, kernel)
	if err != nil {
		return Result{}, fmt.Errorf("sample disk for kernel %s: %w", kernel, err)
	}
	final := imagePath(o.CacheDir, kernel)
	if err := os.Rename(img, final); err != nil {
		return Result{}, fmt.Errorf("sample disk: %w", err)
	}
	log.Info("sample disk: built", "path", final, "elapsed", time.Since(start).Round(time.Millisecond))
	return Result{Path: final, Kernel: kernel, Size: DiskSize}, nil
}

func imagePath(dir, kernel string) string {
	return filepath.Join(dir, "sample-linux-"+kernel+".raw")
}

func cached(dir, kernel string) (Result, bool) {
	p := imagePath(dir, kernel)
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Size() != DiskSize {
		return Result{}, false
	}
	return Result{Path: p, Kernel: kernel, Size: DiskSize}, true
}

// newestCached returns the most recently built image in dir.
func newestCached(dir string) (Result, bool) {
	paths, _ := filepath.Glob(filepath.Join(dir, "sample-linux-*.raw"))
	var best Result
	var bestTime time.Time
	for _, p := range paths {
		kernel := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "sample-linux-"), ".raw")
		st, err := os.Stat(p)
		if err != nil || st.Size() != DiskSize || !st.ModTime().After(bestTime) {
			continue
		}
		best, bestTime = Result{Path: p, Kernel: kernel, Size: DiskSize}, st.ModTime()
	}
	return best, best.Path != ""
}

// removeStale removes build directories left by builds that were killed
// (an hour old: no build takes that long).
func removeStale(dir string) {
	olds, _ := filepath.Glob(filepath.Join(dir, ".build-*"))
	for _, d := range olds {
		if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > time.Hour {
			os.RemoveAll(d)
		}
	}
}

// resolveKernel asks apt which versioned kernel package the cloud
// meta-package depends on and returns its release (the package name
// without "linux-image-").
func resolveKernel(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", metaPackage).Output()
	if err != nil {
		return "", fmt.Errorf("sample disk: resolve %s with apt-cache depends: %v%s (run apt-get update?): %w",
			metaPackage, err, stderrOf(err), errs.ErrFailedPrecondition)
	}
	for line := range strings.Lines(string(out)) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") && !strings.ContainsAny(dep, "<> ") {
			return strings.TrimPrefix(dep, "linux-image-"), nil
		}
	}
	return "", fmt.Errorf("sample disk: %s depends on no linux-image-* package:\n%s: %w", metaPackage, out, errs.ErrFailedPrecondition)
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + lastLines(string(ee.Stderr), 5)
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// build makes the image in dir and returns its path.
func build(ctx context.Context, bin map[string]string, dir, kernel string) (string, error) {
	kpkg := "linux-image-" + kernel
	kdeb, err := download(ctx, bin, dir, kpkg)
	if err != nil {
		return "", err
	}
	bbdeb, err := download(ctx, bin, dir, "busybox-static")
	if err != nil {
		return "", err
	}
	modDir := "lib/modules/" + kernel + "/kernel/drivers/"
	kfiles, err := extract(ctx, bin, kdeb, map[string]string{
		"boot/vmlinuz-" + kernel:  "vmlinuz",
		modDir + "input/evdev.ko": "evdev.ko",
		modDir + "acpi/button.ko": "button.ko",
	})
	if err != nil {
		return "", err
	}
	bbfiles, err := extract(ctx, bin, bbdeb, map[string]string{"bin/busybox": "busybox"})
	if err != nil {
		return "", err
	}
	for _, want := range []string{"vmlinuz", "evdev.ko", "button.ko"} {
		if kfiles[want] == nil {
			return "", fmt.Errorf("%s holds no %s: %w", kpkg, want, errs.ErrFailedPrecondition)
		}
	}
	if bbfiles["busybox"] == nil {
		return "", fmt.Errorf("busybox-static holds no bin/busybox: %w", errs.ErrFailedPrecondition)
	}

	initrd, err := initramfs(bbfiles["busybox"], kfiles["evdev.ko"], kfiles["button.ko"])
	if err != nil {
		return "", err
	}
	files := map[string][]byte{"vmlinuz": kfiles["vmlinuz"], "initrd.gz": initrd, "syslinux.cfg": []byte(syslinuxCfg)}
	var names []string
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return "", err
		}
		names = append(names, p)
	}
	slices.Sort(names)

	// The partition, as a file of its own.
	part := filepath.Join(dir, "part.img")
	if err := truncate(part, partSize); err != nil {
		return "", err
	}
	if err := run(ctx, dir, bin["mkfs.vfat"], "-F", "16", "-n", "FERRYSAMPLE", "-h", fmt.Sprint(partStart), part); err != nil {
		return "", err
	}
	if err := run(ctx, dir, bin["mcopy"], append([]string{"-i", part}, append(names, "::")...)...); err != nil {
		return "", err
	}
	if err := run(ctx, dir, bin["syslinux"], "--install", part); err != nil {
		return "", err
	}

	// The disk: partition table, the partition's bytes (sparse), the MBR
	// boot code.
	img := filepath.Join(dir, "disk.raw")
	if err := truncate(img, DiskSize); err != nil {
		return "", err
	}
	table := fmt.Sprintf("label: dos\nstart=%d, size=%d, type=6, bootable\n", partStart, partSize/512)
	if err := runInput(ctx, dir, table, bin["sfdisk"], "--no-reread", "--no-tell-kernel", "-q", img); err != nil {
		return "", err
	}
	mbr, err := os.ReadFile(bin[mbrBin])
	if err != nil {
		return "", err
	}
	if len(mbr) > mbrCodeLength {
		mbr = mbr[:mbrCodeLength]
	}
	if err := writeDisk(img, part, mbr); err != nil {
		return "", err
	}
	if err := checkMBR(img); err != nil {
		return "", err
	}
	return img, nil
}

// syslinuxCfg boots the kernel with its console on the first serial port;
// panic=-1 reboots at once on a panic (QEMU's -no-reboot then exits).
const syslinuxCfg = `SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=ttyS0 panic=-1
`

// initScript is the guest's /init, run by busybox's shell as PID 1: it
// mounts the kernel's file systems, loads the power button's driver (and
// evdev to read it), prints the marker line with values only the running
// guest knows, and idles for ever; a press of the ACPI power button
// powers the guest off.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/modules/evdev.ko
insmod /lib/modules/button.ko
for ev in /sys/class/input/event*; do
	[ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ] || continue
	(
		dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null
		echo "ferry sample: power button pressed, powering off"
		poweroff -f
	) &
done
echo "` + Marker + ` kernel=$(uname -r) answer=$((6*7)) uptime=$(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done
`

// initramfs returns the gzipped newc cpio of the guest's root.
func initramfs(busybox, evdev, button []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	c := newCPIOWriter(zw)
	for _, d := range []string{".", "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, busybox)
	c.File("init", 0o755, []byte(initScript))
	c.File("lib/modules/evdev.ko", 0o644, evdev)
	c.File("lib/modules/button.ko", 0o644, button)
	if err := c.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// download fetches pkg's .deb into dir with apt-get download.
func download(ctx context.Context, bin map[string]string, dir, pkg string) (string, error) {
	cmd := exec.CommandContext(ctx, bin["apt-get"], "download", "-q", pkg)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("download the Debian package %s (apt-get download): %v: %s: %w", pkg, err, lastLines(string(out), 5), errs.ErrUnavailable)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("download the Debian package %s: apt-get download left %d files: %s: %w", pkg, len(debs), lastLines(string(out), 5), errs.ErrUnavailable)
	}
	return debs[0], nil
}

// extract reads the files want names (path in the package -> key) out of
// a .deb's data archive (dpkg-deb --fsys-tarfile), without unpacking the
// rest.
func extract(ctx context.Context, bin map[string]string, deb string, want map[string]string) (map[string][]byte, error) {
	cmd := exec.CommandContext(ctx, bin["dpkg-deb"], "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	got := map[string][]byte{}
	tr := tar.NewReader(pipe)
	var rerr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
		key, ok := want[strings.TrimPrefix(h.Name, "./")]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		if got[key], err = io.ReadAll(tr); err != nil {
			rerr = err
			break
		}
	}
	io.Copy(io.Discard, pipe)
	werr := cmd.Wait()
	if err := errors.Join(rerr, werr); err != nil {
		return nil, fmt.Errorf("unpack %s (dpkg-deb --fsys-tarfile): %v: %s", filepath.Base(deb), err, lastLines(stderr.String(), 5))
	}
	return got, nil
}

func truncate(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func run(ctx context.Context, dir, name string, args ...string) error {
	return runInput(ctx, dir, "", name, args...)
}

func runInput(ctx context.Context, dir, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	// mtools refuses some images without this; never ask the user.
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, lastLines(string(out), 5))
	}
	return nil
}

// writeDisk copies the partition into the disk at its start sector,
// skipping blocks of zeros (the disk stays sparse), and writes the MBR
// boot code, leaving the partition table sfdisk wrote in place.
func writeDisk(img, part string, mbr []byte) error {
	dst, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	src, err := os.Open(part)
	if err != nil {
		return err
	}
	defer src.Close()
	const block = 64 << 10
	buf := make([]byte, block)
	zero := make([]byte, block)
	for off := int64(0); off < partSize; off += block {
		n, err := io.ReadFull(src, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !(errors.Is(err, io.EOF) && n == 0) {
			return fmt.Errorf("read %s: %w", part, err)
		}
		if n == 0 {
			break
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			continue
		}
		if _, err := dst.WriteAt(buf[:n], partStart*512+off); err != nil {
			return err
		}
	}
	if _, err := dst.WriteAt(mbr, 0); err != nil {
		return err
	}
	if err := dst.Sync(); err != nil {
		return err
	}
	return dst.Close()
}

// checkMBR verifies what the boot depends on: the signature and one
// bootable FAT16 partition at partStart.
func checkMBR(img string) error {
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := io.ReadFull(f, b); err != nil {
		return err
	}
	p, err := ParseMBR(b)
	if err != nil {
		return err
	}
	if !p.Bootable || p.Type != 6 || p.Start != partStart || p.Sectors != partSize/512 {
		return fmt.Errorf("the partition table sfdisk wrote is not the one asked for: %+v", p)
	}
	return nil
}

// Partition is the first entry of an MBR partition table.
type Partition struct {
	Bootable bool
	Type     byte
	Start    uint32 // first sector
	Sectors  uint32
}

// ParseMBR returns the first partition of the MBR in sector (512 bytes),
// checking the 0x55AA signature.
func ParseMBR(sector []byte) (Partition, error) {
	if len(sector) < 512 || sector[510] != 0x55 || sector[511] != 0xAA {
		return Partition{}, fmt.Errorf("no MBR signature (0x55AA): %w", errs.ErrCorrupt)
	}
	e := sector[446:462]
	le := binary.LittleEndian
	return Partition{Bootable: e[0] == 0x80, Type: e[4], Start: le.Uint32(e[8:12]), Sectors: le.Uint32(e[12:16])}, nil
}
