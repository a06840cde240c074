package ova

import (
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// roundTripPatterns are the two disks of the round-trip VM.
func roundTripPatterns() []*disktest.Pattern {
	ps := disktest.Patterns(true)
	var out []*disktest.Pattern
	for _, p := range ps {
		if p.Name == "unaligned" || p.Name == "full" {
			out = append(out, p)
		}
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	pts := roundTripPatterns()
	for _, fw := range []core.Firmware{core.BIOS, core.UEFI} {
		for _, how := range []string{"file", "pipe"} {
			t.Run(string(fw)+"/"+how, func(t *testing.T) {
				ctx := t.Context()
				dir := t.TempDir()
				vm := testVM("rt-"+string(fw), fw, pts...)
				var path string
				if how == "file" {
					path = writeFile(t, dir, vm, pts, nil)
				} else {
					path = writePipe(t, dir, vm, pts, nil)
				}
				f, err := disk.OpenFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !Format().Probe(f) {
					t.Fatal("probe does not claim an OVA ferry wrote")
				}
				f.Close()
				r := openFile(t, path)
				if got := r.VM(); !reflect.DeepEqual(got, vm) {
					t.Fatalf("VM()\n got %+v\nwant %+v", got, vm)
				}
				for i, pt := range pts {
					img, err := r.OpenDisk(ctx, i)
					if err != nil {
						t.Fatalf("open disk %d: %v", i, err)
					}
					disktest.VerifyImage(t, img, pt)
					if n := img.Info().Filename; !strings.HasSuffix(n, ".ova/"+vm.Name+"-disk"+string(rune('1'+i))+".vmdk") {
						t.Errorf("disk %d is named %q", i, n)
					}
					img.Close()
				}
				if err := r.Verify(ctx); err != nil {
					t.Fatalf("verify: %v", err)
				}
				info := r.Info()
				if info.Format != "ova" || len(info.Disks) != 2 || info.Disks[0].Format != "vmdk" ||
					info.Disks[1].VirtualSize != pts[1].Size || info.Extra["manifest"] != "sha256" || info.Extra["ovf-first"] != true {
					t.Fatalf("info: %+v", info)
				}

				// the same through OpenStream
				sf, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer sf.Close()
				sr, err := Format().OpenStream(ctx, struct{ io.Reader }{sf}, &archive.OpenOptions{Disks: testRegistry()})
				if err != nil {
					t.Fatalf("open stream: %v", err)
				}
				if got := sr.VM(); !reflect.DeepEqual(got, vm) {
					t.Fatalf("stream VM()\n got %+v\nwant %+v", got, vm)
				}
				for want := 0; ; want++ {
					i, s, err := sr.NextDisk(ctx)
					if errors.Is(err, io.EOF) {
						if want != len(pts) {
							t.Fatalf("stream ended after %d disks", want)
						}
						break
					}
					if err != nil {
						t.Fatalf("next disk: %v", err)
					}
					if i != want {
						t.Fatalf("disk index %d, want %d", i, want)
					}
					verifyStream(t, s, pts[i])
					s.Close()
				}
				if err := sr.Close(); err != nil {
					t.Fatalf("close stream: %v", err)
				}
			})
		}
	}
}
