package vhdx

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// VHDX puts every structure on a 1 MiB boundary, so the smallest image is
// some 5 MiB of mostly zeros: too big for a useful fuzz input or a corpus
// file. A fuzz input is therefore either the file itself (when it starts
// with the VHDX identifier) or a sparse description of it: a little-endian
// u16 file size in 64 KiB units (at most fuzzMaxFile), then records of a
// u32 offset, a u16 length and that many bytes, laid over zeros.
const fuzzMaxFile = 16 * mib

func fuzzExpand(data []byte) []byte { return new(expander).expand(data) }

// expander expands fuzz inputs into one reused buffer, clearing only what
// the previous input wrote: clearing megabytes per run would dominate.
type expander struct {
	buf   []byte
	dirty [][2]int64
}

func (x *expander) expand(data []byte) []byte {
	if bytes.HasPrefix(data, []byte(identSignature)) || len(data) < 2 {
		return data
	}
	if x.buf == nil {
		x.buf = make([]byte, fuzzMaxFile)
	}
	for _, r := range x.dirty {
		clear(x.buf[r[0]:r[1]])
	}
	x.dirty = x.dirty[:0]
	le := binary.LittleEndian
	size := min(int64(le.Uint16(data))*64*kib, fuzzMaxFile)
	b := x.buf[:size]
	for p := data[2:]; len(p) >= 6; {
		off, n := int64(le.Uint32(p)), int(le.Uint16(p[4:]))
		p = p[6:]
		n = min(n, len(p))
		if off < size {
			k := copy(b[off:], p[:n])
			x.dirty = append(x.dirty, [2]int64{off, off + int64(k)})
		}
		p = p[n:]
	}
	return b
}

// fuzzCompact encodes a file as fuzzExpand's sparse description: one
// record per run of non-zero 512-byte sectors.
func fuzzCompact(file []byte) []byte {
	le := binary.LittleEndian
	out := le.AppendUint16(nil, uint16((int64(len(file))+64*kib-1)/(64*kib)))
	for off := 0; off < len(file); {
		if isZero(file[off:min(off+512, len(file))]) {
			off += 512
			continue
		}
		end := off
		for end < len(file) && end-off < 60*1024 && !isZero(file[end:min(end+512, len(file))]) {
			end = min(end+512, len(file))
		}
		// Trim trailing zeros of the run.
		for end > off && file[end-1] == 0 {
			end--
		}
		out = le.AppendUint32(out, uint32(off))
		out = le.AppendUint16(out, uint16(end-off))
		out = append(out, file[off:end]...)
		off = (end + 511) / 512 * 512
	}
	return out
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// fuzzSeeds are small valid images and damaged variants.
func fuzzSeeds(t testing.TB) map[string][]byte {
	pt := &disktest.Pattern{Name: "seed", Size: 4 * mib, Seed: 9, Data: []disk.Extent{{Off: 0, Len: 1024}, {Off: 2*mib + 512, Len: 512}}}
	seeds := map[string][]byte{
		"dynamic": fuzzCompact(ferryBytes(t, pt, nil)),
		"fixed":   fuzzCompact(ferryBytes(t, pt, map[string]string{"subformat": "fixed"})),
	}
	// A zero block.
	b := ferryBytes(t, pt, nil)
	setBAT(b, 1, stateZero)
	seeds["zero-block"] = fuzzCompact(b)

	// A differencing child with a partial block and its sector bitmap.
	ratio := chunkRatio(512, mib)
	c := skeleton{size: 4 * mib, bs: mib, lss: 512, flags: paramHasParent, fileSize: 6 * mib,
		locator: locatorItem(guidVHDXLocatorType, [][2]string{{"parent_linkage", "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"}, {"relative_path", `..\p.vhdx`}})}.build()
	setBAT(c, 0, uint64(4*mib)|statePartial)
	setBAT(c, bitmapIndex(0, ratio), uint64(5*mib)|stateFull)
	c[4*mib] = 0x55
	c[5*mib] = 0x0f
	seeds["differencing"] = fuzzCompact(c)

	// A dirty log: one entry that zeroes part of block 0 and rewrites
	// the BAT to drop block 2.
	d := ferryBytes(t, pt, nil)
	g := mustGUID("11111111-2222-3333-4444-555555555555")
	rewriteHeaders(d, func(h *header) { h.logGUID = g })
	bat := make([]byte, 4096)
	copy(bat, d[tBATOff:tBATOff+8])
	e := tEntry{seq: 3, tail: 0, flushed: int64(len(d)), last: int64(len(d)), guid: g,
		descs: []tDesc{{off: tDataOff + 4096, n: 4096}, {off: tBATOff, sector: bat}}}
	putLog(d, 0, e.bytes())
	seeds["dirty-log"] = fuzzCompact(d)

	// Damaged variants (f.Add only).
	for name, s := range map[string]func([]byte){
		"bad-header-crc": func(b []byte) { b[header1Offset+4]++ },
		"bad-bat":        func(b []byte) { setBAT(b, 1, getBAT(b, 0)) },
		"bad-meta":       func(b []byte) { b[tMetaOff+10] = 0xff },
		"truncated":      nil,
	} {
		b := ferryBytes(t, pt, nil)
		if s != nil {
			s(b)
		} else {
			b = b[:tBATOff+100]
		}
		seeds["damaged-"+name] = fuzzCompact(b)
	}
	seeds["raw-truncated"] = ferryBytes(t, pt, nil)[:4096]
	return seeds
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	x := new(expander)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, x.expand(data))
	})
}

