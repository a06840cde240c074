package vhdx

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// image is an opened VHDX file.
type image struct {
	f    disk.File
	name string
	v    *view

	hdr       header
	hdrIndex  int // 1 or 2: which header is current
	replayed  bool
	regions   []regionEntry
	batOff    int64
	batLen    int64
	metaOff   int64
	metaLen   int64
	size      int64 // virtual size
	bs        int64 // block size
	lss, pss  int64
	ratio     int64 // chunk ratio
	nBlocks   int64
	leave     bool // LeaveBlocksAllocated
	diff      bool // HasParent
	diskID    guid
	blocks    []uint64 // payload BAT entries, by block
	bitmaps   []uint64 // sector bitmap BAT entries, by chunk
	parent    disk.Image
	parentRef string // the locator path the parent was opened by
	// osf, when set, is the file to ask for holes inside present blocks
	// (none when the log patches the file in memory).
	osf     *os.File
	locator map[string]string

	closeOnce sync.Once
	closeErr  error
}

// Block kinds as the reader sees them.
const (
	kindNone    = iota // reads as zeros, or from the parent in a differencing disk
	kindZero           // reads as zeros and hides the parent
	kindData           // in the file
	kindPartial        // sector bitmap decides between the file and the parent
)

func open(ctx context.Context, f disk.File, opts *disk.OpenOptions) (disk.Image, error) {
	if opts == nil {
		opts = &disk.OpenOptions{}
	}
	im := &image{f: f, name: f.Name(), v: newView(f)}
	if err := im.load(); err != nil {
		return nil, err
	}
	if im.diff {
		if err := im.openParent(ctx, opts); err != nil {
			return nil, err
		}
	}
	if osf, ok := disk.OSFile(f); ok && haveFileRuns && len(im.v.patches) == 0 {
		im.osf = osf
	}
	if im.replayed && opts.Logger != nil {
		opts.Logger.LogAttrs(ctx, slog.LevelInfo, "replayed vhdx log in memory", slog.String("disk", im.name))
	}
	return im, nil
}

// load reads and checks every structure up to and including the BAT.
func (im *image) load() error {
	name := im.name
	fsize := im.f.Size()
	if fsize < headerSectionSize {
		return corrupt(name, "file of %d bytes is shorter than the 1 MiB header section", fsize)
	}
	if fsize > maxFileSize {
		return unimplemented(name, "file of %d bytes is larger than ferry reads (%d TiB)", fsize, maxFileSize/tib)
	}
	hs := make([]byte, region2Offset+regionTableSize)
	if err := im.v.readAt(hs, 0); err != nil {
		return fmt.Errorf("vhdx %s: read header section: %w", name, err)
	}
	if string(hs[:8]) != identSignature {
		return corrupt(name, "bad file type identifier %q", hs[:8])
	}
	h1, ok1 := parseHeader(hs[header1Offset:])
	h2, ok2 := parseHeader(hs[header2Offset:])
	switch {
	case ok1 && ok2 && h1.seq == h2.seq:
		if h1 != h2 {
			return corrupt(name, "both headers have sequence number %d but differ", h1.seq)
		}
		im.hdr, im.hdrIndex = h1, 1
	case ok1 && (!ok2 || h1.seq > h2.seq):
		im.hdr, im.hdrIndex = h1, 1
	case ok2:
		im.hdr, im.hdrIndex = h2, 2
	default:
		return corrupt(name, "no valid header (bad signature or checksum at %#x and %#x)", header1Offset, header2Offset)
	}
	h := im.hdr
	if h.version != 1 {
		return unimplemented(name, "vhdx version %d", h.version)
	}
	if h.logOffset > uint64(maxFileSize) || h.logOffset%uint64(mib) != 0 || int64(h.logLength)%mib != 0 ||
		(h.logLength > 0 && h.logOffset < uint64(headerSectionSize)) {
		return corrupt(name, "log at %#x (%d bytes) is not 1 MiB aligned after the header section", h.logOffset, h.logLength)
	}
	if !h.logGUID.isZero() {
		if h.logVer != 0 {
			return unimplemented(name, "vhdx log version %d", h.logVer)
		}
		if err := replayLog(name, im.v, h); err != nil {
			return err
		}
		im.replayed = true
		if len(im.v.patches) > 0 {
			// The region tables may have changed.
			if err := im.v.readAt(hs[region1Offset:], region1Offset); err != nil {
				return fmt.Errorf("vhdx %s: read region table: %w", name, err)
			}
		}
	}
	if err := im.loadRegions(hs); err != nil {
		return err
	}
	if err := im.loadMetadata(); err != nil {
		return err
	}
	return im.loadBAT()
}

