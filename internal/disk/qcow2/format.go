package qcow2

import (
	"context"
	"fmt"
	"math/bits"
	"strconv"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// Format returns the qcow2 format descriptor.
func Format() *disk.Format {
	return &disk.Format{
		Name:   "qcow2",
		Probe:  probe,
		Open:   open,
		Create: create,
		Options: []disk.Option{
			{Key: "cluster_size", Default: "65536", Help: "cluster size in bytes, a power of two from 512 to 2097152"},
			{Key: "compat", Default: "1.1", Help: "1.1 (or v3) writes version 3; 0.10 (or v2) writes version 2 for old consumers (no zero clusters, zlib only)"},
			{Key: "compression_type", Default: "zlib", Help: "codec of compressed clusters: zlib (raw deflate, 4 KiB window) or zstd (version 3 only)"},
			{Key: "compress", Default: "off", Help: "on compresses every cluster (the CLI's -c); the writer then accepts ascending writes only"},
			{Key: "preallocation", Default: "off", Help: "only off is supported"},
			{Key: "lazy_refcounts", Default: "off", Help: "only off is supported"},
		},
	}
}

// params are the parsed create options.
type params struct {
	clusterBits uint
	v3          bool
	zstd        bool
	compress    bool
}

func parseOptions(o *disk.CreateOptions) (params, error) {
	p := params{clusterBits: 16, v3: true}
	bad := func(key, val, want string) error {
		return fmt.Errorf("qcow2: option %s=%q: %s: %w", key, val, want, errs.ErrInvalidArgument)
	}
	if v := o.Opt("cluster_size", "65536"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 512 || n > 2<<20 || n&(n-1) != 0 {
			return p, bad("cluster_size", v, "want a power of two from 512 to 2097152")
		}
		p.clusterBits = uint(bits.TrailingZeros64(uint64(n)))
	}
	switch v := o.Opt("compat", "1.1"); v {
	case "1.1", "v3":
	case "0.10", "v2":
		p.v3 = false
	default:
		return p, bad("compat", v, "want 1.1 or 0.10")
	}
	switch v := o.Opt("compression_type", "zlib"); v {
	case "zlib":
	case "zstd":
		if !p.v3 {
			return p, bad("compression_type", v, "zstd needs compat=1.1")
		}
		p.zstd = true
	default:
		return p, bad("compression_type", v, "want zlib or zstd")
	}
	switch v := o.Opt("compress", "off"); v {
	case "on":
		p.compress = true
	case "off":
	default:
		return p, bad("compress", v, "want on or off")
	}
	if v := o.Opt("preallocation", "off"); v != "off" {
		return p, fmt.Errorf("qcow2: preallocation=%s is not supported (only off): %w", v, errs.ErrUnimplemented)
	}
	if v := o.Opt("lazy_refcounts", "off"); v != "off" {
		return p, fmt.Errorf("qcow2: lazy_refcounts=%s is not supported (only off): %w", v, errs.ErrUnimplemented)
	}
	return p, nil
}

func create(ctx context.Context, t disk.Target, size int64, o *disk.CreateOptions) (disk.Writer, error) {
	ft, ok := t.(disk.FileTarget)
	if !ok {
		return nil, fmt.Errorf("qcow2: output must be a seekable file, not a stream: %w", errs.ErrInvalidArgument)
	}
	if o == nil {
		o = &disk.CreateOptions{}
	}
	p, err := parseOptions(o)
	if err != nil {
		return nil, err
	}
	name := ft.Name()
	if size < 0 || size > maxVirtualSize {
		return nil, fmt.Errorf("qcow2 %s: virtual size %d out of range (0 to %d): %w", name, size, maxVirtualSize, errs.ErrInvalidArgument)
	}
	size = (size + 511) &^ 511
	cs := int64(1) << p.clusterBits
	l2Cover := cs * (cs / 8)
	l1Size := (size + l2Cover - 1) / l2Cover
	if l1Size*8 > maxL1Bytes {
		return nil, fmt.Errorf("qcow2 %s: a %d-byte disk needs an L1 table over %d bytes with %d-byte clusters; use a larger cluster_size: %w", name, size, maxL1Bytes, cs, errs.ErrInvalidArgument)
	}
	if o.BackingFormat != "" && o.BackingFile == "" {
		return nil, fmt.Errorf("qcow2 %s: backing format %q without a backing file: %w", name, o.BackingFormat, errs.ErrInvalidArgument)
	}
	if len(o.BackingFile) > maxBackingName {
		return nil, fmt.Errorf("qcow2 %s: backing file name of %d bytes is longer than %d: %w", name, len(o.BackingFile), maxBackingName, errs.ErrInvalidArgument)
	}
	if len(o.BackingFormat) > 15 {
		return nil, fmt.Errorf("qcow2 %s: backing format name %q is too long: %w", name, o.BackingFormat, errs.ErrInvalidArgument)
	}
	b := &builder{
		t: ft, name: name, size: size, bits: p.clusterBits, cs: cs, l1Size: l1Size,
		v3: p.v3, zstd: p.zstd,
		backingFile: o.BackingFile, backingFormat: o.BackingFormat,
		tables: make(map[int64][]uint64),
		refs:   []uint16{1}, // the header cluster
		next:   cs,
	}
	if _, err := encodeHeader(b.headerParams(0, 0, 0)); err != nil {
		return nil, fmt.Errorf("qcow2 %s: %w", name, err)
	}
	back := &cow{file: o.BackingFile, img: o.Backing, name: name}
	if p.compress {
		return newSeqWriter(ctx, b, back, p, o.Workers)
	}
	return &writer{b: b, back: back}, nil
}
