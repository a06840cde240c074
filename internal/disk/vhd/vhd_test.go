package vhd

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

func roundSector(n int64) int64 { return roundUp(n, sectorSize) }

func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		opts map[string]string
	}{
		{"dynamic", nil},
		{"dynamic-512k", map[string]string{"block_size": "512K"}},
		{"fixed", map[string]string{"subformat": "fixed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			disktest.TestFormat(t, Format(), disktest.FormatOptions{Create: c.opts, SizeRounding: roundSector})
		})
	}
}

func TestCreateOptions(t *testing.T) {
	ctx := t.Context()
	for _, c := range []struct {
		name string
		size int64
		opts map[string]string
		msg  string // "" means accepted
	}{
		{"defaults", 1 << 20, nil, ""},
		{"unknown-key", 1 << 20, map[string]string{"cluster_size": "64K"}, "unknown option"},
		{"bad-subformat", 1 << 20, map[string]string{"subformat": "streamOptimized"}, "unknown subformat"},
		{"block-512k", 1 << 20, map[string]string{"block_size": "512K"}, ""},
		{"block-2mib", 1 << 20, map[string]string{"block_size": "2MiB"}, ""},
		{"block-bytes", 1 << 20, map[string]string{"block_size": "2097152"}, ""},
		{"block-1m", 1 << 20, map[string]string{"block_size": "1M"}, "not supported"},
		{"block-junk", 1 << 20, map[string]string{"block_size": "big"}, "invalid block_size"},
		{"fixed-block", 1 << 20, map[string]string{"subformat": "fixed", "block_size": "2M"}, "dynamic VHDs only"},
		{"force-on", 1 << 20, map[string]string{"force_size": "on"}, ""},
		{"force-off", 1 << 20, map[string]string{"force_size": "off", "subformat": "fixed"}, ""},
		{"force-junk", 1 << 20, map[string]string{"force_size": "maybe"}, "force_size"},
		{"negative", -1, nil, "negative"},
		{"too-big", 2040<<30 + 1, nil, "2040 GiB"},
		{"too-big-fixed", 3 << 40, map[string]string{"subformat": "fixed"}, "2040 GiB"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.vhd")
			w, err := Format().Create(ctx, mustCreate(t, path), c.size, &disk.CreateOptions{Options: c.opts})
			if c.msg == "" {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				w.Close()
				return
			}
			if !errs.Is(err, errs.InvalidArgument) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v; want invalid argument containing %q", err, c.msg)
			}
		})
	}
}

func mustCreate(t testing.TB, path string) *disk.OutputFile {
	t.Helper()
	out, err := disk.CreateOutputFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Abort() })
	return out
}

// TestLimits writes the largest VHD, empty, and an odd size that rounds
// up to a sector; qemu-img reports exactly those sizes.
func TestLimits(t *testing.T) {
	for _, c := range []struct {
		sub        string
		size, want int64
	}{
		{"dynamic", 2040 << 30, 2040 << 30},
		{"fixed", 2040 << 30, 2040 << 30},
		{"dynamic", 1, 512},
		{"fixed", 1000, 1024},
		{"dynamic", 4<<30 + 7, 4<<30 + 512},
	} {
		t.Run(fmt.Sprintf("%s-%d", c.sub, c.size), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.vhd")
			pt := &disktest.Pattern{Name: "x", Size: c.size}
			writeFerry(t, pt, path, &disk.CreateOptions{Options: map[string]string{"subformat": c.sub}})
			img := openFerry(t, path)
			if img.Size() != c.want {
				t.Fatalf("ferry size %d, want %d", img.Size(), c.want)
			}
			checkClean(t, img)
			if qi := disktest.QemuInfoOf(t, path, "vpc"); qi.VirtualSize != c.want {
				t.Fatalf("qemu size %d, want %d", qi.VirtualSize, c.want)
			}
		})
	}
}

// TestFixedHoles: a fixed VHD on a file reports the file's holes as
// unallocated, less a 4 KiB margin at each edge, and holes under 64 KiB
// as data.
func TestFixedHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.vhd")
	pt := &disktest.Pattern{Name: "holes", Size: 4 << 20, Seed: 1, Data: []disk.Extent{
		{Off: 0, Len: 4096}, {Off: 1 << 20, Len: 4096}, {Off: 1<<20 + 40<<10, Len: 4096},
	}}
	writeFerry(t, pt, path, &disk.CreateOptions{Options: map[string]string{"subformat": "fixed"}})
	img := openFerry(t, path)
	var got []disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	want := []disk.Extent{
		{Off: 0, Len: 8 << 10, Kind: disk.Data},
		{Off: 8 << 10, Len: 1<<20 - 12<<10, Kind: disk.Unallocated},
		{Off: 1<<20 - 4<<10, Len: 52 << 10, Kind: disk.Data},
		{Off: 1<<20 + 48<<10, Len: 3<<20 - 48<<10, Kind: disk.Unallocated},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Skipf("extents %v, want %v (the file system may not report holes)", got, want)
	}
	// A query starting inside a hole sees the same edges.
	var sub []disk.Extent
	for e := range img.Extents(t.Context(), 100<<10, 1<<20) {
		sub = append(sub, e)
	}
	if fmt.Sprint(sub) != fmt.Sprint([]disk.Extent{
		{Off: 100 << 10, Len: 1<<20 - 104<<10, Kind: disk.Unallocated},
		{Off: 1<<20 - 4<<10, Len: 52 << 10, Kind: disk.Data},
		{Off: 1<<20 + 48<<10, Len: 52 << 10, Kind: disk.Unallocated},
	}) {
		t.Fatalf("sub-range extents %v", sub)
	}
	disktest.VerifyImage(t, img, pt)
}
