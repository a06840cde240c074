package xva

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		opts map[string]string
		code errs.Code
	}{
		{map[string]string{"checksum": "xxhash"}, errs.Unknown},
		{map[string]string{"checksum": "sha1"}, errs.Unknown},
		{map[string]string{"checksum": "md5"}, errs.InvalidArgument},
		{map[string]string{"compress": "gzip"}, errs.InvalidArgument},
	} {
		_, err := Format().Create(t.Context(), &bytes.Buffer{}, vmFor("o"), &archive.CreateOptions{Options: tc.opts})
		if errs.CodeOf(err) != tc.code || (tc.code != errs.Unknown) != (err != nil) {
			t.Errorf("options %v: %v, want %v", tc.opts, err, tc.code)
		}
	}
}

// TestWriterContract: the archive writer and its disk writers refuse what
// their contracts forbid.
func TestWriterContract(t *testing.T) {
	ctx := t.Context()
	pt := &disktest.Pattern{Name: "d", Size: 8 * MiB}
	vm := vmFor("c", pt, pt)
	w, err := Format().Create(ctx, &bytes.Buffer{}, vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Commit(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("commit before the disks: %v", err)
	}
	d, err := w.NextDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Sequential() || d.Size() != 8*MiB {
		t.Fatalf("disk writer: sequential %v size %d", d.Sequential(), d.Size())
	}
	if _, err := w.NextDisk(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("next disk before commit: %v", err)
	}
	b := bytes.Repeat([]byte{1}, 4096)
	if _, err := d.WriteAt(b, 4*MiB); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(b, 0); errs.CodeOf(err) != errs.InvalidArgument {
		t.Fatalf("write behind: %v", err)
	}
	if _, err := d.WriteAt(b, 4*MiB+2048); errs.CodeOf(err) != errs.InvalidArgument {
		t.Fatalf("overlapping write: %v", err)
	}
	if _, err := d.WriteAt(b, 8*MiB-100); errs.CodeOf(err) != errs.InvalidArgument {
		t.Fatalf("write past the end: %v", err)
	}
	if err := d.Zero(5*MiB, 4*MiB); errs.CodeOf(err) != errs.InvalidArgument {
		t.Fatalf("zero past the end: %v", err)
	}
	if err := d.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(b, 7*MiB); err == nil {
		t.Fatal("write after commit accepted")
	}
	d2, err := w.NextDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	d2.Close() // abandoned: the archive cannot be finished
	if err := w.Commit(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("commit after an abandoned disk: %v", err)
	}
	if _, err := w.NextDisk(ctx); err == nil {
		t.Fatal("next disk after an abandoned disk accepted")
	}
}

func TestDisklessVM(t *testing.T) {
	ctx := t.Context()
	var buf bytes.Buffer
	w, err := Format().Create(ctx, &buf, core.VMSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.NextDisk(ctx); errs.CodeOf(err) != errs.FailedPrecondition {
		t.Fatalf("next disk of a diskless VM: %v", err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := openBytes(t, buf.Bytes())
	vm := r.VM()
	if vm.Name != defaultName || vm.CPUs != 1 || vm.MemoryBytes != defaultMemory || len(vm.Disks) != 0 {
		t.Fatalf("defaults: %+v", vm)
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name string
		vm   core.VMSpec
		code errs.Code
		pos  []int
	}{
		{"positions all zero", core.VMSpec{Disks: []core.DiskSpec{{Size: MiB}, {Size: MiB}, {Size: MiB}}}, errs.Unknown, []int{0, 1, 2}},
		{"positions kept", core.VMSpec{Disks: []core.DiskSpec{{Size: MiB, Position: 3}, {Size: MiB, Position: 0}}}, errs.Unknown, []int{3, 0}},
		{"positions clash", core.VMSpec{Disks: []core.DiskSpec{{Size: MiB, Position: 1}, {Size: MiB, Position: 1}}}, errs.InvalidArgument, nil},
		{"negative position", core.VMSpec{Disks: []core.DiskSpec{{Size: MiB, Position: -1}}}, errs.InvalidArgument, nil},
		{"negative size", core.VMSpec{Disks: []core.DiskSpec{{Size: -1}}}, errs.InvalidArgument, nil},
		{"absurd size", core.VMSpec{Disks: []core.DiskSpec{{Size: 1 << 62}}}, errs.InvalidArgument, nil},
		{"negative CPUs", core.VMSpec{CPUs: -1}, errs.InvalidArgument, nil},
		{"negative memory", core.VMSpec{MemoryBytes: -1}, errs.InvalidArgument, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := tc.vm
			err := normalize(&vm)
			if errs.CodeOf(err) != tc.code || (err != nil) != (tc.code != errs.Unknown) {
				t.Fatalf("normalize: %v, want %v", err, tc.code)
			}
			for i, p := range tc.pos {
				if vm.Disks[i].Position != p {
					t.Fatalf("positions %+v, want %v", vm.Disks, tc.pos)
				}
			}
		})
	}
}

// TestWrittenZerosOmitted: a chunk the caller fills with zeros is left out
// like one never written; Zero costs nothing.
func TestWrittenZerosOmitted(t *testing.T) {
	ctx := t.Context()
	var buf bytes.Buffer
	pt := &disktest.Pattern{Name: "z", Size: 4 * MiB}
	w, err := Format().Create(ctx, &buf, vmFor("z", pt), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := w.NextDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	one := bytes.Repeat([]byte{1}, 512)
	steps := []func() error{
		func() error { _, err := d.WriteAt(one, 100*512); return err },
		func() error { return d.Zero(MiB, 512) },
		func() error { _, err := d.WriteAt(make([]byte, MiB), 2*MiB); return err },
		func() error { _, err := d.WriteAt(one, 3*MiB+512); return err },
		func() error { return d.Commit(ctx) },
		func() error { return w.Commit(ctx) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	var names []string
	for _, m := range members(t, buf.Bytes())[1:] {
		names = append(names, m.name[strings.IndexByte(m.name, '/')+1:])
	}
	if got := strings.Join(names, " "); got != "00000000 00000000.xxhash 00000003 00000003.xxhash" {
		t.Fatalf("members %s", got)
	}
	r := openBytes(t, buf.Bytes())
	img, _ := r.OpenDisk(ctx, 0)
	got := make([]byte, 4*MiB)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	exp := make([]byte, 4*MiB)
	copy(exp[100*512:], one)
	copy(exp[3*MiB+512:], one)
	if !bytes.Equal(got, exp) {
		t.Fatal("content differs")
	}
}

// fileOnly is a FileTarget whose Write fails: a writer given a FileTarget
// must use WriteAt only.
type fileOnly struct{ f *os.File }

func (t fileOnly) Write([]byte) (int, error)                { return 0, errors.New("Write used on a FileTarget") }
func (t fileOnly) WriteAt(p []byte, off int64) (int, error) { return t.f.WriteAt(p, off) }
func (t fileOnly) ReadAt(p []byte, off int64) (int, error)  { return t.f.ReadAt(p, off) }
func (t fileOnly) Truncate(n int64) error                   { return t.f.Truncate(n) }
func (t fileOnly) Name() string                             { return t.f.Name() }

func TestFileTargetWriteAtOnly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vm.xva")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pt := sparsePattern()
	if err := writeTo(t.Context(), fileOnly{f}, vmFor("ft", pt), []*disktest.Pattern{pt}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	img, err := openBytes(t, b).OpenDisk(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	disktest.VerifyImage(t, img, pt)
}

// failing fails every write after the first n bytes.
type failing struct{ n int }

func (f *failing) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

func TestTargetError(t *testing.T) {
	ctx := t.Context()
	pt := sparsePattern()
	err := writeTo(ctx, &failing{n: 1 << 16}, vmFor("f", pt), []*disktest.Pattern{pt}, nil)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("write to a failing target: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Format().Create(cctx, &bytes.Buffer{}, vmFor("f", pt), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("create with a cancelled context: %v", err)
	}
}
