package qcow2

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestQemuReadsFerry: ferry writes every variant and pattern; qemu-img
// info, compare and check agree, and so do ferry's reader and Check.
func TestQemuReadsFerry(t *testing.T) {
	disktest.QemuImg(t)
	for _, v := range variants {
		for _, pt := range disktest.Patterns(testing.Short()) {
			t.Run(v.name+"/"+pt.Name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "img.qcow2")
				writeFerry(t, path, pt, &disk.CreateOptions{Options: v.opts})
				qi := disktest.QemuInfoOf(t, path, "")
				wantCS := int64(65536)
				if s, ok := v.opts["cluster_size"]; ok {
					fmt.Sscan(s, &wantCS)
				}
				wantCompat, wantCT := "1.1", "zlib"
				if v.opts["compat"] == "0.10" {
					wantCompat = "0.10"
				}
				if v.opts["compression_type"] == "zstd" {
					wantCT = "zstd"
				}
				if qi.Format != "qcow2" || qi.VirtualSize != pt.Size || qi.ClusterSize != wantCS ||
					qi.Specific.Data["compat"] != wantCompat || qi.Specific.Data["compression-type"] != wantCT {
					t.Fatalf("qemu-img info: %+v", qi)
				}
				want := filepath.Join(dir, "want.raw")
				disktest.WriteRaw(t, pt, want)
				disktest.Qemu(t, "compare", "-f", "qcow2", "-F", "raw", path, want)
				checkClean(t, path)
				disktest.VerifyImage(t, openPath(t, path), pt)
			})
		}
	}
}

// qemuCases are images qemu-img writes: option string and extra flags.
// The cases marked full run without -short only.
var qemuCases = []struct {
	name, opts string
	extra      []string
	full       bool
}{
	{"default", "", nil, false},
	{"v2", "compat=0.10", nil, false},
	{"c512", "cluster_size=512", nil, false},
	{"c4k", "cluster_size=4096", nil, true},
	{"c2m", "cluster_size=2M", nil, false},
	{"prealloc-metadata", "preallocation=metadata", nil, true},
	{"lazy-refcounts", "lazy_refcounts=on", nil, true},
	{"refcount-bits-1", "refcount_bits=1", nil, true},
	{"refcount-bits-64", "refcount_bits=64", nil, true},
	{"zlib", "", []string{"-c"}, false},
	{"zstd", "compression_type=zstd", []string{"-c"}, false},
	{"zlib-c512", "cluster_size=512", []string{"-c"}, true},
	{"zstd-c512", "cluster_size=512,compression_type=zstd", []string{"-c"}, false},
	{"zstd-c2m", "cluster_size=2M,compression_type=zstd", []string{"-c"}, true},
	{"v2-zlib", "compat=0.10", []string{"-c"}, true},
}

// TestFerryReadsQemu: qemu-img writes; ferry reads the same content, the
// same info, and checks the image clean.
func TestFerryReadsQemu(t *testing.T) {
	disktest.QemuImg(t)
	for _, c := range qemuCases {
		if c.full && testing.Short() {
			continue
		}
		for _, pt := range disktest.Patterns(testing.Short()) {
			t.Run(c.name+"/"+pt.Name, func(t *testing.T) {
				path := disktest.QemuMake(t, pt, "qcow2", c.opts, c.extra...)
				img := openPath(t, path)
				disktest.VerifyImage(t, img, pt)
				compareInfo(t, img.Info(), disktest.QemuInfoOf(t, path, "qcow2"))
				res, err := img.(disk.Checker).Check(t.Context())
				if err != nil || !res.Clean() {
					t.Fatalf("check: %+v, %v", res, err)
				}
				compareCheck(t, res, path)
			})
		}
	}
}

// compareInfo checks ferry's Info against qemu-img info.
func compareInfo(t testing.TB, got disk.Info, qi disktest.QemuInfo) {
	t.Helper()
	if got.Format != "qcow2" || got.VirtualSize != qi.VirtualSize || got.ClusterSize != qi.ClusterSize {
		t.Fatalf("info %+v, qemu %+v", got, qi)
	}
	for k, qv := range qi.Specific.Data {
		gv, ok := got.Specific[k]
		if !ok {
			continue // qemu shows more (bitmaps, data-file)
		}
		if n, isNum := gv.(int); isNum {
			gv = float64(n)
		}
		if gv != qv {
			t.Fatalf("format-specific %s = %v, qemu says %v", k, gv, qv)
		}
	}
	for _, k := range []string{"compat", "compression-type", "refcount-bits"} {
		if _, ok := got.Specific[k]; !ok {
			t.Fatalf("format-specific lacks %s: %v", k, got.Specific)
		}
	}
}

