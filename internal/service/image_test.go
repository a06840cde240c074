package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/formats"
)

// cancelOnProgress cancels a context at the first progress report.
type cancelOnProgress struct{ cancel context.CancelFunc }

func (c cancelOnProgress) SetTotal(int64) {}
func (c cancelOnProgress) Add(int64)      { c.cancel() }
func (c cancelOnProgress) Phase(string)   {}

func TestConvertCanceledLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(t, &disktest.Pattern{Name: "s", Size: 64 << 20, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 64 << 20}}}, src)
	s := NewImages(formats.Registry(), formats.Archives(), nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, err := s.Convert(ctx, ConvertRequest{Src: OpenRequest{Path: src}, Dst: filepath.Join(dir, "out.raw"), DstFormat: "raw", Progress: cancelOnProgress{cancel}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want canceled", err)
	}
	disktest.AssertOnly(t, dir, "src.raw")
}

func TestConvertToStdout(t *testing.T) {
	dir := t.TempDir()
	pt := &disktest.Pattern{Name: "s", Size: 3 << 20, Seed: 2, Data: []disk.Extent{{Off: 1 << 20, Len: 4096}}}
	src := filepath.Join(dir, "src.raw")
	disktest.WriteRaw(t, pt, src)
	s := NewImages(formats.Registry(), formats.Archives(), nil)
	out, err := os.Create(filepath.Join(dir, "captured"))
	if err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	done := make(chan []byte)
	go func() {
		var b []byte
		buf := make([]byte, 1<<16)
		for {
			n, err := r.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				done <- b
				return
			}
		}
	}()
	_, err = s.Convert(t.Context(), ConvertRequest{Src: OpenRequest{Path: src}, Dst: "-", DstFormat: "raw", Output: w})
	w.Close()
	got := <-done
	out.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := pt.Bytes()
	if len(got) != len(want) || string(got) != string(want) {
		t.Fatalf("stdout holds %d bytes, want the %d-byte image", len(got), len(want))
	}
}
