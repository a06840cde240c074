package ova

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamName names a streamed OVA in messages.
const streamName = "stream"

// streamReader reads an OVA front to back. Every member is hashed as it
// passes: with the manifest's algorithm once the manifest has been read,
// with both SHA-256 and SHA-1 before (a manifest after the disks, as
// VirtualBox writes it, is checked when it arrives).
type streamReader struct {
	tr       *tar.Reader
	reg      *disk.Registry
	desc     *descriptor
	ovfName  string
	byMember map[string]int // disk member name → disk index
	handed   []bool         // disks handed out
	passed   map[string]*digests
	order    []string // members passed, in order
	mf       *manifest
	mfName   string
	cur      *diskStream
	err      error // sticky
	done     bool  // the archive's end was reached and checked
}

var _ archive.StreamReader = (*streamReader)(nil)

func openStream(ctx context.Context, src io.Reader, opts *archive.OpenOptions) (archive.StreamReader, error) {
	s := &streamReader{tr: tar.NewReader(src), byMember: map[string]int{}, passed: map[string]*digests{}}
	if opts != nil {
		s.reg = opts.Disks
	}
	if s.reg == nil {
		return nil, fmt.Errorf("ova %s: no disk registry to open the disk members with: %w", streamName, errs.ErrInvalidArgument)
	}
	var h *tar.Header
	for {
		var err error
		if h, err = s.tr.Next(); err != nil {
			return nil, tarError(err, "the first member")
		}
		if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeXGlobalHeader {
			break
		}
	}
	name := cleanName(h.Name)
	if !isOVF(name) || (h.Typeflag != tar.TypeReg && h.Typeflag != '\x00') {
		return nil, fmt.Errorf("ova %s: the first member is %s, not the .ovf descriptor; the OVF is not the first member, so the archive cannot be streamed (save it to a file and open that): %w",
			streamName, name, errs.ErrUnimplemented)
	}
	if h.Size > maxDescriptorBytes {
		return nil, fmt.Errorf("ova %s: descriptor %s of %d bytes is over the %d-byte limit: %w", streamName, name, h.Size, maxDescriptorBytes, errs.ErrCorrupt)
	}
	d := newDigests(algSHA256, algSHA1)
	b, err := io.ReadAll(io.TeeReader(s.tr, d))
	if err != nil {
		return nil, tarError(err, name)
	}
	if s.desc, err = parseDescriptor(streamName+"/"+name, b); err != nil {
		return nil, err
	}
	s.ovfName = name
	s.pass(name, d)
	for i, dr := range s.desc.disks {
		s.byMember[dr.href] = i
	}
	s.handed = make([]bool, len(s.desc.disks))
	return s, nil
}

// tarError wraps an archive/tar error while reading what.
func tarError(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("ova %s: the stream ends inside %s (truncated): %w", streamName, what, errs.ErrCorrupt)
	}
	return fmt.Errorf("ova %s: %s: %v: %w", streamName, what, err, errs.ErrCorrupt)
}

func (s *streamReader) VM() core.VMSpec { return cloneVM(s.desc.vm) }

// pass records a member's digests, checking them now if the manifest has
// been read.
func (s *streamReader) pass(name string, d *digests) error {
	s.passed[name] = d
	s.order = append(s.order, name)
	if s.mf != nil {
		return s.mf.check(s.mfName, name, streamName, d)
	}
	return nil
}

// hashesFor returns the digests to compute over a member: the manifest's
// algorithm for it when the manifest is known, both usual ones otherwise.
func (s *streamReader) hashesFor(name string) (*digests, error) {
	if s.mf == nil {
		return newDigests(algSHA256, algSHA1), nil
	}
	e, ok := s.mf.entries[name]
	if !ok {
		return nil, fmt.Errorf("ova %s: member %s is not in the manifest %s: %w", streamName, name, s.mfName, errs.ErrCorrupt)
	}
	return newDigests(e.alg), nil
}

func (s *streamReader) fail(err error) error {
	if s.err == nil {
		s.err = err
	}
	return err
}

