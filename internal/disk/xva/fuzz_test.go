package xva

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/errs"
)

// fuzzSeeds are small archives: the writer's ova.xml with hand-cut 4 KiB
// chunks (a keep-alive and an omitted chunk included), hand-written
// minimal ones in every compression, and damaged copies.
func fuzzSeeds(t testing.TB) [][]byte {
	a := &disktest.Pattern{Name: "a", Size: 16 << 10, Seed: 3, Data: []disk.Extent{{Off: 0, Len: 4096}, {Off: 8192, Len: 8192}}}
	b := &disktest.Pattern{Name: "b", Size: 8 << 10, Seed: 4, Data: []disk.Extent{{Off: 0, Len: 8192}}}
	vm := vmFor("fuzz", a, b)
	vm.NICs = []core.NICSpec{{MAC: "02:00:00:00:00:01", Network: "n"}}
	ms := members(t, writeXVA(t, vm, []*disktest.Pattern{a, b}, nil))
	refOf := func(m member) string { return m.name[:strings.IndexByte(m.name, '/')] }
	ra, rb := refOf(ms[1]), refOf(ms[len(ms)-1])
	piece := func(pt *disktest.Pattern, off int64) []byte {
		p := make([]byte, 4096)
		pt.Fill(off, p)
		return p
	}
	build := func(kind sumKind) []byte {
		out := []member{ms[0]}
		out = append(out, chunkPair(ra, 0, piece(a, 0), kind)...)
		out = append(out, chunkPair(ra, 1, nil, kind)...)
		out = append(out, chunkPair(ra, 3, piece(a, 8192), kind)...)
		out = append(out, chunkPair(ra, 4, piece(a, 12288), kind)...)
		out = append(out, chunkPair(rb, 0, piece(b, 0), kind)...)
		out = append(out, chunkPair(rb, 1, piece(b, 4096), kind)...)
		return tarOf(t, out)
	}
	x := build(sumXXH)
	seeds := [][]byte{x, x[:len(x)/2]}
	for _, m := range miniSeeds(t) {
		seeds = append(seeds, m)
		for _, cut := range []int{100, 700, len(m) / 2} {
			if cut < len(m) {
				seeds = append(seeds, m[:cut])
			}
		}
	}
	flip := bytes.Clone(seeds[2])
	flip[len(flip)-1200] ^= 0xff
	return append(seeds, flip)
}

// miniOVA is a hand-written descriptor with only the fields ferry reads:
// a VM with one disk of 2 KiB (Ref:3) and a CD.
const miniOVA = `<?xml version="1.0"?><value><struct>` +
	`<member><name>version</name><value><struct><member><name>export_vsn</name><value>2</value></member></struct></value></member>` +
	`<member><name>objects</name><value><array><data>` +
	`<value><struct><member><name>class</name><value>VM</value></member><member><name>id</name><value>Ref:0</value></member><member><name>snapshot</name><value><struct>` +
	`<member><name>name_label</name><value>mini</value></member><member><name>VCPUs_max</name><value>1</value></member>` +
	`<member><name>memory_static_max</name><value>268435456</value></member><member><name>HVM_boot_params</name><value><struct><member><name>firmware</name><value>uefi</value></member></struct></value></member>` +
	`</struct></value></member></struct></value>` +
	`<value><struct><member><name>class</name><value>VBD</value></member><member><name>id</name><value>Ref:1</value></member><member><name>snapshot</name><value><struct>` +
	`<member><name>VM</name><value>Ref:0</value></member><member><name>VDI</name><value>Ref:3</value></member><member><name>type</name><value>Disk</value></member>` +
	`<member><name>userdevice</name><value>0</value></member><member><name>bootable</name><value><boolean>1</boolean></value></member></struct></value></member></struct></value>` +
	`<value><struct><member><name>class</name><value>VBD</value></member><member><name>id</name><value>Ref:2</value></member><member><name>snapshot</name><value><struct>` +
	`<member><name>VM</name><value>Ref:0</value></member><member><name>VDI</name><value>OpaqueRef:NULL</value></member><member><name>type</name><value>CD</value></member></struct></value></member></struct></value>` +
	`<value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:3</value></member><member><name>snapshot</name><value><struct>` +
	`<member><name>name_label</name><value>d</value></member><member><name>virtual_size</name><value>2048</value></member></struct></value></member></struct></value>` +
	`</data></array></value></member></struct></value>`

// miniSeeds are archives around miniOVA with 512-byte chunks.
func miniSeeds(t testing.TB) [][]byte {
	blk := func(c byte) []byte { return bytes.Repeat([]byte{c}, 512) }
	out := []member{{"ova.xml", []byte(miniOVA)}}
	out = append(out, chunkPair("Ref:3", 0, blk(1), sumXXH)...)
	out = append(out, chunkPair("Ref:3", 1, nil, sumXXH)...)
	out = append(out, chunkPair("Ref:3", 3, blk(3), sumSHA1)...)
	out = append(out, chunkPair("Ref:3", 4, blk(0), sumXXH)...)
	a := tarOf(t, out)
	return [][]byte{a, a[:len(a)-1700], compressed(t, a, gzipped), compressed(t, a, zstded)}
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		r, err := Format().Open(ctx, disk.BytesFile("fuzz.xva", b), nil)
		if err != nil {
			fuzzCode(t, err)
		} else {
			vm := r.VM()
			_ = r.Info()
			if len(vm.Disks) != len(r.Info().Disks) {
				t.Fatalf("VM has %d disks, info %d", len(vm.Disks), len(r.Info().Disks))
			}
			if err := readAll(ctx, r); err != nil {
				fuzzCode(t, err)
			}
			if err := r.Verify(ctx); err != nil {
				fuzzCode(t, err)
			}
			r.Close()
		}
		Format().Probe(disk.BytesFile("fuzz.xva", b))
		if err := streamAll(ctx, bytes.NewReader(b), 64<<20); err != nil {
			fuzzCode(t, err)
		}
	})
}

// fuzzCode fails unless err carries one of the codes damaged input may
// produce.
func fuzzCode(t *testing.T, err error) {
	switch errs.CodeOf(err) {
	case errs.Corrupt, errs.Unimplemented:
	default:
		t.Fatalf("error without the right code: %v", err)
	}
}
