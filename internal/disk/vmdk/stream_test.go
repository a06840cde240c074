package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zlib"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// onlyReader hides everything but Read, so nothing can seek.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func mustOpenStream(t testing.TB, path string) disk.Stream {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s, err := Format().OpenStream(t.Context(), onlyReader{f}, nil)
	if err != nil {
		t.Fatalf("open stream %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// verifyStream reads s to the end and checks its runs against pt: in
// order, not overlapping, the right bytes, and zeros everywhere between.
func verifyStream(t testing.TB, s disk.Stream, pt *disktest.Pattern) {
	t.Helper()
	if s.Size() != pt.Size {
		t.Fatalf("%s: stream size %d, want %d", pt.Name, s.Size(), pt.Size)
	}
	if s.Info().Format != "vmdk" || s.Info().VirtualSize != pt.Size {
		t.Fatalf("%s: stream info %+v", pt.Name, s.Info())
	}
	var pos int64
	for {
		off, p, err := s.Next(t.Context())
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: next: %v", pt.Name, err)
		}
		if off < pos || off+int64(len(p)) > pt.Size {
			t.Fatalf("%s: run [%d, %d) after %d or past the end", pt.Name, off, off+int64(len(p)), pos)
		}
		wantZeros(t, pt, pos, off)
		want := make([]byte, len(p))
		pt.Fill(off, want)
		if !bytes.Equal(p, want) {
			t.Fatalf("%s: run at %d differs", pt.Name, off)
		}
		pos = off + int64(len(p))
	}
	wantZeros(t, pt, pos, pt.Size)
}

// wantZeros fails unless pt reads as zeros in [s, e).
func wantZeros(t testing.TB, pt *disktest.Pattern, s, e int64) {
	t.Helper()
	for _, d := range pt.Data {
		a, b := max(s, d.Off), min(e, d.End())
		for ; a < b; a += mib {
			p := make([]byte, min(mib, b-a))
			pt.Fill(a, p)
			if !isZero(p) {
				t.Fatalf("%s: non-zero bytes in [%d, %d) in no run of the stream", pt.Name, a, a+int64(len(p)))
			}
		}
	}
}

// TestStreamPipe: ferry's streamOptimized output goes through a pipe (a
// plain, non-seekable Target) into OpenStream (a non-seekable source).
func TestStreamPipe(t *testing.T) {
	for _, pt := range disktest.Patterns(testing.Short()) {
		t.Run(pt.Name, func(t *testing.T) {
			pr, pw := io.Pipe()
			errc := make(chan error, 1)
			go func() {
				w, err := Format().Create(t.Context(), pw, pt.Size, opts(StreamOptimized))
				if err == nil {
					if !w.Sequential() {
						err = errors.New("streamOptimized writer is not sequential")
					}
					if err == nil {
						err = disktest.WritePattern(t.Context(), w, pt)
					}
					if err == nil {
						err = w.Commit(t.Context())
					}
					w.Close()
				}
				pw.CloseWithError(err)
				errc <- err
			}()
			s, err := Format().OpenStream(t.Context(), pr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			want := *pt
			want.Size = roundSector(pt.Size)
			verifyStream(t, s, &want)
			io.Copy(io.Discard, pr)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestStreamLayout checks ferry's streamOptimized file against VMware's
// layout: header v3 with flags 0x30001 and GD_AT_END at offset 0, the
// descriptor VMware writes, grains in LBA order behind markers, a grain
// table after each span of 512 grains that has any (none for an empty
// span), then the directory, the footer at EOF-1024 behind its marker and
// the end-of-stream marker at EOF-512.
func TestStreamLayout(t *testing.T) {
	pt := &disktest.Pattern{Name: "spans", Size: 100*mib + 512, Seed: 5, Data: []disk.Extent{
		{Off: 0, Len: mib}, {Off: 40*mib + 4096, Len: mib}, {Off: 99 * mib, Len: mib + 512},
	}}
	path := writeImage(t, t.TempDir(), "disk.vmdk", StreamOptimized, pt)
	b := mustRead(t, path)
	le := binary.LittleEndian
	if len(b)%sectorSize != 0 {
		t.Fatalf("file of %d bytes is not whole sectors", len(b))
	}
	h, ok := parseHeader(b)
	if !ok {
		t.Fatal("no header at offset 0")
	}
	wantHdr := header{version: 3, flags: 0x30001, capacity: uint64(pt.Size / sectorSize), grainSize: 128,
		descOffset: 1, descSize: 20, numGTEs: 512, gdOffset: gdAtEnd, overhead: 128, nl: [4]byte{'\n', ' ', '\r', '\n'}, compression: 1}
	if h != wantHdr {
		t.Fatalf("header %+v\nwant   %+v", h, wantHdr)
	}
	desc := string(bytes.TrimRight(b[512:512*21], "\x00"))
	for _, want := range []string{
		"# Disk DescriptorFile\n", `createType="streamOptimized"`,
		fmt.Sprintf("RDONLY %d SPARSE \"disk.vmdk\"\n", pt.Size/sectorSize),
		`ddb.adapterType = "lsilogic"`, `ddb.virtualHWVersion = "8"`, "parentCID=ffffffff",
	} {
		if !strings.Contains(desc, want) {
			t.Fatalf("descriptor lacks %q:\n%s", want, desc)
		}
	}
	if !isZero(b[512*21 : 512*128]) {
		t.Fatal("bytes between the descriptor and the first grain are not zero")
	}
	// Walk the markers.
	type gtSeen struct {
		span   int64
		sector int64
	}
	var (
		lastLBA  int64 = -1
		gts      []gtSeen
		grainAt  = map[int64]int64{} // grain -> sector of its marker
		gdSector int64
		pos      = int64(128 * sectorSize)
	)
	for {
		m := parseMarker(b[pos:])
		if m.size != 0 {
			lba := int64(m.val)
			if lba <= lastLBA || lba%128 != 0 {
				t.Fatalf("grain marker at %d: LBA %d after %d", pos, lba, lastLBA)
			}
			if len(gts) > 0 && gts[len(gts)-1].span >= lba/128/512 {
				t.Fatalf("grain at LBA %d after the grain table of its span", lba)
			}
			lastLBA = lba
			grainAt[lba/128] = pos / sectorSize
			pos += sectorsFor(12+int64(m.size)) * sectorSize
			continue
		}
		if m.typ == markerGT {
			if m.val != 4 {
				t.Fatalf("GT marker at %d: %d sectors", pos, m.val)
			}
			gts = append(gts, gtSeen{span: lastLBA / 128 / 512, sector: pos/sectorSize + 1})
			pos += 5 * sectorSize
			continue
		}
		if m.typ != markerGD {
			t.Fatalf("marker type %d at %d, want a grain, GT or GD marker", m.typ, pos)
		}
		gdSector = pos/sectorSize + 1
		pos += int64(1+m.val) * sectorSize
		break
	}
	if len(gts) != 3 {
		t.Fatalf("%d grain tables, want 3 (one per span with grains)", len(gts))
	}
	if end := int64(len(b)); pos != end-3*sectorSize {
		t.Fatalf("directory ends at %d, footer marker should follow at %d", pos, end-3*sectorSize)
	}
	fm := parseMarker(b[pos:])
	if fm != (marker{val: 1, typ: markerFooter}) || !isZero(b[pos+16:pos+512]) {
		t.Fatalf("footer marker %+v", fm)
	}
	fh, ok := parseHeader(b[len(b)-1024:])
	wantHdr.gdOffset = uint64(gdSector)
	if !ok || fh != wantHdr {
		t.Fatalf("footer %+v\nwant   %+v", fh, wantHdr)
	}
	if !isZero(b[len(b)-512:]) {
		t.Fatal("the last sector is not an end-of-stream marker")
	}
	// The directory and tables point at the grains.
	nGTs := (pt.Size/(64*kib) + 511) / 512
	for span := range nGTs {
		e := int64(le.Uint32(b[gdSector*sectorSize+span*4:]))
		idx := -1
		for i, g := range gts {
			if g.span == span {
				idx = i
			}
		}
		if idx < 0 {
			if e != 0 {
				t.Fatalf("directory entry %d = %d for a span without grains", span, e)
			}
			continue
		}
		if e != gts[idx].sector {
			t.Fatalf("directory entry %d = %d, table at %d", span, e, gts[idx].sector)
		}
		for j := range int64(512) {
			g := span*512 + j
			v := int64(le.Uint32(b[e*sectorSize+j*4:]))
			if v != grainAt[g] {
				t.Fatalf("table %d entry %d = %d, grain marker at %d", span, j, v, grainAt[g])
			}
		}
	}
}

// TestStreamRefusals: what OpenStream cannot read is refused up front or
// where the stream goes wrong, naming the offset.
func TestStreamRefusals(t *testing.T) {
	pt := &disktest.Pattern{Name: "small", Size: 4 * mib, Seed: 3, Data: []disk.Extent{{Off: 0, Len: 2 * mib}}}
	dir := t.TempDir()
	stream := mustRead(t, writeImage(t, dir, "s.vmdk", StreamOptimized, pt))
	sparse := mustRead(t, writeImage(t, dir, "m.vmdk", MonolithicSparse, pt))
	writeImage(t, dir, "f.vmdk", MonolithicFlat, pt)
	flat := mustRead(t, filepath.Join(dir, "f.vmdk"))

	open := func(b []byte) (disk.Stream, error) {
		return Format().OpenStream(t.Context(), onlyReader{bytes.NewReader(b)}, nil)
	}
	drain := func(s disk.Stream) error {
		defer s.Close()
		for {
			if _, _, err := s.Next(t.Context()); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
		code errs.Code
		text string
	}{
		{"monolithicSparse", sparse, errs.Unimplemented, "streamOptimized"},
		{"descriptor", flat, errs.Unimplemented, "descriptor"},
		{"garbage", bytes.Repeat([]byte{0xee}, 4096), errs.Corrupt, "magic"},
		{"short header", stream[:100], errs.Corrupt, "offset"},
		{"truncated in grains", stream[:70000], errs.Corrupt, "offset"},
		{"truncated before end marker", stream[:len(stream)-512], errs.Corrupt, "end-of-stream"},
		{"out of order", outOfOrderStream(t), errs.Unimplemented, "out of order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := open(tc.b)
			if err == nil {
				err = drain(s)
			}
			wantErr(t, err, tc.code, tc.text)
		})
	}
}

// outOfOrderStream builds a stream in qemu's layout (no GD_AT_END, no
// end-of-stream marker) whose second grain comes before its first.
func outOfOrderStream(t testing.TB) []byte {
	h := header{version: 3, flags: flagValidNL | flagCompressed | flagMarkers, capacity: 512, grainSize: 128,
		numGTEs: 512, gdOffset: 1, overhead: 8, compression: compressDeflate}
	b := make([]byte, 8*sectorSize)
	copy(b, h.marshal())
	for _, lba := range []uint64{256, 0} {
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write(bytes.Repeat([]byte{byte(lba + 1)}, 64*1024))
		zw.Close()
		g := make([]byte, sectorsFor(12+int64(z.Len()))*sectorSize)
		binary.LittleEndian.PutUint64(g, lba)
		binary.LittleEndian.PutUint32(g[8:], uint32(z.Len()))
		copy(g[12:], z.Bytes())
		b = append(b, g...)
	}
	return b
}
