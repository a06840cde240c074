package vhdx

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// TestBadInput damages a small valid image in many ways: Open (or a read)
// must fail with the right code and a message naming the file, and never
// panic.
func TestBadInput(t *testing.T) {
	good := ferryBytes(t, smallPattern(), nil) // blocks 0, 2, 5 allocated
	le := binary.LittleEndian
	unknown := mustGUID("01234567-89ab-cdef-0123-456789abcdef")
	setMeta := func(id guid, v []byte) func(t *testing.T, b []byte) []byte {
		return func(t *testing.T, b []byte) []byte {
			copy(b[metaItemOffset(t, b, id):], v)
			return b
		}
	}
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	metaEntry := func(t *testing.T, b []byte, id guid) []byte {
		ents, _ := parseMetaTable(b[tMetaOff:])
		for i, e := range ents {
			if e.id == id {
				return b[tMetaOff+32+32*int64(i):][:32]
			}
		}
		t.Fatalf("no metadata entry %s", id)
		return nil
	}
	firstBlock := func(b []byte) uint64 { return getBAT(b, 0) }

	tests := []struct {
		name string
		fn   func(t *testing.T, b []byte) []byte
		code errs.Code
		want string
	}{
		{"empty-file", func(t *testing.T, b []byte) []byte { return nil }, errs.Corrupt, "shorter"},
		{"truncated-100", func(t *testing.T, b []byte) []byte { return b[:100] }, errs.Corrupt, "shorter"},
		{"truncated-header-section", func(t *testing.T, b []byte) []byte { return b[:mib-1] }, errs.Corrupt, "shorter"},
		{"truncated-before-metadata", func(t *testing.T, b []byte) []byte { return b[:tMetaOff+4096] }, errs.Corrupt, "beyond end of file"},
		{"truncated-in-data", func(t *testing.T, b []byte) []byte { return b[:int64(len(b))-mib/2] }, errs.Corrupt, "beyond end of file"},
		{"bad-identifier", func(t *testing.T, b []byte) []byte { copy(b, "vhdxfilX"); return b }, errs.Corrupt, "identifier"},
		{"both-headers-bad", func(t *testing.T, b []byte) []byte {
			b[header1Offset+100]++
			b[header2Offset+100]++
			return b
		}, errs.Corrupt, "no valid header"},
		{"headers-same-seq-differ", func(t *testing.T, b []byte) []byte {
			h, _ := parseHeader(b[header1Offset:])
			h.encode(b[header2Offset:])
			h.fileWrite[0]++
			h.encode(b[header1Offset:])
			return b
		}, errs.Corrupt, "sequence number"},
		{"version-2", func(t *testing.T, b []byte) []byte {
			rewriteHeaders(b, func(h *header) { h.version = 2 })
			return b
		}, errs.Unimplemented, "version 2"},
		{"region-tables-bad", func(t *testing.T, b []byte) []byte {
			b[region1Offset+40]++
			b[region2Offset+40]++
			return b
		}, errs.Corrupt, "no valid region table"},
		{"region-count", func(t *testing.T, b []byte) []byte {
			for _, off := range []int64{region1Offset, region2Offset} {
				le.PutUint32(b[off+8:], 3000)
				le.PutUint32(b[off+4:], checksum(b[off:off+regionTableSize], 4))
			}
			return b
		}, errs.Corrupt, "3000 entries"},
		{"region-unknown-required", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				return append(r, regionEntry{id: unknown, off: uint64(10 * mib), length: uint32(mib), required: true})
			})
			return b
		}, errs.Unimplemented, unknown.String()},
		{"region-duplicate", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry { return append(r, r[0]) })
			return b
		}, errs.Corrupt, "twice"},
		{"region-missing-bat", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				return []regionEntry{r[1]}
			})
			return b
		}, errs.Corrupt, "lacks"},
		{"region-overlaps-log", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				r[0].off = uint64(tLogOff)
				return r
			})
			return b
		}, errs.Corrupt, "overlaps"},
		{"region-in-header", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				r[0].off = 0
				return r
			})
			return b
		}, errs.Corrupt, "header section"},
		{"region-misaligned", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				r[1].off += 4096
				return r
			})
			return b
		}, errs.Corrupt, "aligned"},
		{"region-beyond-eof", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				r[0].length = uint32(1 << 31)
				return r
			})
			return b
		}, errs.Corrupt, "beyond end of file"},
		{"region-huge-offset", func(t *testing.T, b []byte) []byte {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				r[0].off = 1 << 62
				return r
			})
			return b
		}, errs.Corrupt, "BAT region"},
		{"metadata-signature", func(t *testing.T, b []byte) []byte { b[tMetaOff]++; return b }, errs.Corrupt, "signature"},
		{"metadata-count", func(t *testing.T, b []byte) []byte { le.PutUint16(b[tMetaOff+10:], 2048); return b }, errs.Corrupt, "2048 entries"},
		{"metadata-unknown-required", func(t *testing.T, b []byte) []byte {
			copy(metaEntry(t, b, guidPage83), unknown[:])
			return b
		}, errs.Unimplemented, unknown.String()},
		{"metadata-missing-size", func(t *testing.T, b []byte) []byte {
			e := metaEntry(t, b, guidVirtualSize)
			copy(e, unknown[:])
			le.PutUint32(e[24:], 0) // not required
			return b
		}, errs.Corrupt, "virtual disk size"},
		{"metadata-item-outside", func(t *testing.T, b []byte) []byte {
			le.PutUint32(metaEntry(t, b, guidVirtualSize)[16:], uint32(mib-4))
			return b
		}, errs.Corrupt, "outside"},
		{"metadata-item-in-table", func(t *testing.T, b []byte) []byte {
			le.PutUint32(metaEntry(t, b, guidVirtualSize)[16:], 64)
			return b
		}, errs.Corrupt, "outside"},
		{"metadata-items-overlap", func(t *testing.T, b []byte) []byte {
			e := metaEntry(t, b, guidVirtualSize)
			le.PutUint32(e[16:], le.Uint32(metaEntry(t, b, guidFileParameters)[16:])+4)
			return b
		}, errs.Corrupt, "overlap"},
		{"metadata-item-length", func(t *testing.T, b []byte) []byte {
			le.PutUint32(metaEntry(t, b, guidLogicalSector)[20:], 2)
			return b
		}, errs.Corrupt, "bytes, want 4"},
		{"metadata-item-too-long", func(t *testing.T, b []byte) []byte {
			le.PutUint32(metaEntry(t, b, guidLogicalSector)[20:], uint32(2*mib))
			return b
		}, errs.Corrupt, "larger than 1 MiB"},
		{"metadata-duplicate", func(t *testing.T, b []byte) []byte {
			copy(metaEntry(t, b, guidPage83), guidVirtualSize[:])
			return b
		}, errs.Corrupt, "twice"},
		{"block-size-3m", setMeta(guidFileParameters, u32(3*uint32(mib))), errs.Corrupt, "block size"},
		{"block-size-512m", setMeta(guidFileParameters, u32(512*uint32(mib))), errs.Corrupt, "block size"},
		{"logical-sector-1024", setMeta(guidLogicalSector, u32(1024)), errs.Corrupt, "logical sector size"},
		{"physical-sector-0", setMeta(guidPhysicalSector, u32(0)), errs.Corrupt, "physical sector size"},
		{"size-2^62", setMeta(guidVirtualSize, u64(1<<62)), errs.Corrupt, "64 TiB"},
		{"size-unaligned", setMeta(guidVirtualSize, u64(8*uint64(mib)+100)), errs.Corrupt, "multiple"},
		{"size-64t-bat-too-big", setMeta(guidVirtualSize, u64(64<<40)), errs.Unimplemented, "BAT of 512 MiB"},
		{"size-bat-region-too-small", setMeta(guidVirtualSize, u64(1<<40)), errs.Corrupt, "too small"},
		{"bat-state-4", func(t *testing.T, b []byte) []byte { setBAT(b, 1, 4); return b }, errs.Corrupt, "invalid state 4"},
		{"bat-partial-without-parent", func(t *testing.T, b []byte) []byte {
			setBAT(b, 0, firstBlock(b)&^batStateMask|statePartial)
			return b
		}, errs.Corrupt, "partially present"},
		{"bat-beyond-eof", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, uint64(100*mib)|stateFull)
			return b
		}, errs.Corrupt, "beyond end of file"},
		{"bat-huge-offset", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, ^uint64(0)&^batReservedMask&^batStateMask|stateFull)
			return b
		}, errs.Corrupt, "block 1"},
		{"bat-overlapping-blocks", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, firstBlock(b))
			return b
		}, errs.Corrupt, "overlaps"},
		{"bat-overlaps-metadata", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, uint64(tMetaOff)|stateFull)
			return b
		}, errs.Corrupt, "overlaps"},
		{"bat-overlaps-bat", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, uint64(tBATOff)|stateFull)
			return b
		}, errs.Corrupt, "overlaps"},
		{"bat-overlaps-log", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, uint64(tLogOff)|stateFull)
			return b
		}, errs.Corrupt, "overlaps"},
		{"bat-in-header", func(t *testing.T, b []byte) []byte {
			setBAT(b, 1, stateFull)
			return b
		}, errs.Corrupt, "header section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.fn(t, bytes.Clone(good))
			name := "bad-" + tt.name + ".vhdx"
			img, err := Format().Open(t.Context(), fileOf(name, b), &disk.OpenOptions{})
			if err == nil {
				// Some faults only show when read.
				_, err = img.ReadAt(make([]byte, img.Size()), 0)
				img.Close()
			}
			if err == nil || !errs.Is(err, tt.code) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), name) {
				t.Fatalf("got %v; want %v naming %s and %q", err, tt.code, name, tt.want)
			}
		})
	}
}