func fuzzOne(t *testing.T, b []byte) {
	const name = "fuzz.vhdx"
	ctx := context.Background()
	img, err := Format().Open(ctx, disk.BytesFile(name, b), &disk.OpenOptions{})
	if err != nil {
		code := errs.CodeOf(err)
		if code != errs.Corrupt && code != errs.Unimplemented && code != errs.FailedPrecondition || !strings.Contains(err.Error(), name) {
			t.Fatalf("open: unexpected error %v (code %v)", err, code)
		}
		return
	}
	defer img.Close()
	budget := int64(32 * mib)
	var next int64
	buf := make([]byte, mib)
	for e, err := range img.Extents(ctx, 0, img.Size()) {
		if err != nil {
			t.Fatalf("extents: %v", err)
		}
		if e.Off != next || e.Len <= 0 {
			t.Fatalf("extent %+v does not follow %d", e, next)
		}
		next = e.End()
		for off := e.Off; off < e.End() && budget > 0; off += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), e.End()-off)]
			if e.Kind != disk.Data {
				p = p[:min(len(p), 4096)]
			}
			n, err := img.ReadAt(p, off)
			if n != len(p) || (err != nil && !(err.Error() == "EOF" && off+int64(n) == img.Size())) {
				t.Fatalf("read %d at %d: %d, %v", len(p), off, n, err)
			}
			if e.Kind != disk.Data && !isZero(p) {
				t.Fatalf("%v extent %+v reads non-zero bytes", e.Kind, e)
			}
			budget -= int64(len(p))
			if e.Kind != disk.Data {
				break
			}
		}
	}
	if next != img.Size() {
		t.Fatalf("extents end at %d, size %d", next, img.Size())
	}
	if _, err := img.(disk.Checker).Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
	_ = img.Info()
}

// TestFuzzSeeds runs the seeds (the committed corpus runs with plain go
// test too) and, with VHDX_WRITE_CORPUS=1, rewrites testdata/fuzz/FuzzOpen.
func TestFuzzSeeds(t *testing.T) {
	seeds := fuzzSeeds(t)
	for name, s := range seeds {
		t.Run(name, func(t *testing.T) {
			b := fuzzExpand(s)
			if !strings.HasPrefix(name, "damaged") && !strings.HasPrefix(name, "raw") {
				img, err := Format().Open(t.Context(), disk.BytesFile(name, b), &disk.OpenOptions{})
				if name == "differencing" {
					if !errs.Is(err, errs.FailedPrecondition) {
						t.Fatalf("open: %v", err)
					}
				} else if err != nil {
					t.Fatalf("seed %s does not open: %v", name, err)
				} else {
					img.Close()
				}
			}
			fuzzOne(t, b)
		})
	}
	if os.Getenv("VHDX_WRITE_CORPUS") != "1" {
		return
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dynamic", "fixed", "zero-block", "differencing", "dirty-log"} {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seeds[name])
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
