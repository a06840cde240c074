package vhdx

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// diffFixture is a differencing child over a ferry-written parent, built
// by hand: qemu cannot create VHDX differencing images.
type diffFixture struct {
	dir, child, parent string
	want               []byte            // the child's content
	kinds              []disk.ExtentKind // per 512-byte sector
}

// Child blocks (1 MiB each, 512-byte sectors):
//
//	0 fully present      4 unmapped (reads zeros)
//	1 partially present  5 partially present
//	2 not present        6 undefined (reads the parent)
//	3 zero               7 not present
//
// The parent has data in blocks 0-2, 6 and 7 and none in 3-5.
const (
	dBlocks = 8
	dSize   = dBlocks * mib
	dSPB    = mib / 512 // sectors per block
)

func present1(s int64) bool { return s < 10 || (s >= 101 && s < 301) }
func present5(s int64) bool { return s >= 64 || s%2 == 0 }

func newDiffFixture(t *testing.T, mutate func(kv [][2]string) [][2]string) *diffFixture {
	t.Helper()
	fx := &diffFixture{dir: t.TempDir()}
	ppt := &disktest.Pattern{Name: "parent", Size: dSize, Seed: 21, Data: []disk.Extent{
		{Off: 0, Len: 3 * mib / 2}, {Off: 2 * mib, Len: 512 * kib}, {Off: 6*mib + 256*kib, Len: mib},
	}}
	if err := os.Mkdir(filepath.Join(fx.dir, "base"), 0o755); err != nil {
		t.Fatal(err)
	}
	fx.parent = filepath.Join(fx.dir, "base", "parent.vhdx")
	if err := os.WriteFile(fx.parent, ferryBytes(t, ppt, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	pimg := openPath(t, fx.parent, nil)
	dw := pimg.Info().Specific["data-write-guid"].(string)
	pimg.Close()

	kv := [][2]string{
		{"parent_linkage", "{" + strings.ToUpper(dw) + "}"},
		{"relative_path", `base\parent.vhdx`},
		{"volume_path", `\\?\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\base\parent.vhdx`},
		{"absolute_win32_path", `\\?\C:\nowhere\parent.vhdx`},
	}
	if mutate != nil {
		kv = mutate(kv)
	}
	b := skeleton{size: dSize, bs: mib, lss: 512, flags: paramHasParent,
		locator: locatorItem(guidVHDXLocatorType, kv), fileSize: 8 * mib}.build()

	r := rand.New(rand.NewPCG(5, 5))
	fill := func(off, n int64) {
		for i := off; i < off+n; i++ {
			b[i] = byte(r.IntN(255) + 1) // never zero, to tell child bytes from holes
		}
	}
	const bitmapAt = 7 * mib
	ratio := chunkRatio(512, mib)
	set := func(i int64, st uint64, host int64) { setBAT(b, payloadIndex(i, ratio), uint64(host)|st) }
	set(0, stateFull, 4*mib)
	fill(4*mib, mib)
	set(1, statePartial, 5*mib)
	fill(5*mib, mib)
	set(2, stateNotPresent, 0)
	set(3, stateZero, 0)
	set(4, stateUnmapped, 0)
	set(5, statePartial, 6*mib)
	fill(6*mib, mib)
	set(6, stateUndefined, 0)
	set(7, stateNotPresent, 0)
	setBAT(b, bitmapIndex(0, ratio), uint64(bitmapAt)|stateFull)
	for s := range int64(dSPB) {
		if present1(s) {
			k := dSPB*1 + s
			b[bitmapAt+k/8] |= 1 << (k % 8)
		}
		if present5(s) {
			k := dSPB*5 + s
			b[bitmapAt+k/8] |= 1 << (k % 8)
		}
	}
	fx.child = filepath.Join(fx.dir, "child.vhdx")
	if err := os.WriteFile(fx.child, b, 0o644); err != nil {
		t.Fatal(err)
	}

	// The expected content and kinds, sector by sector.
	parent := ppt.Bytes()
	fx.want = make([]byte, dSize)
	fx.kinds = make([]disk.ExtentKind, dSize/512)
	parentKind := func(s int64) disk.ExtentKind {
		if blk := s / dSPB; blk <= 2 || blk >= 6 {
			return disk.Data
		}
		return disk.Unallocated
	}
	for s := range int64(dSize / 512) {
		blk, in := s/dSPB, s%dSPB
		off := s * 512
		fromChild := func(host int64) {
			copy(fx.want[off:off+512], b[host+in*512:])
			fx.kinds[s] = disk.Data
		}
		fromParent := func() {
			copy(fx.want[off:off+512], parent[off:])
			fx.kinds[s] = parentKind(s)
		}
		switch blk {
		case 0:
			fromChild(4 * mib)
		case 1:
			if present1(in) {
				fromChild(5 * mib)
			} else {
				fromParent()
			}
		case 3, 4:
			fx.kinds[s] = disk.Zero
		case 5:
			if present5(in) {
				fromChild(6 * mib)
			} else {
				fromParent()
			}
		default:
			fromParent()
		}
	}
	return fx
}

func TestDifferencing(t *testing.T) {
	fx := newDiffFixture(t, nil)
	reg := disk.NewRegistry(Format())
	img, err := reg.Open(t.Context(), fx.child, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer img.Close()

	if got := readAll(t, img); !bytes.Equal(got, fx.want) {
		t.Fatalf("content differs at %d", firstDiff(got, fx.want))
	}
	// Unaligned reads across block and sector-run boundaries.
	for _, c := range []struct{ off, n int64 }{
		{mib - 100, 300}, {mib + 5*512 - 7, 10000}, {mib + 100*512 + 1, 512}, {5*mib + 3, 64*512 + 5},
		{2*mib - 1, 2*mib + 2}, {0, dSize}, {7*mib + 17, mib - 17},
	} {
		got := make([]byte, c.n)
		if _, err := img.ReadAt(got, c.off); err != nil {
			t.Fatalf("read %d at %d: %v", c.n, c.off, err)
		}
		if !bytes.Equal(got, fx.want[c.off:c.off+c.n]) {
			t.Fatalf("read %d at %d differs at +%d", c.n, c.off, firstDiff(got, fx.want[c.off:]))
		}
	}
	// Extents: contiguous, merged, and per sector what the layers say.
	var next int64
	var prev disk.Extent
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Off != next || (prev.Len > 0 && prev.Kind == e.Kind) {
			t.Fatalf("extent %+v after %+v: not contiguous or not merged", e, prev)
		}
		for s := e.Off / 512; s < e.End()/512; s++ {
			if fx.kinds[s] != e.Kind {
				t.Fatalf("sector %d (block %d): kind %v, want %v", s, s/dSPB, e.Kind, fx.kinds[s])
			}
		}
		next, prev = e.End(), e
	}
	if next != dSize {
		t.Fatalf("extents end at %d", next)
	}
	// Extents of a sub-range start and end where asked.
	var first, last disk.Extent
	for e, err := range img.Extents(t.Context(), 5*mib+700, 3000) {
		if err != nil {
			t.Fatal(err)
		}
		if first.Len == 0 {
			first = e
		}
		last = e
	}
	if first.Off != 5*mib+700 || last.End() != 5*mib+3700 {
		t.Fatalf("sub-range extents %+v .. %+v", first, last)
	}

	info := img.Info()
	if info.Specific["subformat"] != "differencing" || info.BackingFile != "base/parent.vhdx" || info.BackingFormat != "vhdx" || info.Backing == nil || info.Backing.Filename == "" {
		t.Fatalf("info %+v", info)
	}
	res, err := img.(disk.Checker).Check(t.Context())
	if err != nil || !res.Clean() {
		t.Fatalf("check: %+v, %v", res, err)
	}
}

func TestDifferencingErrors(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(kv [][2]string) [][2]string
		prepare func(fx *diffFixture)
		noOpen  bool // open without OpenBacking
		code    errs.Code
		want    string
	}{
		{name: "no-backing-allowed", noOpen: true, code: errs.FailedPrecondition, want: "base/parent.vhdx"},
		{name: "parent-missing", prepare: func(fx *diffFixture) { os.Remove(fx.parent) }, code: errs.NotFound, want: "base/parent.vhdx"},
		{name: "linkage-mismatch", mutate: func(kv [][2]string) [][2]string {
			kv[0][1] = "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"
			return kv
		}, code: errs.Corrupt, want: "83ed0ec3-24c8-49a6-a959-5e4bf1288bfb"},
		{name: "linkage-not-guid", mutate: func(kv [][2]string) [][2]string {
			kv[0][1] = "{nope}"
			return kv
		}, code: errs.Corrupt, want: "parent_linkage"},
		{name: "no-paths", mutate: func(kv [][2]string) [][2]string { return kv[:1] }, code: errs.Corrupt, want: "no parent path"},
		{name: "no-linkage", mutate: func(kv [][2]string) [][2]string { return kv[1:] }, code: errs.Corrupt, want: "parent_linkage"},
		{name: "duplicate-key", mutate: func(kv [][2]string) [][2]string { return append(kv, kv[1]) }, code: errs.Corrupt, want: "twice"},
		{name: "parent-corrupt", prepare: func(fx *diffFixture) {
			b, _ := os.ReadFile(fx.parent)
			copy(b[header1Offset:], "xxxx")
			copy(b[header2Offset:], "xxxx")
			os.WriteFile(fx.parent, b, 0o644)
		}, code: errs.Corrupt, want: "parent.vhdx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newDiffFixture(t, tt.mutate)
			if tt.prepare != nil {
				tt.prepare(fx)
			}
			var err error
			if tt.noOpen {
				f, ferr := disk.OpenFile(fx.child)
				if ferr != nil {
					t.Fatal(ferr)
				}
				defer f.Close()
				var img disk.Image
				img, err = Format().Open(t.Context(), f, &disk.OpenOptions{})
				if err == nil {
					img.Close()
				}
			} else {
				var img disk.Image
				img, err = disk.NewRegistry(Format()).Open(t.Context(), fx.child, nil)
				if err == nil {
					img.Close()
				}
			}
			if err == nil || !errs.Is(err, tt.code) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "child.vhdx") {
				t.Fatalf("open: %v; want %v naming child.vhdx and %q", err, tt.code, tt.want)
			}
		})
	}
}

