package xva

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

const (
	// chunkSize is the size of the chunks xapi cuts a VDI into.
	chunkSize = 1 << 20
	// maxChunkLen bounds a chunk member ferry accepts. xapi writes 1 MiB
	// chunks; anything much bigger is refused before allocating for it.
	maxChunkLen = 16 << 20
	// maxChunks is how many chunk names fit in the 8 digits xapi prints
	// (and compares lexicographically).
	maxChunks = 100_000_000
	// maxVirtualSize bounds a VDI's claimed size (1 PiB).
	maxVirtualSize = 1 << 50
	// maxOVAXML bounds the descriptor read into memory.
	maxOVAXML = 32 << 20
	// maxSumLen bounds the checksum member text read; real ones are 16
	// (xxhash) or 40 (SHA-1) bytes.
	maxSumLen = 128

	ovaXMLName = "ova.xml"
	extXXHash  = ".xxhash"
	extSHA1    = ".checksum"
)

// Format returns the XVA archive format: XenServer / XCP-ng whole-VM export.
func Format() *archive.Format {
	return &archive.Format{
		Name:       "xva",
		Probe:      probe,
		Open:       open,
		OpenStream: openStream,
		Create:     create,
		Options:    options(),
	}
}

// options lists the keys Create accepts in CreateOptions.Options.
func options() []disk.Option {
	return []disk.Option{
		{Key: "checksum", Default: "xxhash", Help: "checksum member written after each chunk: xxhash (.xxhash, XXH64, current hosts) or sha1 (.checksum, SHA-1, old hosts)"},
	}
}

// checkOptions refuses unknown keys and bad values.
func checkOptions(o *archive.CreateOptions) (sumKind, error) {
	kind := sumXXH
	if o == nil {
		return kind, nil
	}
	keys := make([]string, 0, len(o.Options))
	for k := range o.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := o.Options[k]
		switch k {
		case "checksum":
			switch strings.ToLower(v) {
			case "xxhash", "xxh64":
				kind = sumXXH
			case "sha1", "sha-1":
				kind = sumSHA1
			default:
				return 0, fmt.Errorf("xva: option checksum=%q: want xxhash or sha1: %w", v, errs.ErrInvalidArgument)
			}
		default:
			var known []string
			for _, op := range options() {
				known = append(known, op.Key)
			}
			return 0, fmt.Errorf("xva: unknown option %q (known: %s): %w", k, strings.Join(known, ", "), errs.ErrInvalidArgument)
		}
	}
	return kind, nil
}

// compression is how an archive's bytes are wrapped.
type compression int

const (
	plain compression = iota
	gzipped
	zstded
)

func (c compression) String() string {
	switch c {
	case gzipped:
		return "gzip"
	case zstded:
		return "zstd"
	}
	return "none"
}

// sniff tells gzip and zstd streams from a plain tar by their magic.
func sniff(b []byte) compression {
	switch {
	case len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b:
		return gzipped
	case len(b) >= 4 && bytes.Equal(b[:4], []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return zstded
	}
	return plain
}

// decompressor wraps r for compression c. The returned closer releases the
// decoder.
func decompressor(r io.Reader, c compression) (io.Reader, func(), error) {
	switch c {
	case gzipped:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case zstded:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(128<<20), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return r, func() {}, nil
}

// probe claims a tar whose first member is ova.xml, plain or compressed
// with gzip or zstd (Open refuses the compressed ones with a hint to
// stream them).
func probe(f disk.File) bool {
	var magic [4]byte
	n, _ := f.ReadAt(magic[:], 0)
	c := sniff(magic[:n])
	sr := io.NewSectionReader(f, 0, f.Size())
	r, done, err := decompressor(sr, c)
	if err != nil {
		return false
	}
	defer done()
	// Read through a bounded window so that a huge PAX header cannot make
	// probing expensive.
	hdr, err := tar.NewReader(io.LimitReader(r, 1<<20)).Next()
	return err == nil && hdr.Name == ovaXMLName && isRegular(hdr)
}

// isRegular reports whether hdr is a plain file whose data lies as is in
// the archive (not a link, directory or sparse file).
func isRegular(hdr *tar.Header) bool {
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != '\x00' {
		return false
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return false
		}
	}
	return true
}