func (im *image) loadRegions(hs []byte) error {
	name := im.name
	ents, ok, err := parseRegionTable(hs[region1Offset:])
	if !ok || err != nil {
		if ents2, ok2, err2 := parseRegionTable(hs[region2Offset:]); ok2 && err2 == nil {
			ents, ok, err = ents2, true, nil
		}
	}
	if err != nil {
		return corrupt(name, "%v", err)
	}
	if !ok {
		return corrupt(name, "no valid region table (bad signature or checksum at %#x and %#x)", region1Offset, region2Offset)
	}
	im.regions = ents
	var haveBAT, haveMeta bool
	spans := []span{{0, headerSectionSize, "header section"}}
	if l := int64(im.hdr.logLength); l > 0 {
		spans = append(spans, span{int64(im.hdr.logOffset), l, "log"})
	}
	for i, r := range ents {
		for _, o := range ents[:i] {
			if o.id == r.id {
				return corrupt(name, "region %s listed twice", r.id)
			}
		}
		off, n := int64(r.off), int64(r.length)
		what := "region " + r.id.String()
		switch r.id {
		case guidBATRegion:
			haveBAT, im.batOff, im.batLen, what = true, off, n, "BAT region"
		case guidMetadataRegion:
			haveMeta, im.metaOff, im.metaLen, what = true, off, n, "metadata region"
		default:
			if r.required {
				return unimplemented(name, "required region %s", r.id)
			}
		}
		if r.off%uint64(mib) != 0 || off < headerSectionSize || n%mib != 0 || n == 0 || r.off > uint64(maxFileSize) {
			return corrupt(name, "%s at %#x (%d bytes) is not 1 MiB aligned after the header section", what, r.off, n)
		}
		if off+n > im.v.size {
			return corrupt(name, "%s at %#x (%d bytes) beyond end of file (%d bytes)", what, off, n, im.v.size)
		}
		spans = append(spans, span{off, n, what})
	}
	if !haveBAT || !haveMeta {
		return corrupt(name, "region table lacks the BAT or the metadata region")
	}
	for i, a := range spans {
		for _, b := range spans[:i] {
			if a.off < b.off+b.n && b.off < a.off+a.n {
				return corrupt(name, "%s at %#x overlaps %s at %#x", a.what, a.off, b.what, b.off)
			}
		}
	}
	return nil
}

type span struct {
	off, n int64
	what   string
}

