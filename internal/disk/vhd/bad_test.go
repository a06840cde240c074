package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// smallPattern fills blocks 0 and 2 of a 2 MiB disk with 512 KiB blocks.
var smallPattern = &disktest.Pattern{Name: "small", Size: 2 << 20, Seed: 7, Data: []disk.Extent{
	{Off: 0, Len: 4096}, {Off: 1<<20 + 512, Len: 8192},
}}

// smallImage returns the bytes of smallPattern written by ferry.
func smallImage(t testing.TB, sub string) []byte {
	t.Helper()
	opts := map[string]string{"subformat": sub}
	if sub == "dynamic" {
		opts["block_size"] = "512K"
	}
	path := filepath.Join(t.TempDir(), "small.vhd")
	writeFerry(t, smallPattern, path, &disk.CreateOptions{Options: opts})
	f, err := disk.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, f.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// refooter edits the footer at the end (and the copy at 0 of a dynamic
// disk) and fixes the checksums.
func refooter(b []byte, fn func(*footer)) {
	end := b[len(b)-footerSize:]
	ft, _, _ := parseFooter(end)
	fn(&ft)
	raw := ft.marshal()
	copy(end, raw)
	if ft.diskType != typeFixed {
		copy(b, raw)
	}
}

// reheader edits the dynamic header at 512 and fixes its checksum.
func reheader(b []byte, fn func(*dynHeader)) {
	h, _, _ := parseHeader(b[footerSize:])
	fn(&h)
	copy(b[footerSize:], h.marshal())
}

func batEntry(b []byte, i int) uint32 {
	return binary.BigEndian.Uint32(b[footerSize+headerSize+4*i:])
}

func setBAT(b []byte, i int, v uint32) {
	binary.BigEndian.PutUint32(b[footerSize+headerSize+4*i:], v)
}

func TestBadInput(t *testing.T) {
	dyn := smallImage(t, "dynamic")
	fixed := smallImage(t, "fixed")
	if batEntry(dyn, 0) == unallocated || batEntry(dyn, 1) != unallocated || batEntry(dyn, 2) == unallocated {
		t.Fatalf("unexpected layout: BAT %x %x %x", batEntry(dyn, 0), batEntry(dyn, 1), batEntry(dyn, 2))
	}
	cases := []struct {
		name string
		base []byte
		mut  func([]byte) []byte
		code errs.Code // Unknown: opens and reads the pattern
		msg  string
	}{
		{"empty-file", dyn, func(b []byte) []byte { return nil }, errs.Corrupt, "too small"},
		{"100-bytes", dyn, func(b []byte) []byte { return b[:100] }, errs.Corrupt, "too small"},
		{"600-bytes", dyn, func(b []byte) []byte { return b[:600] }, errs.Corrupt, "dynamic header offset"},
		{"truncated-footer", dyn, func(b []byte) []byte { return b[:len(b)-100] }, errs.Unknown, ""},
		{"footer-gone", dyn, func(b []byte) []byte { return b[:len(b)-footerSize] }, errs.Unknown, ""},
		{"truncated-into-block", dyn, func(b []byte) []byte { return b[:len(b)-footerSize-4096] }, errs.Corrupt, "beyond the end"},
		{"end-footer-checksum", dyn, func(b []byte) []byte { b[len(b)-10]++; return b }, errs.Unknown, ""},
		{"both-footer-checksums", dyn, func(b []byte) []byte { b[len(b)-10]++; b[500]++; return b }, errs.Corrupt, "checksum"},
		{"no-cookie", dyn, func(b []byte) []byte { b[0] = 'x'; b[len(b)-footerSize] = 'x'; return b }, errs.Corrupt, "no footer"},
		{"header-cookie", dyn, func(b []byte) []byte { b[footerSize] = 'x'; return b }, errs.Corrupt, "no dynamic header"},
		{"header-checksum", dyn, func(b []byte) []byte { b[footerSize+1000]++; return b }, errs.Corrupt, "dynamic header checksum"},
		{"bat-beyond-eof", dyn, func(b []byte) []byte { setBAT(b, 0, 0x7FFFFFFF); return b }, errs.Corrupt, "beyond the end"},
		{"bat-overlapping-blocks", dyn, func(b []byte) []byte { setBAT(b, 2, batEntry(b, 0)+1); return b }, errs.Corrupt, "overlaps block"},
		{"bat-same-block", dyn, func(b []byte) []byte { setBAT(b, 2, batEntry(b, 0)); return b }, errs.Corrupt, "overlaps block"},
		{"bat-into-header", dyn, func(b []byte) []byte { setBAT(b, 0, 1); return b }, errs.Corrupt, "dynamic header"},
		{"bat-into-bat", dyn, func(b []byte) []byte { setBAT(b, 0, 3); return b }, errs.Corrupt, "overlaps the BAT"},
		{"bat-into-footer-copy", dyn, func(b []byte) []byte { setBAT(b, 0, 0); return b }, errs.Corrupt, "footer copy"},
		{"absurd-size", dyn, func(b []byte) []byte { refooter(b, func(f *footer) { f.curSize = 1 << 62 }); return b }, errs.Corrupt, "virtual size"},
		{"size-beyond-bat", dyn, func(b []byte) []byte { refooter(b, func(f *footer) { f.curSize = 100 << 20 }); return b }, errs.Corrupt, "BAT has 4 entries"},
		{"huge-bat", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.maxEntries = 0xFFFFFFFF }); return b }, errs.Corrupt, "larger than"},
		{"bat-offset-beyond-file", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.tableOffset = 1 << 40 }); return b }, errs.Corrupt, "BAT at"},
		{"bat-offset-overflow", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.tableOffset = ^uint64(0) - 3 }); return b }, errs.Corrupt, "BAT at"},
		{"bat-overlaps-header", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.tableOffset = 1024 }); return b }, errs.Corrupt, "overlaps"},
		{"header-offset", dyn, func(b []byte) []byte { refooter(b, func(f *footer) { f.dataOffset = 1 << 50 }); return b }, errs.Corrupt, "dynamic header offset"},
		{"header-offset-zero", dyn, func(b []byte) []byte { refooter(b, func(f *footer) { f.dataOffset = 0 }); return b }, errs.Corrupt, "dynamic header offset"},
		{"block-size-not-pow2", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.blockSize = 3000 }); return b }, errs.Corrupt, "block size"},
		{"block-size-zero", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.blockSize = 0 }); return b }, errs.Corrupt, "block size"},
		{"block-size-huge", dyn, func(b []byte) []byte { reheader(b, func(h *dynHeader) { h.blockSize = 1 << 30 }); return b }, errs.Unimplemented, "block size"},
		{"disk-type-5", dyn, func(b []byte) []byte { refooter(b, func(f *footer) { f.diskType = 5 }); return b }, errs.Unimplemented, "disk type 5"},
		{"disk-type-77", fixed, func(b []byte) []byte { refooter(b, func(f *footer) { f.diskType = 77 }); return b }, errs.Corrupt, "unknown disk type"},
		{"fixed-claims-more", fixed, func(b []byte) []byte { refooter(b, func(f *footer) { f.curSize = 1 << 40 }); return b }, errs.Corrupt, "holds only"},
		{"fixed-absurd", fixed, func(b []byte) []byte { refooter(b, func(f *footer) { f.curSize = 1 << 63 }); return b }, errs.Corrupt, "virtual size"},
		{"fixed-checksum", fixed, func(b []byte) []byte { b[len(b)-10]++; return b }, errs.Corrupt, "checksum"},
		{"fixed-truncated", fixed, func(b []byte) []byte { return b[:len(b)-100] }, errs.Corrupt, "no footer"},
		{"fixed-511-footer", fixed, func(b []byte) []byte { return b[:len(b)-1] }, errs.Unknown, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mut(bytes.Clone(c.base))
			f := disk.BytesFile("bad.vhd", b)
			img, err := Format().Open(t.Context(), f, nil)
			if c.code == errs.Unknown {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				disktest.VerifyImage(t, img, smallPattern)
				return
			}
			if err == nil {
				img.Close()
				t.Fatalf("opened; want %v error containing %q", c.code, c.msg)
			}
			if errs.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "bad.vhd") {
				t.Fatalf("err = %v (%v); want %v containing %q and the file name", err, errs.CodeOf(err), c.code, c.msg)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	dyn := smallImage(t, "dynamic")
	fixed := smallImage(t, "fixed")
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"dynamic", dyn, true},
		{"fixed", fixed, true},
		{"fixed-511", fixed[:len(fixed)-1], true},
		{"dynamic-truncated", dyn[:len(dyn)-100], true},
		{"zeros", make([]byte, 1<<20), false},
		{"tiny", []byte("conectix"), false},
		{"vhdx", append([]byte("vhdxfile"), make([]byte, 1<<20)...), false},
		{"fixed-data-at-0", append(bytes.Clone(fixed[len(fixed)-footerSize:]), make([]byte, 4096)...), false},
	} {
		if got := Format().Probe(disk.BytesFile(c.name, c.b)); got != c.want {
			t.Errorf("%s: probe = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCheck(t *testing.T) {
	dyn := smallImage(t, "dynamic")
	for _, c := range []struct {
		name string
		mut  func([]byte) []byte
		want string
	}{
		{"clean", func(b []byte) []byte { return b }, ""},
		{"footer-missing", func(b []byte) []byte { return b[:len(b)-100] }, "missing or damaged"},
		{"copy-differs", func(b []byte) []byte {
			ft, _, _ := parseFooter(b)
			ft.timestamp++
			copy(b, ft.marshal())
			return b
		}, "differs"},
		{"copy-checksum", func(b []byte) []byte { b[400]++; return b }, "checksum"},
		{"leak-past-end", func(b []byte) []byte { setBAT(b, 3, batEntry(b, 2)); return b }, "past the disk"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.mut(bytes.Clone(dyn))
			if c.name == "leak-past-end" {
				// a 1.5 MiB disk: entry 3 is past its end
				refooter(b, func(f *footer) { f.curSize = 3 << 19 })
			}
			img, err := Format().Open(context.Background(), disk.BytesFile("c.vhd", b), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			res, err := img.(disk.Checker).Check(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "" {
				if !res.Clean() || res.AllocatedClusts != 2 || res.TotalClusters != 4 {
					t.Fatalf("check: %+v", res)
				}
				return
			}
			if res.Clean() || !strings.Contains(strings.Join(res.Problems, "\n"), c.want) {
				t.Fatalf("check: %+v; want a problem containing %q", res, c.want)
			}
		})
	}
}
