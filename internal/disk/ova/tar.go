package ova

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// blockSize is the tar block size: headers and data are padded to it.
const blockSize = 512

// maxUstarSize is the largest size a ustar header's 11 octal digits hold
// (8 GiB - 1); bigger members need a PAX size record.
const maxUstarSize = 1<<33 - 1

// maxMembers bounds how many members Open indexes: an OVA holds a handful.
const maxMembers = 10000

// roundBlock rounds n up to a whole number of tar blocks.
func roundBlock(n int64) int64 { return (n + blockSize - 1) &^ (blockSize - 1) }

// ustarBlock returns one ustar header block for a member of the given type.
// name must fit the 100-byte name field.
func ustarBlock(name string, size, mtime int64, typ byte) []byte {
	b := make([]byte, blockSize)
	copy(b[0:100], name)
	putOctal(b[100:108], 0o644)
	putOctal(b[108:116], 0)
	putOctal(b[116:124], 0)
	putOctal(b[124:136], size)
	putOctal(b[136:148], mtime)
	b[156] = typ
	copy(b[257:263], "ustar\x00")
	copy(b[263:265], "00")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	// six octal digits, NUL, space: what POSIX tar and GNU tar write
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// putOctal writes v as zero-padded octal digits followed by a NUL.
func putOctal(field []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	n := len(field) - 1
	if len(s) > n { // callers keep values in range; never write a wrong number
		s = strings.Repeat("0", n)
	}
	copy(field, strings.Repeat("0", n-len(s))+s)
	field[n] = 0
}

// paxRecord formats one PAX extended header record, "<len> key=value\n",
// whose length counts its own digits.
func paxRecord(key, value string) string {
	body := " " + key + "=" + value + "\n"
	n := len(body) + 1
	for len(strconv.Itoa(n))+len(body) != n {
		n = len(strconv.Itoa(n)) + len(body)
	}
	return strconv.Itoa(n) + body
}

// headerLen is how many bytes memberHeader writes: one ustar block, or
// three (PAX 'x' header, its one record block, ustar block).
func headerLen(pax bool) int64 {
	if pax {
		return 3 * blockSize
	}
	return blockSize
}

// memberHeader returns the header blocks of a regular file member. With
// pax it always writes a PAX extended header carrying the exact size, so
// that the header's length does not depend on the size; the ustar size
// field then holds the size when it fits and 0 otherwise, as Go's and GNU
// tar do.
func memberHeader(name string, size, mtime int64, pax bool) ([]byte, error) {
	if len(name) > 100 {
		return nil, fmt.Errorf("ova: member name %q is longer than 100 bytes: %w", name, errs.ErrInvalidArgument)
	}
	if size < 0 || (!pax && size > maxUstarSize) {
		return nil, fmt.Errorf("ova: member %s: size %d does not fit a ustar header: %w", name, size, errs.ErrInvalidArgument)
	}
	var out []byte
	if pax {
		rec := paxRecord("size", strconv.FormatInt(size, 10))
		xname := "PaxHeaders/" + name
		if len(xname) > 100 {
			xname = xname[:100]
		}
		out = append(out, ustarBlock(xname, int64(len(rec)), mtime, tar.TypeXHeader)...)
		data := make([]byte, blockSize)
		copy(data, rec)
		out = append(out, data...)
	}
	usize := size
	if usize > maxUstarSize {
		usize = 0
	}
	return append(out, ustarBlock(name, usize, mtime, tar.TypeReg)...), nil
}

// member is one entry of a tar archive.
type member struct {
	name string // as stored, without a leading "./"
	off  int64  // where its data starts
	size int64
	typ  byte
	// sparse: a GNU sparse member, whose stored bytes are not its content.
	sparse bool
}

// regular reports whether m is a plain file whose bytes are stored as is.
func (m member) regular() bool {
	return (m.typ == tar.TypeReg || m.typ == '\x00') && !m.sparse
}

// cleanName strips the "./" prefixes tar writers put before member names.
func cleanName(s string) string {
	for strings.HasPrefix(s, "./") {
		s = s[2:]
	}
	return s
}

// isSparse reports whether h describes a GNU sparse member (old GNU or
// PAX formats).
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// positionReader is a SectionReader whose position tells where the tar
// reader is: archive/tar reads headers block by block without buffering
// ahead and skips data with Seek, so after Next the position is the
// member's data offset.
type positionReader struct{ *io.SectionReader }

func (p positionReader) pos() int64 {
	n, _ := p.Seek(0, io.SeekCurrent)
	return n
}

// indexTar lists the members of the tar in f. Every member's data must lie
// inside the file.
func indexTar(f disk.File) ([]member, error) {
	sr := positionReader{io.NewSectionReader(f, 0, f.Size())}
	tr := tar.NewReader(sr)
	var ms []member
	for {
		at := sr.pos()
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if len(ms) == 0 && at == 0 {
				return nil, fmt.Errorf("ova %s: empty file or no tar header: %w", f.Name(), errs.ErrCorrupt)
			}
			return ms, nil
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("ova %s: tar header at %d is cut short (truncated file): %w", f.Name(), at, errs.ErrCorrupt)
			}
			return nil, fmt.Errorf("ova %s: tar header at %d: %v: %w", f.Name(), at, err, errs.ErrCorrupt)
		}
		if len(ms) >= maxMembers {
			return nil, fmt.Errorf("ova %s: more than %d tar members: %w", f.Name(), maxMembers, errs.ErrCorrupt)
		}
		m := member{name: cleanName(h.Name), off: sr.pos(), size: h.Size, typ: h.Typeflag, sparse: isSparse(h)}
		if !m.regular() {
			// links, directories and sparse members carry no usable data;
			// the tar reader checks their extent when it skips them
			m.size = 0
		} else if m.size < 0 || m.off > f.Size() || m.size > f.Size()-m.off {
			return nil, fmt.Errorf("ova %s: member %s needs %d bytes at %d but the file ends at %d (truncated file): %w",
				f.Name(), m.name, m.size, m.off, f.Size(), errs.ErrCorrupt)
		}
		ms = append(ms, m)
	}
}