func (im *image) loadMetadata() error {
	name := im.name
	tb := make([]byte, metaTableSize)
	if err := im.v.readAt(tb, im.metaOff); err != nil {
		return fmt.Errorf("vhdx %s: read metadata table: %w", name, err)
	}
	ents, err := parseMetaTable(tb)
	if err != nil {
		return corrupt(name, "%v", err)
	}
	type key struct {
		id   guid
		user bool
	}
	seen := map[key]bool{}
	var items []metaEntry
	users := 0
	for _, e := range ents {
		k := key{e.id, e.user()}
		if seen[k] {
			return corrupt(name, "metadata item %s listed twice", e.id)
		}
		seen[k] = true
		if e.user() {
			users++
		}
		if e.length > uint32(maxMetaItemLen) {
			return corrupt(name, "metadata item %s of %d bytes is larger than 1 MiB", e.id, e.length)
		}
		if e.length == 0 {
			if e.off != 0 {
				return corrupt(name, "empty metadata item %s has offset %#x", e.id, e.off)
			}
			continue
		}
		if int64(e.off) < metaTableSize || int64(e.off)+int64(e.length) > im.metaLen {
			return corrupt(name, "metadata item %s at %#x (%d bytes) outside the metadata region", e.id, e.off, e.length)
		}
		items = append(items, e)
	}
	if users > 1024 {
		return corrupt(name, "metadata table holds %d user items, more than 1024", users)
	}
	slices.SortFunc(items, func(a, b metaEntry) int { return cmpInt64(int64(a.off), int64(b.off)) })
	for i := 1; i < len(items); i++ {
		if items[i-1].off+items[i-1].length > items[i].off {
			return corrupt(name, "metadata items %s and %s overlap", items[i-1].id, items[i].id)
		}
	}

	var got struct{ params, size, id, lss, pss, locator bool }
	var flags uint32
	for _, e := range ents {
		if e.user() {
			if e.required() {
				return unimplemented(name, "required user metadata item %s", e.id)
			}
			continue
		}
		var want int
		switch e.id {
		case guidFileParameters:
			want, got.params = 8, true
		case guidVirtualSize:
			want, got.size = 8, true
		case guidPage83:
			want, got.id = 16, true
		case guidLogicalSector:
			want, got.lss = 4, true
		case guidPhysicalSector:
			want, got.pss = 4, true
		case guidParentLocator:
			want, got.locator = -1, true
		default:
			if e.required() {
				return unimplemented(name, "required metadata item %s", e.id)
			}
			continue
		}
		if want >= 0 && int(e.length) != want {
			return corrupt(name, "metadata item %s is %d bytes, want %d", e.id, e.length, want)
		}
		b := make([]byte, e.length)
		if err := im.v.readAt(b, im.metaOff+int64(e.off)); err != nil {
			return fmt.Errorf("vhdx %s: read metadata item %s: %w", name, e.id, err)
		}
		le := binary.LittleEndian
		switch e.id {
		case guidFileParameters:
			im.bs = int64(le.Uint32(b))
			flags = le.Uint32(b[4:])
		case guidVirtualSize:
			sz := le.Uint64(b)
			if sz > uint64(maxVirtualSize) {
				return corrupt(name, "virtual size %d is larger than 64 TiB", sz)
			}
			im.size = int64(sz)
		case guidPage83:
			copy(im.diskID[:], b)
		case guidLogicalSector:
			im.lss = int64(le.Uint32(b))
		case guidPhysicalSector:
			im.pss = int64(le.Uint32(b))
		case guidParentLocator:
			loc, err := parseLocator(name, b)
			if err != nil {
				return err
			}
			im.locator = loc
		}
	}
	switch {
	case !got.params:
		return corrupt(name, "metadata lacks the file parameters")
	case !got.size:
		return corrupt(name, "metadata lacks the virtual disk size")
	case !got.lss:
		return corrupt(name, "metadata lacks the logical sector size")
	case !got.pss:
		return corrupt(name, "metadata lacks the physical sector size")
	case !got.id:
		return corrupt(name, "metadata lacks the virtual disk id")
	}
	if im.bs < minBlockSize || im.bs > maxBlockSize || im.bs&(im.bs-1) != 0 {
		return corrupt(name, "block size %d is not a power of two from 1 MiB to 256 MiB", im.bs)
	}
	if im.lss != 512 && im.lss != 4096 {
		return corrupt(name, "logical sector size %d (want 512 or 4096)", im.lss)
	}
	if im.pss != 512 && im.pss != 4096 {
		return corrupt(name, "physical sector size %d (want 512 or 4096)", im.pss)
	}
	if im.size%im.lss != 0 {
		return corrupt(name, "virtual size %d is not a multiple of the %d-byte logical sector", im.size, im.lss)
	}
	im.leave = flags&paramLeaveBlocksAllocated != 0
	im.diff = flags&paramHasParent != 0
	if im.diff && im.locator == nil {
		return corrupt(name, "differencing disk without a parent locator")
	}
	return nil
}

// parseLocator decodes a parent locator item into its key-value pairs.
func parseLocator(name string, b []byte) (map[string]string, error) {
	le := binary.LittleEndian
	if len(b) < 20 {
		return nil, corrupt(name, "parent locator of %d bytes is too short", len(b))
	}
	var typ guid
	copy(typ[:], b[:16])
	if typ != guidVHDXLocatorType {
		return nil, unimplemented(name, "parent locator type %s (only vhdx parents)", typ)
	}
	n := int(le.Uint16(b[18:]))
	if 20+12*n > len(b) {
		return nil, corrupt(name, "parent locator with %d entries does not fit its %d bytes", n, len(b))
	}
	m := map[string]string{}
	str := func(off uint32, l uint16) (string, bool) {
		if off == 0 || l == 0 || l%2 != 0 || int64(off)+int64(l) > int64(len(b)) {
			return "", false
		}
		return decodeUTF16(b[off : off+uint32(l)]), true
	}
	for i := range n {
		e := b[20+12*i:]
		k, ok1 := str(le.Uint32(e[0:]), le.Uint16(e[8:]))
		v, ok2 := str(le.Uint32(e[4:]), le.Uint16(e[10:]))
		if !ok1 || !ok2 {
			return nil, corrupt(name, "parent locator entry %d out of range", i)
		}
		if _, dup := m[k]; dup {
			return nil, corrupt(name, "parent locator key %q listed twice", k)
		}
		m[k] = v
	}
	if _, ok := m["parent_linkage"]; !ok {
		return nil, corrupt(name, "parent locator lacks parent_linkage")
	}
	return m, nil
}

