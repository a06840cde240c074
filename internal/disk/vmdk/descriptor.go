package vmdk

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// noParent is the parentCID of a disk without a parent.
const noParent = 0xffffffff

// descriptor is a parsed "# Disk DescriptorFile": the text that is either a
// file of its own or embedded in a sparse extent.
type descriptor struct {
	cid        uint32
	parentCID  uint32
	createType string
	parentHint string // parentFileNameHint
	extents    []extentLine
	ddb        map[string]string
}

// extentLine is `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
type extentLine struct {
	access  string // RW, RDONLY, NOACCESS
	sectors int64
	typ     string // SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, SESPARSE, ...
	file    string
	offset  int64 // sectors, FLAT only
}

// descriptorHeads are the first lines that mark a descriptor: VMware
// writes the first, python3-vmdkstream the second.
var descriptorHeads = []string{"# Disk DescriptorFile", "# Disk Descriptor File"}

// looksLikeDescriptor reports whether b, the start of a file, is descriptor
// text.
func looksLikeDescriptor(b []byte) bool {
	// The text ends at the first zero byte, as for VMware and qemu:
	// qemu pads descriptors with zeros and, rewriting one shorter, leaves
	// the old tail behind the zero.
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	s := strings.TrimPrefix(string(b), "\ufeff")
	s = strings.TrimLeft(s, " \t\r\n")
	for _, h := range descriptorHeads {
		if len(s) >= len(h) && strings.EqualFold(s[:len(h)], h) {
			return true
		}
	}
	// Descriptors without the comment line: insist on both keys a
	// descriptor cannot do without.
	var version, createType bool
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		version = version || strings.HasPrefix(line, "version=")
		createType = createType || strings.HasPrefix(line, "createType=")
	}
	return version && createType
}

// parseDescriptor parses descriptor text. name is the file it came from,
// for messages. Unknown keys are kept in ddb or ignored; lines that are
// neither keys nor extents are ignored, as VMware and qemu do.
func parseDescriptor(name string, text []byte) (*descriptor, error) {
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i] // see looksLikeDescriptor
	}
	d := &descriptor{cid: 0, parentCID: noParent, ddb: map[string]string{}}
	for n, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		if access, rest, ok := cutAccess(line); ok {
			e, err := parseExtentLine(access, rest)
			if err != nil {
				return nil, fmt.Errorf("vmdk %s: descriptor line %d %q: %v: %w", name, n+1, line, err, errs.ErrCorrupt)
			}
			d.extents = append(d.extents, e)
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		val = unquote(strings.TrimSpace(val))
		switch {
		case key == "CID":
			v, err := strconv.ParseUint(val, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("vmdk %s: descriptor CID %q is not 8 hex digits: %w", name, val, errs.ErrCorrupt)
			}
			d.cid = uint32(v)
		case key == "parentCID":
			v, err := strconv.ParseUint(val, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("vmdk %s: descriptor parentCID %q is not 8 hex digits: %w", name, val, errs.ErrCorrupt)
			}
			d.parentCID = uint32(v)
		case key == "createType":
			d.createType = val
		case key == "parentFileNameHint":
			d.parentHint = val
		case strings.HasPrefix(strings.ToLower(key), "encryption"):
			return nil, fmt.Errorf("vmdk %s: encrypted disk (descriptor key %s): %w", name, key, errs.ErrUnimplemented)
		case strings.HasPrefix(key, "ddb."):
			d.ddb[key] = val
		}
	}
	return d, nil
}

// cutAccess splits an extent line after its access mode.
func cutAccess(line string) (access, rest string, ok bool) {
	for _, a := range []string{"RW", "RDONLY", "NOACCESS"} {
		if r, found := strings.CutPrefix(line, a); found && r != "" && (r[0] == ' ' || r[0] == '\t') {
			return a, strings.TrimSpace(r), true
		}
	}
	return "", "", false
}

func parseExtentLine(access, rest string) (extentLine, error) {
	e := extentLine{access: access}
	f := strings.Fields(rest)
	if len(f) < 2 {
		return e, fmt.Errorf("extent line needs a size and a type")
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || n < 0 || n > maxCapacity/sectorSize {
		return e, fmt.Errorf("extent size %q is not a sector count up to %d bytes", f[0], maxCapacity)
	}
	e.sectors = n
	e.typ = f[1]
	rest = strings.TrimSpace(strings.TrimPrefix(rest, f[0]))
	rest = strings.TrimSpace(strings.TrimPrefix(rest, f[1]))
	if rest == "" {
		if e.typ != "ZERO" {
			return e, fmt.Errorf("%s extent without a file name", e.typ)
		}
		return e, nil
	}
	if rest[0] != '"' {
		return e, fmt.Errorf("extent file name is not quoted")
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return e, fmt.Errorf("extent file name has no closing quote")
	}
	e.file = rest[1 : 1+end]
	if e.file == "" {
		return e, fmt.Errorf("empty extent file name")
	}
	rest = strings.TrimSpace(rest[2+end:])
	if rest != "" {
		off, err := strconv.ParseInt(rest, 10, 64)
		if err != nil || off < 0 || off > maxCapacity/sectorSize {
			return e, fmt.Errorf("extent offset %q is not a sector count", rest)
		}
		e.offset = off
	}
	return e, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// descriptorText is what ferry writes.
type descriptorText struct {
	cid        uint32
	createType string
	extents    []extentLine
	adapter    string
	hwVersion  string
	tools      string // ddb.toolsVersion, "" to leave out
	sectors    int64  // virtual size, for the geometry
	longCID    string // ddb.longContentID, "" to leave out
}

func (d *descriptorText) String() string {
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\n")
	b.WriteString("version=1\n")
	b.WriteString("encoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%08x\n", d.cid)
	b.WriteString("parentCID=ffffffff\n")
	fmt.Fprintf(&b, "createType=%q\n", d.createType)
	b.WriteString("\n# Extent description\n")
	for _, e := range d.extents {
		fmt.Fprintf(&b, "%s %d %s %q", e.access, e.sectors, e.typ, e.file)
		if e.typ == "FLAT" {
			fmt.Fprintf(&b, " %d", e.offset)
		}
		b.WriteByte('\n')
	}
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	cyl, heads, secs := geometry(d.sectors, d.adapter)
	fmt.Fprintf(&b, "ddb.adapterType = %q\n", d.adapter)
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\n", cyl)
	fmt.Fprintf(&b, "ddb.geometry.heads = \"%d\"\n", heads)
	fmt.Fprintf(&b, "ddb.geometry.sectors = \"%d\"\n", secs)
	if d.longCID != "" {
		fmt.Fprintf(&b, "ddb.longContentID = %q\n", d.longCID)
	}
	if d.tools != "" {
		fmt.Fprintf(&b, "ddb.toolsVersion = %q\n", d.tools)
	}
	fmt.Fprintf(&b, "ddb.virtualHWVersion = %q\n", d.hwVersion)
	return b.String()
}

// geometry is the BIOS geometry VMware records: 16 heads for IDE, 255 for
// SCSI, 63 sectors a track, cylinders rounded up and capped. It only
// describes the disk; the capacity is never rounded to it.
func geometry(sectors int64, adapter string) (cyl, heads, secs int64) {
	heads, secs = 255, 63
	maxCyl := int64(65535)
	if adapter == "ide" {
		heads, maxCyl = 16, 16383
	}
	cyl = min((sectors+heads*secs-1)/(heads*secs), maxCyl)
	return cyl, heads, secs
}