func TestDifferencingLinkage2AndLocatorType(t *testing.T) {
	// parent_linkage2 may carry the parent's identity instead.
	fx := newDiffFixture(t, func(kv [][2]string) [][2]string {
		right := kv[0][1]
		kv[0][1] = "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"
		return append(kv, [2]string{"parent_linkage2", right})
	})
	img, err := disk.NewRegistry(Format()).Open(t.Context(), fx.child, nil)
	if err != nil {
		t.Fatalf("open with parent_linkage2: %v", err)
	}
	img.Close()

	// A locator type other than VHDX is refused as unsupported.
	b, err := os.ReadFile(fx.child)
	if err != nil {
		t.Fatal(err)
	}
	off := metaItemOffset(t, b, guidParentLocator)
	b[off] ^= 0xff
	_, err = Format().Open(t.Context(), fileOf("other-type.vhdx", b), &disk.OpenOptions{})
	if !errs.Is(err, errs.Unimplemented) || !strings.Contains(err.Error(), "parent locator type") {
		t.Fatalf("open: %v", err)
	}
	// HasParent without a locator is corrupt.
	b2 := skeleton{size: dSize, bs: mib, lss: 512, flags: paramHasParent, fileSize: 4 * mib}.build()
	_, err = Format().Open(t.Context(), fileOf("nolocator.vhdx", b2), &disk.OpenOptions{})
	if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "nolocator.vhdx") {
		t.Fatalf("open: %v", err)
	}
	// A partially present block whose chunk has no sector bitmap is corrupt.
	b3 := skeleton{size: dSize, bs: mib, lss: 512, flags: paramHasParent,
		locator: locatorItem(guidVHDXLocatorType, [][2]string{{"parent_linkage", "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"}, {"relative_path", "p.vhdx"}}), fileSize: 5 * mib}.build()
	binary.LittleEndian.PutUint64(b3[tBATOff:], uint64(4*mib)|statePartial)
	_, err = Format().Open(t.Context(), fileOf("nobitmap.vhdx", b3), &disk.OpenOptions{})
	if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "sector bitmap") {
		t.Fatalf("open: %v", err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