// qemuCheck is the part of qemu-img check --output json the tests use.
type qemuCheck struct {
	CheckErrors       int   `json:"check-errors"`
	Corruptions       int   `json:"corruptions"`
	Leaks             int   `json:"leaks"`
	ImageEndOffset    int64 `json:"image-end-offset"`
	TotalClusters     int64 `json:"total-clusters"`
	AllocatedClusters int64 `json:"allocated-clusters"`
}

func qemuCheckOf(t testing.TB, path string) qemuCheck {
	t.Helper()
	_, out := disktest.QemuExit(t, "check", "--output", "json", "-f", "qcow2", path)
	// qemu-img prints its findings before the JSON
	if i := bytes.Index(out, []byte("{\n")); i > 0 {
		out = out[i:]
	}
	var qc qemuCheck
	if err := json.Unmarshal(out, &qc); err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
	return qc
}

// compareCheck checks ferry's Check result against qemu-img check.
func compareCheck(t testing.TB, res disk.CheckResult, path string) {
	t.Helper()
	qc := qemuCheckOf(t, path)
	if res.Corruptions != qc.Corruptions || res.Leaks != qc.Leaks || res.ImageEndOffset != qc.ImageEndOffset ||
		res.TotalClusters != qc.TotalClusters || res.AllocatedClusts != qc.AllocatedClusters {
		t.Fatalf("ferry check %+v\nqemu check %+v", res, qc)
	}
}

// TestQemuZeroClusters: qemu writes zero clusters (v3) over a backing
// file; ferry reads zeros there and reports Zero extents.
func TestQemuZeroClusters(t *testing.T) {
	disktest.QemuImg(t)
	dir := t.TempDir()
	base := &disktest.Pattern{Name: "base", Size: 4 * disktest.MiB, Seed: 5, Data: []disk.Extent{{Off: 0, Len: 4 * disktest.MiB}}}
	top := &disktest.Pattern{Name: "top", Size: 4 * disktest.MiB, Seed: 6, Data: []disk.Extent{{Off: disktest.MiB, Len: 128 * disktest.KiB}}}
	disktest.WriteRaw(t, base, filepath.Join(dir, "base.raw"))
	disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", filepath.Join(dir, "base.raw"), filepath.Join(dir, "base.qcow2"))
	disktest.WriteRaw(t, top, filepath.Join(dir, "top.raw"))
	topPath := filepath.Join(dir, "top.qcow2")
	disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "top.raw"), topPath)
	img := openPath(t, topPath)
	disktest.VerifyImage(t, img, top)
	var zero int64
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Zero {
			zero += e.Len
		}
	}
	if want := 4*disktest.MiB - 128*disktest.KiB; zero != want {
		t.Fatalf("zero extents cover %d bytes, want %d", zero, want)
	}
	if res, err := img.(disk.Checker).Check(context.Background()); err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
}

// TestQemuSnapshotsAndBitmaps: an image with an internal snapshot (shared
// clusters, refcount 2) and a dirty bitmap; ferry reads the active layer
// and its Check agrees with qemu-img check.
func TestQemuSnapshotsAndBitmaps(t *testing.T) {
	disktest.QemuImg(t)
	dir := t.TempDir()
	a := &disktest.Pattern{Name: "a", Size: 4 * MiB, Seed: 31, Data: []disk.Extent{{Off: 0, Len: 2 * MiB}}}
	b := &disktest.Pattern{Name: "b", Size: 4 * MiB, Seed: 32, Data: []disk.Extent{{Off: MiB, Len: MiB}, {Off: 3 * MiB, Len: 4096}}}
	disktest.WriteRaw(t, a, filepath.Join(dir, "a.raw"))
	disktest.WriteRaw(t, b, filepath.Join(dir, "b.raw"))
	img := filepath.Join(dir, "img.qcow2")
	disktest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", filepath.Join(dir, "a.raw"), img)
	disktest.Qemu(t, "snapshot", "-c", "s1", img)
	disktest.Qemu(t, "bitmap", "--add", "-g", "4096", img, "bm0")
	disktest.Qemu(t, "convert", "-n", "-f", "raw", "-O", "qcow2", filepath.Join(dir, "b.raw"), img)
	im := openPath(t, img)
	disktest.VerifyImage(t, im, b)
	res, err := im.(disk.Checker).Check(t.Context())
	if err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
	compareCheck(t, res, img)
}
