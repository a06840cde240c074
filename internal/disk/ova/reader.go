package ova

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// probeMembers is how many tar members Probe looks through for an .ovf.
const probeMembers = 64

// probe claims ustar archives holding an .ovf member among their first
// members.
func probe(f disk.File) bool {
	if f.Size() < 2*blockSize {
		return false
	}
	b := make([]byte, blockSize)
	if n, _ := f.ReadAt(b, 0); n != blockSize || string(b[257:262]) != "ustar" {
		return false
	}
	tr := tar.NewReader(io.NewSectionReader(f, 0, f.Size()))
	for range probeMembers {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		if (h.Typeflag == tar.TypeReg || h.Typeflag == '\x00') && isOVF(h.Name) {
			return true
		}
	}
	return false
}

func isOVF(name string) bool      { return strings.HasSuffix(strings.ToLower(name), ".ovf") }
func isManifest(name string) bool { return strings.HasSuffix(strings.ToLower(name), ".mf") }
func isCert(name string) bool     { return strings.HasSuffix(strings.ToLower(name), ".cert") }

// reader is an OVA opened on a seekable file.
type reader struct {
	f        disk.File
	reg      *disk.Registry
	members  []member
	byName   map[string]int // regular members
	ovf      int            // member index of the descriptor
	ovfFirst bool
	mf       int // member index of the manifest, -1 for none
	cert     int // -1 for none
	manifest *manifest
	desc     *descriptor
	diskMem  []int    // member index of each disk
	formats  []string // format of each disk member
}

var _ archive.Reader = (*reader)(nil)

func open(ctx context.Context, f disk.File, opts *archive.OpenOptions) (archive.Reader, error) {
	ms, err := indexTar(f)
	if err != nil {
		return nil, err
	}
	r := &reader{f: f, members: ms, byName: map[string]int{}, ovf: -1, mf: -1, cert: -1}
	if opts != nil {
		r.reg = opts.Disks
	}
	var ovfs []int
	firstFile := -1
	for i, m := range ms {
		if m.typ == tar.TypeDir || m.typ == tar.TypeXGlobalHeader {
			continue
		}
		if firstFile < 0 {
			firstFile = i
		}
		if !m.regular() {
			continue
		}
		if _, dup := r.byName[m.name]; dup {
			return nil, fmt.Errorf("ova %s: member %s appears twice: %w", f.Name(), m.name, errs.ErrCorrupt)
		}
		r.byName[m.name] = i
		switch {
		case isOVF(m.name):
			ovfs = append(ovfs, i)
		case isManifest(m.name):
			if r.mf >= 0 {
				return nil, fmt.Errorf("ova %s: two manifests, %s and %s: %w", f.Name(), ms[r.mf].name, m.name, errs.ErrCorrupt)
			}
			r.mf = i
		case isCert(m.name):
			r.cert = i
		}
	}
	switch len(ovfs) {
	case 0:
		return nil, fmt.Errorf("ova %s: no .ovf descriptor member: %w", f.Name(), errs.ErrCorrupt)
	case 1:
	default:
		return nil, fmt.Errorf("ova %s: %d .ovf descriptors (%s, %s, ...): %w", f.Name(), len(ovfs), ms[ovfs[0]].name, ms[ovfs[1]].name, errs.ErrUnimplemented)
	}
	r.ovf = ovfs[0]
	r.ovfFirst = r.ovf == firstFile
	om := ms[r.ovf]
	if om.size > maxDescriptorBytes {
		return nil, fmt.Errorf("ova %s: descriptor %s of %d bytes is over the %d-byte limit: %w", f.Name(), om.name, om.size, maxDescriptorBytes, errs.ErrCorrupt)
	}
	b, err := r.readMember(om)
	if err != nil {
		return nil, err
	}
	if r.desc, err = parseDescriptor(f.Name()+"/"+om.name, b); err != nil {
		return nil, err
	}
	if r.mf >= 0 {
		mm := ms[r.mf]
		if mm.size > maxManifestBytes {
			return nil, fmt.Errorf("ova %s: manifest %s of %d bytes is over the %d-byte limit: %w", f.Name(), mm.name, mm.size, maxManifestBytes, errs.ErrCorrupt)
		}
		b, err := r.readMember(mm)
		if err != nil {
			return nil, err
		}
		if r.manifest, err = parseManifest(f.Name()+"/"+mm.name, b); err != nil {
			return nil, err
		}
	}
	for i, d := range r.desc.disks {
		mi, ok := r.byName[d.href]
		if !ok {
			if j := slices.IndexFunc(ms, func(m member) bool { return m.name == d.href }); j >= 0 {
				return nil, fmt.Errorf("ova %s: disk %d (%s): member %s is not a regular file (tar type %q): %w",
					f.Name(), i, r.desc.vm.Disks[i].Name, d.href, ms[j].typ, errs.ErrUnimplemented)
			}
			return nil, fmt.Errorf("ova %s: disk %d (%s): member %s is missing: %w", f.Name(), i, r.desc.vm.Disks[i].Name, d.href, errs.ErrCorrupt)
		}
		if d.fileSize >= 0 && d.fileSize != ms[mi].size {
			return nil, fmt.Errorf("ova %s: disk %d: member %s holds %d bytes but the descriptor's ovf:size says %d: %w",
				f.Name(), i, d.href, ms[mi].size, d.fileSize, errs.ErrCorrupt)
		}
		r.diskMem = append(r.diskMem, mi)
		r.formats = append(r.formats, r.memberFormat(i))
	}
	return r, nil
}

