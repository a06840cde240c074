package xva

import (
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/ferry-project/ferry/internal/errs"
)

// sumKind is the checksum a chunk's member carries.
type sumKind uint8

const (
	sumBad  sumKind = iota // unreadable text: can never match
	sumXXH                 // .xxhash: XXH64 printed %016X
	sumSHA1                // .checksum: SHA-1, lowercase hex
)

func (k sumKind) String() string {
	switch k {
	case sumXXH:
		return "xxhash"
	case sumSHA1:
		return "sha1"
	}
	return "invalid"
}

func (k sumKind) ext() string {
	if k == sumSHA1 {
		return extSHA1
	}
	return extXXHash
}

// chunkSum is a parsed checksum member. xapi compares the member's text
// with the checksum it prints, byte for byte; text that is not exactly what
// xapi prints (16 upper-case hex digits, 40 lower-case) can never match and
// is kept as sumBad with the text for the message.
type chunkSum struct {
	kind sumKind
	want sumKind // the algorithm named by the member's extension
	n    uint8   // sumBad: length of the text kept in sum
	sum  [20]byte
}

// badSum keeps the start of an unusable checksum text for messages.
func badSum(want sumKind, text []byte) chunkSum {
	s := chunkSum{kind: sumBad, want: want}
	s.n = uint8(copy(s.sum[:], text))
	if len(text) > len(s.sum) {
		s.n = 255
	}
	return s
}

// parseSum reads a checksum member's text; ext is its extension.
func parseSum(ext string, text []byte) chunkSum {
	switch ext {
	case extXXHash:
		if len(text) == 16 && isHex(text, true) {
			var s chunkSum
			s.kind, s.want = sumXXH, sumXXH
			v, _ := strconv.ParseUint(string(text), 16, 64)
			binary.BigEndian.PutUint64(s.sum[:], v)
			return s
		}
		return badSum(sumXXH, text)
	default:
		if len(text) == 40 && isHex(text, false) {
			var s chunkSum
			s.kind, s.want = sumSHA1, sumSHA1
			hex.Decode(s.sum[:], text)
			return s
		}
		return badSum(sumSHA1, text)
	}
}

func isHex(b []byte, upper bool) bool {
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
		case upper && c >= 'A' && c <= 'F':
		case !upper && c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// sumText prints the checksum of data as xapi does for kind.
func sumText(kind sumKind, data []byte) string {
	if kind == sumSHA1 {
		s := sha1.Sum(data)
		return hex.EncodeToString(s[:])
	}
	return fmt.Sprintf("%016X", xxhash.Sum64(data))
}

// check reports whether data matches the member, and the text it should
// have held otherwise.
func (s *chunkSum) check(data []byte) (bool, string) {
	switch s.kind {
	case sumXXH:
		if binary.BigEndian.Uint64(s.sum[:]) == xxhash.Sum64(data) {
			return true, ""
		}
	case sumSHA1:
		if sha1.Sum(data) == s.sum {
			return true, ""
		}
	}
	return false, sumText(s.want, data)
}

// stored is the member's text as it was read.
func (s *chunkSum) stored() string {
	switch s.kind {
	case sumXXH:
		return fmt.Sprintf("%016X", binary.BigEndian.Uint64(s.sum[:]))
	case sumSHA1:
		return hex.EncodeToString(s.sum[:])
	}
	if s.n == 255 {
		return string(s.sum[:]) + "..."
	}
	return string(s.sum[:s.n])
}

// chunkRules is the archive-wide state of xapi's importer
// (stream_vdi.ml, recv_all_vdi): the length of the first chunk member of the
// whole archive is what an omitted chunk is worth, for every VDI.
type chunkRules struct {
	firstLen int64 // -1 until the first chunk member
}

// cursor walks one VDI's chunk members as xapi's importer does.
type cursor struct {
	v      *vdi
	offset int64  // where the next chunk's data goes
	last   int64  // number of the previous chunk, -1 before the first
	lastNm string // name of the previous chunk member, for messages
}

func newCursor(v *vdi) *cursor { return &cursor{v: v, last: -1} }

// done reports whether the VDI is complete: xapi stops reading its chunks
// once the offset reaches the VDI's virtual size.
func (c *cursor) done() bool { return c.offset >= c.v.size }

// place checks a chunk member's name and length and returns its number and
// the offset of its data in the disk, advancing the cursor. Errors lack
// the file name; the caller adds it.
//
// The rules are xapi's: the name is the VDI's ref, a slash, and a number
// printed %08d that must be greater than the previous one; each missing
// number stands for one omitted chunk of the archive's first chunk length
// (zero-length keep-alive chunks take a number but no room, which this rule
// undoes); data may not run past the VDI's size.
func (r *chunkRules) place(c *cursor, name string, size int64) (num, off int64, err error) {
	v := c.v
	rest, ok := strings.CutPrefix(name, v.ref+"/")
	if !ok {
		if c.lastNm == "" {
			return 0, 0, fmt.Errorf("%s: expected the disk's first chunk (%s/00000000), found member %q: %w", v.label(), v.ref, name, errs.ErrCorrupt)
		}
		return 0, 0, fmt.Errorf("%s: expected a chunk after %s (offset %d of %d), found member %q: %w", v.label(), c.lastNm, c.offset, v.size, name, errs.ErrCorrupt)
	}
	if len(rest) != 8 || !isDigits(rest) {
		return 0, 0, fmt.Errorf("%s: member %q: chunk number is not 8 decimal digits: %w", v.label(), name, errs.ErrCorrupt)
	}
	num, _ = strconv.ParseInt(rest, 10, 64)
	if num <= c.last {
		return 0, 0, fmt.Errorf("%s: member %q follows %s: chunk numbers must increase: %w", v.label(), name, c.lastNm, errs.ErrCorrupt)
	}
	if size < 0 || size > maxChunkLen {
		return 0, 0, fmt.Errorf("%s: member %q: chunk of %d bytes (ferry reads chunks up to %d bytes): %w", v.label(), name, size, maxChunkLen, errs.ErrUnimplemented)
	}
	if r.firstLen < 0 {
		r.firstLen = size
	}
	off = c.offset + (num-c.last-1)*r.firstLen
	if off+size > v.size {
		return 0, 0, fmt.Errorf("%s: member %q: chunk of %d bytes at offset %d runs past the disk's size %d: %w", v.label(), name, size, off, v.size, errs.ErrCorrupt)
	}
	c.offset = off + size
	c.last = num
	c.lastNm = name
	return num, off, nil
}

// sumMember checks that the member after chunk `chunk` is its checksum and
// returns the checksum's extension.
func sumMember(v *vdi, chunk, name string) (string, error) {
	for _, ext := range []string{extXXHash, extSHA1} {
		if name == chunk+ext {
			return ext, nil
		}
	}
	return "", fmt.Errorf("%s: chunk %s is not followed by its checksum member %s.xxhash or %s.checksum (found %q): %w", v.label(), chunk, chunk, chunk, name, errs.ErrCorrupt)
}

// sumError describes a checksum mismatch.
func sumError(v *vdi, num int64, s *chunkSum, got string) error {
	return fmt.Errorf("%s: chunk %d (member %s/%08d): %s checksum mismatch: data sums to %s, member holds %q: %w", v.label(), num, v.ref, num, s.want, got, s.stored(), errs.ErrCorrupt)
}
