package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// locatorPath decodes one parent locator's data into a path, or "" when
// the locator is unusable (unknown code, out of range, undecodable).
func (im *image) locatorPath(l locator) string {
	if l.length == 0 || l.length > maxLocatorBytes || l.offset > uint64(im.fileEnd) || int64(l.offset)+int64(l.length) > im.fileEnd {
		return ""
	}
	switch l.code {
	case platW2ru, platW2ku, platMacX:
	default:
		return ""
	}
	b := make([]byte, l.length)
	if n, _ := im.f.ReadAt(b, int64(l.offset)); n != len(b) {
		return ""
	}
	return decodeLocator(l.code, b)
}

// decodeLocator turns locator data into a path: W2ru and W2ku hold
// UTF-16LE Windows paths (backslashes become slashes, a drive letter is
// dropped, as blktap does); MacX holds a UTF-8 file:// URL.
func decodeLocator(code uint32, b []byte) string {
	var s string
	switch code {
	case platW2ru, platW2ku:
		s = strings.ReplaceAll(decodeUTF16(b, binary.LittleEndian), `\`, "/")
		if len(s) >= 2 && s[1] == ':' && (s[0]|0x20 >= 'a' && s[0]|0x20 <= 'z') {
			s = s[2:]
		}
	case platMacX:
		s = string(bytes.TrimRight(b, "\x00"))
		rest, ok := strings.CutPrefix(s, "file://")
		if !ok {
			return ""
		}
		rest = strings.TrimPrefix(rest, "localhost/")
		if u, err := url.PathUnescape(rest); err == nil {
			rest = u
		}
		s = rest
	}
	if s == "" || strings.ContainsRune(s, 0) {
		return ""
	}
	return path.Clean(s)
}

// parentCandidates lists the paths to try for the parent, best first:
// W2ru (relative), W2ku (absolute), MacX (relative URL), then the header's
// parent unicode name.
func (im *image) parentCandidates() []string {
	var out []string
	add := func(p string) {
		if p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, code := range []uint32{platW2ru, platW2ku, platMacX} {
		for _, l := range im.hdr.locators {
			if l.code == code {
				add(im.locatorPath(l))
			}
		}
	}
	add(decodeUTF16(im.hdr.parentName[:], binary.BigEndian))
	return out
}

// openParent opens the parent of a differencing disk and checks that its
// UUID is the one the child records.
//
// A parent whose UUID differs is refused with FailedPrecondition, not
// Corrupt: both files may be intact, but the file found at the recorded
// path is not the parent this child was made from (it was replaced or
// modified), and reading through it would silently return wrong data.
func (im *image) openParent(ctx context.Context, opts *disk.OpenOptions) error {
	cands := im.parentCandidates()
	if len(cands) == 0 {
		return corrupt(im.name, "differencing disk names no parent: no usable parent locator and no parent name")
	}
	if opts.OpenBacking == nil {
		return fmt.Errorf("vhd %s: differencing disk needs its parent %q, and backing files are not allowed here: %w", im.name, cands[0], errs.ErrFailedPrecondition)
	}
	want := formatUUID(im.hdr.parentUUID)
	var firstErr, mismatch error
	for _, c := range cands {
		p, err := opts.OpenBacking(ctx, c, "vhd")
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if errs.Is(err, errs.NotFound) {
				continue
			}
			return fmt.Errorf("vhd %s: open parent %q: %w", im.name, c, err)
		}
		got, _ := p.Info().Specific["uuid"].(string)
		if got != want {
			if mismatch == nil {
				mismatch = fmt.Errorf("vhd %s: parent %q has uuid %s but this differencing disk was made from uuid %s (the parent was replaced or modified): %w", im.name, c, got, want, errs.ErrFailedPrecondition)
			}
			p.Close()
			continue
		}
		im.parent, im.parentPath = p, c
		return nil
	}
	if mismatch != nil {
		return mismatch
	}
	return fmt.Errorf("vhd %s: parent not found (tried %s): %w", im.name, strings.Join(quoteAll(cands), ", "), firstErr)
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = fmt.Sprintf("%q", x)
	}
	return out
}
