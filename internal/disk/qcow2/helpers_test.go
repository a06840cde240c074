package qcow2

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
)

// registry opens qcow2 chains over qcow2 and raw files.
func registry() *disk.Registry { return disk.NewRegistry(Format(), raw.Format()) }

// writeFerry writes pt with ferry's writer to path.
func writeFerry(t testing.TB, path string, pt *disktest.Pattern, co *disk.CreateOptions) {
	t.Helper()
	ctx := context.Background()
	w, err := registry().Create(ctx, path, "qcow2", pt.Size, co)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer w.Close()
	if err := disktest.WritePattern(ctx, w, pt); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

// openPath opens path as qcow2 with the test registry's backing opener.
func openPath(t testing.TB, path string) disk.Image {
	t.Helper()
	img, err := registry().Open(context.Background(), path, &disk.RegistryOpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// openBytes opens an in-memory image without backing files.
func openBytes(b []byte) (disk.Image, error) {
	return Format().Open(context.Background(), disk.BytesFile("mem.qcow2", b), &disk.OpenOptions{})
}

// wantCode fails unless err carries code and its message names name.
func wantCode(t testing.TB, err error, code errs.Code, name string, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", code)
	}
	if errs.CodeOf(err) != code {
		t.Fatalf("error %q has code %v, want %v", err, errs.CodeOf(err), code)
	}
	if name != "" && !strings.Contains(err.Error(), name) {
		t.Fatalf("error %q does not name %s", err, name)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not say %q", err, w)
		}
	}
}

// checkClean runs ferry's Check and qemu-img check on path.
func checkClean(t testing.TB, path string) {
	t.Helper()
	img := openPath(t, path)
	res, err := img.(disk.Checker).Check(context.Background())
	if err != nil || !res.Clean() {
		t.Fatalf("ferry check %s: %+v, %v", path, res, err)
	}
	if code, out := disktest.QemuExit(t, "check", "-f", "qcow2", path); code != 0 {
		t.Fatalf("qemu-img check %s: exit %d\n%s", path, code, out)
	}
}

// readFile reads a file for byte surgery.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