func (im *image) loadBAT() error {
	name := im.name
	im.nBlocks = (im.size + im.bs - 1) / im.bs
	im.ratio = chunkRatio(im.lss, im.bs)
	n := batEntries(im.nBlocks, im.ratio, im.diff)
	if n*8 > maxBATBytes {
		return unimplemented(name, "BAT of %d MiB (ferry reads BATs up to %d MiB)", n*8/mib, maxBATBytes/mib)
	}
	if n*8 > im.batLen {
		return corrupt(name, "BAT region of %d bytes is too small for %d entries", im.batLen, n)
	}
	raw := make([]byte, n*8)
	if err := im.v.readAt(raw, im.batOff); err != nil {
		return fmt.Errorf("vhdx %s: read BAT: %w", name, err)
	}
	nChunks := (im.nBlocks + im.ratio - 1) / im.ratio
	im.blocks = make([]uint64, im.nBlocks)
	im.bitmaps = make([]uint64, nChunks)
	for i := range im.nBlocks {
		im.blocks[i] = binary.LittleEndian.Uint64(raw[8*payloadIndex(i, im.ratio):])
	}
	for c := range nChunks {
		if j := bitmapIndex(c, im.ratio); j < n {
			im.bitmaps[c] = binary.LittleEndian.Uint64(raw[8*j:])
		}
	}
	var first error
	im.checkBAT(func(msg string, fatal bool) bool {
		if !fatal {
			return true // Check reports it
		}
		first = corrupt(name, "%s", msg)
		return false
	})
	return first
}

// checkBAT checks every BAT entry: states, offsets within the file, and no
// overlap with each other or the other structures. It calls report for
// each fault (fatal: the image cannot be read right), stopping when report
// returns false.
func (im *image) checkBAT(report func(msg string, fatal bool) bool) {
	units := (im.v.size + mib - 1) / mib
	used := make([]uint64, (units+63)/64)
	mark := func(off, n int64) bool { // false if any unit was already used
		ok := true
		for u := off / mib; u < (off+n+mib-1)/mib; u++ {
			if used[u/64]&(1<<(u%64)) != 0 {
				ok = false
			}
			used[u/64] |= 1 << (u % 64)
		}
		return ok
	}
	mark(0, headerSectionSize)
	if l := int64(im.hdr.logLength); l > 0 && int64(im.hdr.logOffset)+l <= im.v.size {
		mark(int64(im.hdr.logOffset), l)
	}
	for _, r := range im.regions {
		if int64(r.off)+int64(r.length) <= im.v.size {
			mark(int64(r.off), int64(r.length))
		}
	}
	for i, e := range im.blocks {
		st := e & batStateMask
		off := int64(e >> batOffsetShift * uint64(mib))
		if e&batReservedMask != 0 && !report(fmt.Sprintf("BAT entry for block %d has reserved bits set (%#x)", i, e), false) {
			return
		}
		switch st {
		case stateNotPresent, stateUndefined, stateZero, stateUnmapped:
			continue
		case stateFull:
		case statePartial:
			if !im.diff {
				if !report(fmt.Sprintf("block %d is partially present in a disk without a parent", i), true) {
					return
				}
				continue
			}
		default:
			if !report(fmt.Sprintf("block %d has invalid state %d", i, st), true) {
				return
			}
			continue
		}
		used := min(im.bs, im.size-int64(i)*im.bs)
		switch {
		case off < headerSectionSize:
			if !report(fmt.Sprintf("block %d at %#x inside the header section", i, off), true) {
				return
			}
		case off >= im.v.size || off+used > im.v.size:
			if !report(fmt.Sprintf("block %d at %#x (%d bytes) beyond end of file (%d bytes)", i, off, used, im.v.size), true) {
				return
			}
		case !mark(off, used):
			if !report(fmt.Sprintf("block %d at %#x overlaps another block or structure", i, off), true) {
				return
			}
		}
	}
	for c, e := range im.bitmaps {
		st := e & batStateMask
		off := int64(e >> batOffsetShift * uint64(mib))
		needed := false
		if im.diff {
			for i := int64(c) * im.ratio; i < min(int64(c+1)*im.ratio, im.nBlocks); i++ {
				if im.blocks[i]&batStateMask == statePartial {
					needed = true
				}
			}
		}
		switch st {
		case stateNotPresent:
			if needed && !report(fmt.Sprintf("sector bitmap of chunk %d not present but a block needs it", c), true) {
				return
			}
			continue
		case stateFull:
			if !im.diff {
				if !report(fmt.Sprintf("sector bitmap of chunk %d present in a disk without a parent", c), false) {
					return
				}
				continue
			}
		default:
			if !report(fmt.Sprintf("sector bitmap of chunk %d has invalid state %d", c, st), needed) {
				return
			}
			continue
		}
		switch {
		case off < headerSectionSize:
			if !report(fmt.Sprintf("sector bitmap of chunk %d at %#x inside the header section", c, off), needed) {
				return
			}
		case off >= im.v.size || off+sectorBitmapSize > im.v.size:
			if !report(fmt.Sprintf("sector bitmap of chunk %d at %#x beyond end of file (%d bytes)", c, off, im.v.size), needed) {
				return
			}
		case !mark(off, sectorBitmapSize):
			if !report(fmt.Sprintf("sector bitmap of chunk %d at %#x overlaps another block or structure", c, off), needed) {
				return
			}
		}
	}
}

