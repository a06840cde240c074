package vhdx

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// newWriter creates a writer on a file in a temp dir, through the registry.
func newWriter(t *testing.T, size int64, opts map[string]string) (disk.Writer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "w.vhdx")
	w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "vhdx", size, &disk.CreateOptions{Options: opts})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w, path
}

func TestCreateOptions(t *testing.T) {
	tests := []struct {
		name string
		size int64
		opts map[string]string
		code errs.Code // Unknown: success
		want string
	}{
		{"defaults", 10 * mib, nil, errs.Unknown, ""},
		{"block-size-suffix", 10 * mib, map[string]string{"block_size": "32M"}, errs.Unknown, ""},
		{"block-size-bytes", 10 * mib, map[string]string{"block_size": "1048576"}, errs.Unknown, ""},
		{"block-size-not-pow2", 10 * mib, map[string]string{"block_size": "3M"}, errs.InvalidArgument, "block_size"},
		{"block-size-too-big", 10 * mib, map[string]string{"block_size": "512M"}, errs.InvalidArgument, "block_size"},
		{"block-size-garbage", 10 * mib, map[string]string{"block_size": "big"}, errs.InvalidArgument, "block_size"},
		{"log-size-unaligned", 10 * mib, map[string]string{"log_size": "1536K"}, errs.InvalidArgument, "log_size"},
		{"log-size-zero", 10 * mib, map[string]string{"log_size": "0"}, errs.InvalidArgument, "log_size"},
		{"subformat-bad", 10 * mib, map[string]string{"subformat": "differencing"}, errs.InvalidArgument, "subformat"},
		{"zero-state-bad", 10 * mib, map[string]string{"block_state_zero": "maybe"}, errs.InvalidArgument, "block_state_zero"},
		{"unknown-key", 10 * mib, map[string]string{"cluster_size": "64k"}, errs.InvalidArgument, "cluster_size"},
		{"too-big", 64*tib + 512, nil, errs.InvalidArgument, "64 TiB"},
		{"64t", 64 * tib, nil, errs.Unknown, ""},
		{"bat-too-big", 64 * tib, map[string]string{"block_size": "1M"}, errs.InvalidArgument, "block_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "w.vhdx")
			w, err := disk.NewRegistry(Format()).Create(t.Context(), path, "vhdx", tt.size, &disk.CreateOptions{Options: tt.opts})
			if tt.code == errs.Unknown {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				w.Close()
				return
			}
			if err == nil {
				w.Close()
			}
			if !errs.Is(err, tt.code) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("create: %v; want %v about %q", err, tt.code, tt.want)
			}
		})
	}
}

func TestCreateRefusals(t *testing.T) {
	// A plain stream is not enough.
	_, err := Format().Create(t.Context(), &bytes.Buffer{}, mib, nil)
	if !errs.Is(err, errs.InvalidArgument) {
		t.Fatalf("create on a stream: %v", err)
	}
	// Differencing images are not written.
	path := filepath.Join(t.TempDir(), "w.vhdx")
	_, err = disk.NewRegistry(Format()).Create(t.Context(), path, "vhdx", mib, &disk.CreateOptions{BackingFile: "base.vhdx"})
	if !errs.Is(err, errs.Unimplemented) || !strings.Contains(err.Error(), "base.vhdx") {
		t.Fatalf("create with a backing file: %v", err)
	}
}