// memberFormat names the format of disk i's member: the probe result, or
// how the descriptor says it is packed when ferry cannot read it.
func (r *reader) memberFormat(i int) string {
	d := r.desc.disks[i]
	switch {
	case d.compression != "" && d.compression != "identity":
		return d.compression
	case d.chunkSize != "":
		return "chunked"
	case r.reg == nil:
		return ""
	}
	ft, err := r.reg.Probe(r.section(r.diskMem[i]))
	if err != nil {
		return ""
	}
	return ft.Name
}

func (r *reader) readMember(m member) ([]byte, error) {
	b := make([]byte, m.size)
	if n, err := r.f.ReadAt(b, m.off); n != len(b) {
		return nil, fmt.Errorf("ova %s: read member %s: %v: %w", r.f.Name(), m.name, err, errs.ErrCorrupt)
	}
	return b, nil
}

// section is member mi as a File named "<ova>/<member>".
func (r *reader) section(mi int) *sectionFile {
	m := r.members[mi]
	return &sectionFile{f: r.f, off: m.off, size: m.size, name: r.f.Name() + "/" + m.name}
}

func (r *reader) VM() core.VMSpec { return cloneVM(r.desc.vm) }

func cloneVM(vm core.VMSpec) core.VMSpec {
	vm.Disks = slices.Clone(vm.Disks)
	vm.NICs = slices.Clone(vm.NICs)
	return vm
}

// OpenDisk opens disk i's member through the registry. The image's size
// must be the descriptor's capacity (rounded up to a sector at most).
func (r *reader) OpenDisk(ctx context.Context, i int) (disk.Image, error) {
	if i < 0 || i >= len(r.desc.disks) {
		return nil, fmt.Errorf("ova %s: disk %d: the archive has %d disks: %w", r.f.Name(), i, len(r.desc.disks), errs.ErrNotFound)
	}
	if r.reg == nil {
		return nil, fmt.Errorf("ova %s: no disk registry to open the disk members with: %w", r.f.Name(), errs.ErrInvalidArgument)
	}
	d := r.desc.disks[i]
	if err := r.readable(i); err != nil {
		return nil, err
	}
	sf := r.section(r.diskMem[i])
	ft, err := r.reg.Probe(sf)
	if err != nil {
		return nil, fmt.Errorf("ova %s: disk %d: %w", r.f.Name(), i, err)
	}
	if d.isVMDK() && ft.Name != "vmdk" {
		return nil, fmt.Errorf("ova %s: disk %d: member %s is not a VMDK, as the descriptor says (it probes as %s): %w",
			r.f.Name(), i, d.href, ft.Name, errs.ErrCorrupt)
	}
	img, err := ft.Open(ctx, sf, &disk.OpenOptions{})
	if err != nil {
		return nil, fmt.Errorf("ova %s: disk %d: %w", r.f.Name(), i, err)
	}
	if err := checkCapacity(r.f.Name(), i, d, img.Size()); err != nil {
		img.Close()
		return nil, err
	}
	return img, nil
}

// readable refuses the packings ferry does not read.
func (r *reader) readable(i int) error {
	d := r.desc.disks[i]
	if d.compression != "" && d.compression != "identity" {
		return fmt.Errorf("ova %s: disk %d: member %s is %s-compressed (ovf:compression): %w", r.f.Name(), i, d.href, d.compression, errs.ErrUnimplemented)
	}
	if d.chunkSize != "" {
		return fmt.Errorf("ova %s: disk %d: file %s is split into chunks (ovf:chunkSize): %w", r.f.Name(), i, d.href, errs.ErrUnimplemented)
	}
	return nil
}