// openParent opens the parent of a differencing disk through the paths of
// its locator, in the order [MS-VHDX] gives, and checks its identity.
func (im *image) openParent(ctx context.Context, opts *disk.OpenOptions) error {
	name := im.name
	var paths []string
	for _, k := range []string{"relative_path", "volume_path", "absolute_win32_path"} {
		if p, ok := im.locator[k]; ok && p != "" {
			paths = append(paths, strings.ReplaceAll(p, `\`, "/"))
		}
	}
	if len(paths) == 0 {
		return corrupt(name, "parent locator names no parent path")
	}
	if opts.OpenBacking == nil {
		return fmt.Errorf("vhdx %s: parent %q not opened (backing files not allowed here): %w", name, paths[0], errs.ErrFailedPrecondition)
	}
	var links []guid
	for _, k := range []string{"parent_linkage", "parent_linkage2"} {
		if s, ok := im.locator[k]; ok {
			g, ok := parseGUID(s)
			if !ok {
				return corrupt(name, "parent locator %s %q is not a GUID", k, s)
			}
			links = append(links, g)
		}
	}
	var errList []error
	for _, p := range paths {
		parent, err := opts.OpenBacking(ctx, p, "vhdx")
		if err != nil {
			if errs.Is(err, errs.NotFound) {
				errList = append(errList, err)
				continue
			}
			return fmt.Errorf("vhdx %s: parent %q: %w", name, p, err)
		}
		pi := parent.Info()
		dw, _ := pi.Specific["data-write-guid"].(string)
		g, ok := parseGUID(dw)
		if !ok || !slices.Contains(links, g) {
			parent.Close()
			errList = append(errList, corrupt(name, "parent %q has data write guid %q, not the linked %s (the parent changed after the child was made)", p, dw, links[0]))
			continue
		}
		if pl, ok := pi.Specific["logical-sector-size"].(int64); ok && pl != im.lss {
			parent.Close()
			return corrupt(name, "parent %q has %d-byte logical sectors, the child %d", p, pl, im.lss)
		}
		im.parent, im.parentRef = parent, p
		return nil
	}
	return fmt.Errorf("vhdx %s: cannot open parent (tried %s): %w", name, strings.Join(quoteAll(paths), ", "), errors.Join(errList...))
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = fmt.Sprintf("%q", x)
	}
	return out
}

func (im *image) Size() int64 { return im.size }

func (im *image) Close() error {
	im.closeOnce.Do(func() {
		var perr error
		if im.parent != nil {
			perr = im.parent.Close()
		}
		im.closeErr = errors.Join(perr, im.f.Close())
	})
	return im.closeErr
}

func (im *image) Info() disk.Info {
	sub := "dynamic"
	switch {
	case im.diff:
		sub = "differencing"
	case im.leave:
		sub = "fixed"
	}
	info := disk.Info{
		Filename:    im.name,
		Format:      "vhdx",
		VirtualSize: im.size,
		ClusterSize: im.bs,
		Specific: map[string]any{
			"subformat":              sub,
			"block-size":             im.bs,
			"log-size":               int64(im.hdr.logLength),
			"leave-blocks-allocated": im.leave,
			"logical-sector-size":    im.lss,
			"physical-sector-size":   im.pss,
			"data-write-guid":        im.hdr.dataWrite.String(),
			"disk-id":                im.diskID.String(),
			"log-replayed":           im.replayed,
		},
	}
	if im.parent != nil {
		info.BackingFile = im.parentRef
		info.BackingFormat = "vhdx"
		pi := im.parent.Info()
		info.Backing = &pi
	}
	return info
}

// block returns the kind of payload block i and its file offset.
func (im *image) block(i int64) (int, int64) {
	e := im.blocks[i]
	switch e & batStateMask {
	case stateFull:
		return kindData, int64(e >> batOffsetShift * uint64(mib))
	case statePartial:
		return kindPartial, int64(e >> batOffsetShift * uint64(mib))
	case stateZero:
		return kindZero, 0
	case stateUnmapped:
		if im.diff {
			return kindZero, 0
		}
	}
	return kindNone, 0
}

func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vhdx %s: read at negative offset %d: %w", im.name, off, errs.ErrInvalidArgument)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > im.size-off {
		p, eof = p[:im.size-off], io.EOF
	}
	if err := im.read(p, off); err != nil {
		return 0, fmt.Errorf("vhdx %s: read %d bytes at %d: %w", im.name, len(p), off, err)
	}
	return len(p), eof
}

func (im *image) read(p []byte, off int64) error {
	for len(p) > 0 {
		i, within := off/im.bs, off%im.bs
		n := min(im.bs-within, int64(len(p)))
		kind, host := im.block(i)
		switch kind {
		case kindData:
			// Extend over following blocks that continue in the file.
			for j := i + 1; n < int64(len(p)); j++ {
				k, h := im.block(j)
				if k != kindData || h != host+(j-i)*im.bs {
					break
				}
				n = min(n+im.bs, int64(len(p)))
			}
			if err := im.v.readAt(p[:n], host+within); err != nil {
				return err
			}
		case kindZero:
			clear(p[:n])
		case kindNone:
			if err := im.readParent(p[:n], off); err != nil {
				return err
			}
		case kindPartial:
			if err := im.readPartial(p[:n], i, within, host); err != nil {
				return err
			}
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readParent reads from the parent, or zeros without one or past its end.
func (im *image) readParent(p []byte, off int64) error {
	if im.parent == nil || off >= im.parent.Size() {
		clear(p)
		return nil
	}
	m := min(int64(len(p)), im.parent.Size()-off)
	k, err := im.parent.ReadAt(p[:m], off)
	if int64(k) < m {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("parent: %w", err)
	}
	clear(p[m:])
	return nil
}

// sectorRuns calls fn for each run of sectors of block i that share their
// bitmap bit, over the block bytes [within, within+n): present runs are in
// the file, others in the parent.
func (im *image) sectorRuns(i, within, n int64, fn func(off, n int64, present bool) error) error {
	bm := im.bitmaps[i/im.ratio]
	bmHost := int64(bm >> batOffsetShift * uint64(mib))
	spb := im.bs / im.lss
	first, last := within/im.lss, (within+n-1)/im.lss
	bit0 := (i%im.ratio)*spb + first
	nbits := last - first + 1
	byte0 := bit0 / 8
	buf := make([]byte, (bit0+nbits+7)/8-byte0)
	if err := im.v.readAt(buf, bmHost+byte0); err != nil {
		return err
	}
	bit := func(k int64) bool { // k counts from first
		b := bit0 + k - byte0*8
		return buf[b/8]&(1<<(b%8)) != 0
	}
	for k := int64(0); k < nbits; {
		v := bit(k)
		j := k + 1
		for j < nbits && bit(j) == v {
			j++
		}
		s := max((first+k)*im.lss, within)
		e := min((first+j)*im.lss, within+n)
		if err := fn(s, e-s, v); err != nil {
			return err
		}
		k = j
	}
	return nil
}

func (im *image) readPartial(p []byte, i, within, host int64) error {
	return im.sectorRuns(i, within, int64(len(p)), func(off, n int64, present bool) error {
		q := p[off-within : off-within+n]
		if present {
			return im.v.readAt(q, host+off)
		}
		return im.readParent(q, i*im.bs+off)
	})
}

func (im *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, im.size)
		off = max(off, 0)
		if off >= end {
			return
		}
		var pend disk.Extent
		stopped := false
		emit := func(e disk.Extent) bool {
			if stopped {
				return false
			}
			if e.Len <= 0 {
				return true
			}
			if pend.Len > 0 && pend.Kind == e.Kind && pend.End() == e.Off {
				pend.Len += e.Len
				return true
			}
			if pend.Len > 0 && !yield(pend, nil) {
				stopped = true
				return false
			}
			pend = e
			return true
		}
		fail := func(err error) {
			if !stopped {
				yield(disk.Extent{}, err)
			}
		}
		for pos := off; pos < end; {
			i, within := pos/im.bs, pos%im.bs
			if i%4096 == 0 {
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
			}
			m := min(im.bs-within, end-pos)
			kind, _ := im.block(i)
			var err error
			switch kind {
			case kindData:
				im.dataExtents(pos, m, emit)
			case kindZero:
				emit(disk.Extent{Off: pos, Len: m, Kind: disk.Zero})
			case kindNone:
				err = im.parentExtents(ctx, pos, m, emit)
			case kindPartial:
				err = im.sectorRuns(i, within, m, func(o, k int64, present bool) error {
					if present {
						im.dataExtents(i*im.bs+o, k, emit)
						return nil
					}
					return im.parentExtents(ctx, i*im.bs+o, k, emit)
				})
			}
			if err != nil {
				fail(fmt.Errorf("vhdx %s: extents at %d: %w", im.name, pos, err))
				return
			}
			if stopped {
				return
			}
			pos += m
		}
		if pend.Len > 0 {
			yield(pend, nil)
		}
	}
}

// dataExtents emits the virtual range [off, off+n), stored in a present
// block, as Data; when the file system can tell, holes in the file are
// reported as Zero instead. A hole loses holeMargin at each end to Data
// (so that any window of that size holding data lies in Data extents) and
// is reported only if at least minHole remains.
func (im *image) dataExtents(off, n int64, emit func(disk.Extent) bool) {
	if im.osf == nil || n < minHole+2*holeMargin {
		emit(disk.Extent{Off: off, Len: n, Kind: disk.Data})
		return
	}
	i, within := off/im.bs, off%im.bs
	_, host := im.block(i)
	base := host + within
	dataFrom := off // start of the Data run not yet emitted
	fileRuns(im.osf, base, n, func(o, k int64, data bool) bool {
		if data {
			return true
		}
		s, e := off+(o-base)+holeMargin, off+(o-base)+k-holeMargin
		if e-s < minHole {
			return true
		}
		if s > dataFrom && !emit(disk.Extent{Off: dataFrom, Len: s - dataFrom, Kind: disk.Data}) {
			return false
		}
		dataFrom = e
		return emit(disk.Extent{Off: s, Len: e - s, Kind: disk.Zero})
	})
	if dataFrom < off+n {
		emit(disk.Extent{Off: dataFrom, Len: off + n - dataFrom, Kind: disk.Data})
	}
}

const (
	holeMargin = 4 * kib
	minHole    = 64 * kib
)

// parentExtents emits the parent's extents over [off, off+n), or
// Unallocated without a parent or past its end.
func (im *image) parentExtents(ctx context.Context, off, n int64, emit func(disk.Extent) bool) error {
	end := off + n
	if im.parent != nil && off < im.parent.Size() {
		pend := min(end, im.parent.Size())
		next := off
		for e, err := range im.parent.Extents(ctx, off, pend-off) {
			if err != nil {
				return fmt.Errorf("parent: %w", err)
			}
			// Clip defensively and fill any gap the parent leaves.
			s, t := max(e.Off, next), min(e.End(), pend)
			if s > next {
				if !emit(disk.Extent{Off: next, Len: s - next, Kind: disk.Unallocated}) {
					return nil
				}
			}
			if t > s {
				if !emit(disk.Extent{Off: s, Len: t - s, Kind: e.Kind}) {
					return nil
				}
				next = t
			}
		}
		off = next
	}
	if off < end {
		emit(disk.Extent{Off: off, Len: end - off, Kind: disk.Unallocated})
	}
	return nil
}