// TestTolerated covers damage the reader works around, and that Check
// reports.
func TestTolerated(t *testing.T) {
	good := ferryBytes(t, smallPattern(), nil)
	want := smallPattern().Bytes()
	tests := []struct {
		name    string
		fn      func(b []byte)
		problem string // "" when Check stays clean
	}{
		{"header1-bad", func(b []byte) { b[header1Offset+200]++ }, "header 1"},
		{"header2-bad", func(b []byte) { b[header2Offset+200]++ }, "header 1"}, // header 1 becomes current; header 2 is reported... see below
		{"region1-bad", func(b []byte) { b[region1Offset+200]++ }, "region table 1"},
		{"region2-bad", func(b []byte) { b[region2Offset+200]++ }, "region table 2"},
		{"region1-count", func(b []byte) {
			binary.LittleEndian.PutUint32(b[region1Offset+8:], 3000)
			binary.LittleEndian.PutUint32(b[region1Offset+4:], checksum(b[region1Offset:region1Offset+regionTableSize], 4))
		}, "region table 1"},
		{"unknown-optional-region", func(b []byte) {
			rewriteRegions(b, func(r []regionEntry) []regionEntry {
				return append(r, regionEntry{id: mustGUID("01234567-89ab-cdef-0123-456789abcdef"), off: uint64(20 * mib), length: uint32(mib)})
			})
		}, "beyond end of file"},
		{"reserved-bits", func(b []byte) { setBAT(b, 1, 1<<10) }, "reserved bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(good)
			tt.fn(b)
			img, err := Format().Open(t.Context(), fileOf("tolerated.vhdx", b), &disk.OpenOptions{})
			if tt.name == "unknown-optional-region" {
				// An optional region beyond the end of the file is still
				// a damaged file.
				if !errs.Is(err, errs.Corrupt) {
					t.Fatalf("open: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			if got := readAll(t, img); !bytes.Equal(got, want) {
				t.Fatalf("content differs at %d", firstDiff(got, want))
			}
			res, err := img.(disk.Checker).Check(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if tt.problem == "" {
				if !res.Clean() {
					t.Fatalf("check: %+v", res)
				}
				return
			}
			if tt.name == "header2-bad" {
				tt.problem = "header 2"
			}
			if res.Clean() || !strings.Contains(strings.Join(res.Problems, "\n"), tt.problem) {
				t.Fatalf("check: %+v; want a problem about %q", res, tt.problem)
			}
		})
	}
}

// TestBitmapEntryInDynamic: a sector bitmap entry marked present in a disk
// without a parent is ignored when reading and reported by Check.
func TestBitmapEntryInDynamic(t *testing.T) {
	pt := &disktest.Pattern{Name: "4g", Size: 4*gib + 2*mib, Seed: 3, Data: []disk.Extent{{Off: 4 * gib, Len: 4096}}}
	b := ferryBytes(t, pt, nil)
	ratio := chunkRatio(512, mib)
	setBAT(b, bitmapIndex(0, ratio), uint64(tDataOff)|stateFull) // overlaps block 4096's data, too
	img, err := Format().Open(t.Context(), fileOf("bitmap.vhdx", b), &disk.OpenOptions{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer img.Close()
	disktest.VerifyImage(t, img, pt)
	res, err := img.(disk.Checker).Check(t.Context())
	if err != nil || res.Clean() || !strings.Contains(strings.Join(res.Problems, "\n"), "without a parent") {
		t.Fatalf("check: %+v, %v", res, err)
	}
}