// checkCapacity compares a disk's virtual size with the descriptor's
// capacity; a writer may round the capacity up to a whole sector.
func checkCapacity(name string, i int, d diskRef, size int64) error {
	if size < d.capacity || size > (d.capacity+511)&^511 {
		return fmt.Errorf("ova %s: disk %d: member %s holds a %d-byte disk but the descriptor's capacity is %d bytes: %w",
			name, i, d.href, size, d.capacity, errs.ErrCorrupt)
	}
	return nil
}

// Verify hashes every member and compares it with the manifest. Members
// are hashed in parallel; the first failure in archive order is returned.
func (r *reader) Verify(ctx context.Context) error {
	if r.manifest == nil {
		return nil
	}
	mfName := r.members[r.mf].name
	for _, n := range r.manifest.order {
		if _, ok := r.byName[n]; !ok {
			return fmt.Errorf("ova %s: manifest %s lists %s, which the archive does not hold: %w", r.f.Name(), mfName, n, errs.ErrCorrupt)
		}
	}
	var todo []int
	for i, m := range r.members {
		if !m.regular() || i == r.mf || i == r.cert {
			continue
		}
		if _, ok := r.manifest.entries[m.name]; !ok {
			return fmt.Errorf("ova %s: member %s is not in the manifest %s: %w", r.f.Name(), m.name, mfName, errs.ErrCorrupt)
		}
		todo = append(todo, i)
	}
	results := make([]error, len(todo))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for k, mi := range todo {
		g.Go(func() error {
			results[k] = r.verifyMember(gctx, mfName, mi)
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, err := range results {
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *reader) verifyMember(ctx context.Context, mfName string, mi int) error {
	m := r.members[mi]
	d := newDigests(r.manifest.entries[m.name].alg)
	buf := make([]byte, min(m.size, 1<<20))
	for off := int64(0); off < m.size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), m.size-off)
		if k, err := r.f.ReadAt(buf[:n], m.off+off); int64(k) != n {
			return fmt.Errorf("ova %s: read member %s at %d: %v: %w", r.f.Name(), m.name, off, err, errs.ErrCorrupt)
		}
		d.Write(buf[:n])
		off += n
	}
	return r.manifest.check(mfName, m.name, r.f.Name(), d)
}

func (r *reader) Info() archive.Info {
	vm := r.VM()
	info := archive.Info{Format: "ova", VM: vm}
	for i, d := range r.desc.disks {
		info.Disks = append(info.Disks, archive.DiskInfo{
			Index:       i,
			Name:        vm.Disks[i].Name,
			Member:      d.href,
			Format:      r.formats[i],
			VirtualSize: d.capacity,
			StoredSize:  r.members[r.diskMem[i]].size,
		})
	}
	var names []string
	for _, m := range r.members {
		names = append(names, m.name)
	}
	extra := map[string]any{
		"ovf":       r.members[r.ovf].name,
		"ovf-first": r.ovfFirst,
		"manifest":  "none",
		"members":   names,
	}
	if !r.ovfFirst {
		extra["note"] = "the .ovf descriptor is not the archive's first member, as DSP0243 requires; the archive cannot be read as a stream"
	}
	if r.manifest != nil {
		extra["manifest"] = strings.ToLower(strings.Join(r.manifest.algs(), ","))
		extra["manifest-member"] = r.members[r.mf].name
	}
	if r.cert >= 0 {
		extra["certificate"] = r.members[r.cert].name + " (not verified)"
	}
	info.Extra = extra
	return info
}

func (r *reader) Close() error { return r.f.Close() }

// sectionFile is a member's bytes as a disk.File. Closing it does nothing:
// the archive's file belongs to the reader.
type sectionFile struct {
	f         disk.File
	off, size int64
	name      string
}

func (s *sectionFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d: %w", s.name, off, errs.ErrInvalidArgument)
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-off))
	k, err := s.f.ReadAt(p[:n], s.off+off)
	if k == n {
		if n < len(p) {
			return k, io.EOF
		}
		return k, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}

func (s *sectionFile) Close() error { return nil }
func (s *sectionFile) Name() string { return s.name }
func (s *sectionFile) Size() int64  { return s.size }