// NextDisk finishes the previous disk's member (reading and hashing what
// its stream left) and moves to the next disk member.
func (s *streamReader) NextDisk(ctx context.Context) (int, disk.Stream, error) {
	if s.err != nil {
		return -1, nil, s.err
	}
	if s.done {
		return -1, nil, io.EOF
	}
	if s.cur != nil {
		cur := s.cur
		s.cur = nil
		if err := cur.finish(); err != nil {
			return -1, nil, s.fail(err)
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return -1, nil, err
		}
		h, err := s.tr.Next()
		if errors.Is(err, io.EOF) {
			if err := s.end(); err != nil {
				return -1, nil, s.fail(err)
			}
			return -1, nil, io.EOF
		}
		if err != nil {
			return -1, nil, s.fail(tarError(err, "a tar header"))
		}
		name := cleanName(h.Name)
		regular := (h.Typeflag == tar.TypeReg || h.Typeflag == '\x00') && !isSparse(h)
		i, isDisk := s.byMember[name]
		switch {
		case isDisk && !regular:
			return -1, nil, s.fail(fmt.Errorf("ova %s: disk %d: member %s is not a regular file (tar type %q): %w", streamName, i, name, h.Typeflag, errs.ErrUnimplemented))
		case !regular:
			continue
		case s.passed[name] != nil || (s.mfName != "" && name == s.mfName):
			return -1, nil, s.fail(fmt.Errorf("ova %s: member %s appears twice: %w", streamName, name, errs.ErrCorrupt))
		case isOVF(name):
			return -1, nil, s.fail(fmt.Errorf("ova %s: a second .ovf descriptor %s after %s: %w", streamName, name, s.ovfName, errs.ErrUnimplemented))
		case isManifest(name):
			if err := s.readManifest(name, h.Size); err != nil {
				return -1, nil, s.fail(err)
			}
		case isDisk:
			ds, err := s.openDisk(ctx, i, name, h.Size)
			if err != nil {
				return -1, nil, s.fail(err)
			}
			return i, ds, nil
		case isCert(name):
			// a signature over the manifest, not itself listed: skipped
			if _, err := io.Copy(io.Discard, s.tr); err != nil {
				return -1, nil, s.fail(tarError(err, name))
			}
		default:
			// an ISO, a resource bundle, anything else: hashed for the
			// manifest
			d, err := s.hashesFor(name)
			if err != nil {
				return -1, nil, s.fail(err)
			}
			if _, err := io.Copy(d, s.tr); err != nil {
				return -1, nil, s.fail(tarError(err, name))
			}
			if err := s.pass(name, d); err != nil {
				return -1, nil, s.fail(err)
			}
		}
	}
}

// readManifest parses the manifest and checks the members already passed.
func (s *streamReader) readManifest(name string, size int64) error {
	if s.mf != nil {
		return fmt.Errorf("ova %s: two manifests, %s and %s: %w", streamName, s.mfName, name, errs.ErrCorrupt)
	}
	if size > maxManifestBytes {
		return fmt.Errorf("ova %s: manifest %s of %d bytes is over the %d-byte limit: %w", streamName, name, size, maxManifestBytes, errs.ErrCorrupt)
	}
	b, err := io.ReadAll(s.tr)
	if err != nil {
		return tarError(err, name)
	}
	mf, err := parseManifest(streamName+"/"+name, b)
	if err != nil {
		return err
	}
	s.mf, s.mfName = mf, name
	for _, n := range s.order {
		if err := mf.check(name, n, streamName, s.passed[n]); err != nil {
			return err
		}
	}
	return nil
}

// end checks, at the archive's end, that every disk came and that the
// manifest lists no member that did not.
func (s *streamReader) end() error {
	s.done = true
	for i, h := range s.handed {
		if !h {
			return fmt.Errorf("ova %s: disk %d (%s): member %s is missing: %w", streamName, i, s.desc.vm.Disks[i].Name, s.desc.disks[i].href, errs.ErrCorrupt)
		}
	}
	if s.mf != nil {
		for _, n := range s.mf.order {
			if s.passed[n] == nil {
				return fmt.Errorf("ova %s: manifest %s lists %s, which the archive does not hold: %w", streamName, s.mfName, n, errs.ErrCorrupt)
			}
		}
	}
	return nil
}

