package vdi

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestConcurrentWriteZero writes and zeroes disjoint, unaligned ranges from
// four goroutines, each range first written then possibly zeroed or
// rewritten, and checks the result with ferry and with qemu-img.
func TestConcurrentWriteZero(t *testing.T) {
	const size = 24*disktest.MiB + 512
	r := rand.New(rand.NewPCG(7, 7))
	type job struct {
		off, n int64
		fill   byte
		zero   bool // zero part of the range after writing it
		zoff   int64
		zn     int64
	}
	var jobs []job
	for off := int64(0); off < size; {
		n := min(size-off, 1+r.Int64N(3*disktest.MiB))
		if r.IntN(3) > 0 {
			j := job{off: off, n: n, fill: byte(1 + r.IntN(250))}
			if r.IntN(2) == 0 {
				j.zero = true
				j.zoff = off + r.Int64N(n)
				j.zn = 1 + r.Int64N(off+n-j.zoff)
			}
			jobs = append(jobs, j)
		}
		off += n
	}
	r.Shuffle(len(jobs), func(i, k int) { jobs[i], jobs[k] = jobs[k], jobs[i] })
	want := make([]byte, size)
	for _, j := range jobs {
		copy(want[j.off:j.off+j.n], bytes.Repeat([]byte{j.fill}, int(j.n)))
		if j.zero {
			clear(want[j.zoff : j.zoff+j.zn])
		}
	}

	for _, v := range variants {
		for _, onFile := range []bool{true, false} {
			name := v.name + "/memory"
			if onFile {
				name = v.name + "/file"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "c.vdi")
				var tgt disk.FileTarget
				var mem *memTarget
				if onFile {
					f, err := os.Create(path)
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					tgt = fileTarget{f}
				} else {
					mem = &memTarget{name: path}
					tgt = mem
				}
				w, err := newWriter(tgt, size, v.opts["static"] == "on", defaultBlockSize)
				if err != nil {
					t.Fatal(err)
				}
				ch := make(chan job)
				var wg sync.WaitGroup
				for range 4 {
					wg.Go(func() {
						for j := range ch {
							if _, err := w.WriteAt(bytes.Repeat([]byte{j.fill}, int(j.n)), j.off); err != nil {
								t.Error(err)
							}
							if j.zero {
								if err := w.Zero(j.zoff, j.zn); err != nil {
									t.Error(err)
								}
							}
						}
					})
				}
				for _, j := range jobs {
					ch <- j
				}
				close(ch)
				wg.Wait()
				if err := w.Commit(t.Context()); err != nil {
					t.Fatal(err)
				}
				if mem != nil {
					if err := os.WriteFile(path, mem.b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				img, err := disk.NewRegistry(Format()).Open(t.Context(), path, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				if got := readAll(t, img); !bytes.Equal(got, want) {
					t.Fatalf("content differs at %d", firstDiff(got, want))
				}
				if res, err := img.(disk.Checker).Check(t.Context()); err != nil || !res.Clean() {
					t.Fatalf("check: %+v, %v", res, err)
				}
				// Every extent reading as zeros must really be zeros.
				for _, e := range extents(t, img, 0, img.Size()) {
					if e.Kind != disk.Data && !allZero(want[e.Off:e.End()]) {
						t.Fatalf("%v extent %+v holds data", e.Kind, e)
					}
				}
				ref := filepath.Join(dir, "ref.raw")
				if err := os.WriteFile(ref, want, 0o644); err != nil {
					t.Fatal(err)
				}
				disktest.Qemu(t, "compare", "-f", "vdi", "-F", "raw", path, ref)
				disktest.Qemu(t, "check", "-f", "vdi", path)
			})
		}
	}
}