func TestSizeRounding(t *testing.T) {
	w, path := newWriter(t, 1000, nil)
	if w.Size() != 1024 {
		t.Fatalf("size %d, want 1024", w.Size())
	}
	if _, err := w.WriteAt([]byte{1, 2, 3}, 1021); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte{1}, 1024); !errs.Is(err, errs.InvalidArgument) {
		t.Fatalf("write past the end: %v", err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	img := openPath(t, path, nil)
	got := readAll(t, img)
	if len(got) != 1024 || !bytes.Equal(got[1021:], []byte{1, 2, 3}) {
		t.Fatalf("read %d bytes, tail %v", len(got), got[1018:])
	}
	if q := disktest.QemuInfoOf(t, path, ""); q.VirtualSize != 1024 {
		t.Fatalf("qemu size %d", q.VirtualSize)
	}
}

func TestWriterLifecycle(t *testing.T) {
	w, _ := newWriter(t, 4*mib, nil)
	if w.Sequential() {
		t.Fatal("sequential")
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte{1}, 0); !errs.Is(err, errs.FailedPrecondition) {
		t.Fatalf("write after commit: %v", err)
	}
	if err := w.Zero(0, 512); !errs.Is(err, errs.FailedPrecondition) {
		t.Fatalf("zero after commit: %v", err)
	}
	if err := w.Commit(t.Context()); err == nil {
		t.Fatal("second commit accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// TestZero covers Zero on unwritten, written, whole and partial blocks,
// for both subformats and both block_state_zero settings.
func TestZero(t *testing.T) {
	for _, v := range []struct {
		name  string
		opts  map[string]string
		state uint64 // the state of a zeroed, never written block
	}{
		{"dynamic", map[string]string{"block_size": "1M"}, stateZero},
		{"dynamic-nozero", map[string]string{"block_size": "1M", "block_state_zero": "off"}, stateNotPresent},
		{"fixed", map[string]string{"block_size": "1M", "subformat": "fixed"}, stateFull},
	} {
		t.Run(v.name, func(t *testing.T) {
			w, path := newWriter(t, 8*mib, v.opts)
			ones := bytes.Repeat([]byte{1}, int(mib))
			want := make([]byte, 8*mib)
			write := func(off, n int64) {
				if _, err := w.WriteAt(ones[:n], off); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], ones[:n])
			}
			zero := func(off, n int64) {
				if err := w.Zero(off, n); err != nil {
					t.Fatal(err)
				}
				clear(want[off : off+n])
			}
			zero(0, mib)          // block 0: whole, never written
			zero(mib+512, 4096)   // block 1: partial, never written
			write(2*mib, mib)     // block 2: written, then partly zeroed
			zero(2*mib+100, 5000) //
			write(3*mib, 4096)    // block 3: written, then zeroed whole
			zero(3*mib, mib)      //
			zero(4*mib-512, mib+1024)
			write(6*mib+10, 10) // block 6: written after a whole zero
			if err := w.Zero(0, 0); err != nil {
				t.Fatal(err)
			}
			if err := w.Zero(8*mib, 1); !errs.Is(err, errs.InvalidArgument) {
				t.Fatalf("zero past the end: %v", err)
			}
			if err := w.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			img := openPath(t, path, nil)
			if got := readAll(t, img); !bytes.Equal(got, want) {
				t.Fatalf("content differs at %d", firstDiff(got, want))
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if st := getBAT(b, 0) & batStateMask; st != v.state {
				t.Fatalf("zeroed unwritten block in state %d, want %d", st, v.state)
			}
			if st := getBAT(b, 1) & batStateMask; st == stateFull && v.state != stateFull {
				t.Fatalf("partly zeroed unwritten block allocated")
			}
			disktest.Qemu(t, "check", "-f", "vhdx", path)
		})
	}
}

// TestConcurrentWriteZero writes and zeroes disjoint unaligned pieces of
// the same blocks from many goroutines.
func TestConcurrentWriteZero(t *testing.T) {
	for _, sub := range []string{"dynamic", "fixed"} {
		t.Run(sub, func(t *testing.T) {
			w, path := newWriter(t, 16*mib, map[string]string{"block_size": "1M", "subformat": sub})
			want := make([]byte, 16*mib)
			const piece = 12345
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for off := int64(g) * piece; off+piece <= 16*mib; off += 8 * piece {
						if (off/piece)%3 == 0 {
							if err := w.Zero(off, piece); err != nil {
								t.Error(err)
							}
							continue
						}
						b := bytes.Repeat([]byte{byte(off/piece) | 1}, piece)
						if _, err := w.WriteAt(b, off); err != nil {
							t.Error(err)
						}
					}
				})
			}
			for off := int64(0); off+piece <= 16*mib; off += piece {
				if (off/piece)%3 != 0 {
					copy(want[off:], bytes.Repeat([]byte{byte(off/piece) | 1}, piece))
				}
			}
			wg.Wait()
			if err := w.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			img := openPath(t, path, nil)
			if got := readAll(t, img); !bytes.Equal(got, want) {
				t.Fatalf("content differs at %d", firstDiff(got, want))
			}
		})
	}
}

func TestInfo(t *testing.T) {
	pt := smallPattern()
	for _, v := range []struct {
		opts map[string]string
		sub  string
		bs   int64
		leav bool
	}{
		{nil, "dynamic", 8 * mib, false},
		{map[string]string{"subformat": "fixed", "block_size": "2M", "log_size": "3M"}, "fixed", 2 * mib, true},
	} {
		dir := t.TempDir()
		img := openPath(t, writeFerry(t, dir, pt, v.opts), nil)
		info := img.Info()
		sp := info.Specific
		if info.Format != "vhdx" || info.VirtualSize != pt.Size || info.ClusterSize != v.bs || info.Filename == "" ||
			sp["subformat"] != v.sub || sp["block-size"] != v.bs || sp["leave-blocks-allocated"] != v.leav ||
			sp["logical-sector-size"] != int64(512) || sp["physical-sector-size"] != int64(512) ||
			sp["log-replayed"] != false {
			t.Fatalf("info %+v", info)
		}
		if ls := sp["log-size"]; (v.sub == "fixed" && ls != 3*mib) || (v.sub == "dynamic" && ls != mib) {
			t.Fatalf("log-size %v", ls)
		}
		if g, ok := parseGUID(sp["data-write-guid"].(string)); !ok || g.isZero() {
			t.Fatalf("data-write-guid %v", sp["data-write-guid"])
		}
	}
}

// TestHolesAsZero: a fixed image keeps unwritten space as holes, and the
// reader reports them as Zero (keeping data and a margin as Data).
func TestHolesAsZero(t *testing.T) {
	pt := &disktest.Pattern{Name: "holes", Size: 64 * mib, Seed: 8, Data: []disk.Extent{
		{Off: 3*mib + 1000, Len: 70000}, {Off: 40 * mib, Len: 2 * mib},
	}}
	img := openPath(t, writeFerry(t, t.TempDir(), pt, map[string]string{"subformat": "fixed"}), nil)
	disktest.VerifyImage(t, img, pt)
	var data int64
	for e, err := range img.Extents(t.Context(), 0, img.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disk.Data {
			data += e.Len
		}
		if e.Kind == disk.Unallocated {
			t.Fatalf("unallocated extent %+v in a fixed image", e)
		}
	}
	if data > 4*mib {
		t.Fatalf("%d bytes reported as data; holes should be Zero", data)
	}
}