func (s *streamReader) openDisk(ctx context.Context, i int, name string, size int64) (*diskStream, error) {
	dr := s.desc.disks[i]
	switch {
	case dr.compression != "" && dr.compression != "identity":
		return nil, fmt.Errorf("ova %s: disk %d: member %s is %s-compressed (ovf:compression): %w", streamName, i, name, dr.compression, errs.ErrUnimplemented)
	case dr.chunkSize != "":
		return nil, fmt.Errorf("ova %s: disk %d: file %s is split into chunks (ovf:chunkSize): %w", streamName, i, name, errs.ErrUnimplemented)
	case dr.fileSize >= 0 && dr.fileSize != size:
		return nil, fmt.Errorf("ova %s: disk %d: member %s holds %d bytes but the descriptor's ovf:size says %d: %w", streamName, i, name, size, dr.fileSize, errs.ErrCorrupt)
	}
	d, err := s.hashesFor(name)
	if err != nil {
		return nil, err
	}
	s.handed[i] = true
	hr := &hashReader{name: name, r: s.tr, d: d}
	st, err := s.reg.OpenStream(ctx, hr, "", size)
	if err != nil {
		return nil, fmt.Errorf("ova %s: disk %d (%s): %w", streamName, i, name, err)
	}
	if f := st.Info().Format; dr.isVMDK() && f != "vmdk" {
		st.Close()
		return nil, fmt.Errorf("ova %s: disk %d: member %s is not a VMDK, as the descriptor says (it reads as %s): %w", streamName, i, name, f, errs.ErrCorrupt)
	}
	if err := checkCapacity(streamName, i, dr, st.Size()); err != nil {
		st.Close()
		return nil, err
	}
	ds := &diskStream{Stream: st, s: s, idx: i, member: name, hr: hr}
	s.cur = ds
	return ds, nil
}

// Close releases the stream. When every disk has been read and the
// archive's end not yet reached, it reads the rest (typically a manifest
// after the disks) and returns the verification's error, if any; callers
// that want that error in order call NextDisk until io.EOF instead.
func (s *streamReader) Close() error {
	if s.cur != nil {
		s.cur.Stream.Close()
	}
	if s.err != nil || s.done {
		return nil
	}
	for _, h := range s.handed {
		if !h {
			return nil // abandoned early: nothing to verify
		}
	}
	if s.cur != nil && !s.cur.finished {
		return nil // the last disk was abandoned
	}
	if _, _, err := s.NextDisk(context.Background()); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// hashReader hashes what is read through it.
type hashReader struct {
	name string
	r    io.Reader
	d    *digests
	n    int64
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.d.Write(p[:n])
	h.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		err = tarError(err, "member "+h.name)
	}
	return n, err
}

// diskStream is a disk member's Stream: at its end the rest of the member
// is read and its digest checked.
type diskStream struct {
	disk.Stream
	s        *streamReader
	idx      int
	member   string
	hr       *hashReader
	finished bool
	err      error
}

func (d *diskStream) Next(ctx context.Context) (int64, []byte, error) {
	if d.finished {
		if d.err != nil {
			return 0, nil, d.err
		}
		return 0, nil, io.EOF
	}
	off, p, err := d.Stream.Next(ctx)
	if errors.Is(err, io.EOF) {
		if ferr := d.finish(); ferr != nil {
			return 0, nil, d.s.fail(ferr)
		}
		return 0, nil, io.EOF
	}
	if err != nil {
		return 0, nil, fmt.Errorf("ova %s: disk %d (%s): %w", streamName, d.idx, d.member, err)
	}
	return off, p, nil
}

// finish reads what is left of the member through the hash and checks
// the digest against the manifest, if it has come.
func (d *diskStream) finish() error {
	if d.finished {
		return d.err
	}
	d.finished = true
	if _, err := io.Copy(io.Discard, d.hr); err != nil {
		d.err = tarError(err, d.member)
		return d.err
	}
	d.err = d.s.pass(d.member, d.hr.d)
	return d.err
}

func (d *diskStream) Info() disk.Info {
	info := d.Stream.Info()
	info.Filename = streamName + "/" + d.member
	return info
}
