package ova

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
)

// createOptions documents the keys Create accepts.
func createOptions() []disk.Option {
	return []disk.Option{
		{Key: "manifest", Default: "sha256", Help: "digest algorithm of the manifest: sha256, or sha1 for old ESX hosts that accept nothing else"},
		{Key: "nic_type", Default: "vmxnet3", Help: "network adapter model the descriptor asks for: vmxnet3 or e1000"},
	}
}

// writeConfig is the parsed -o options.
type writeConfig struct {
	alg     string
	nicType string
}

func parseWriteOptions(o map[string]string) (writeConfig, error) {
	f := &disk.Format{Name: "ova", Options: createOptions()}
	if err := f.CheckOptions(&disk.CreateOptions{Options: o}); err != nil {
		return writeConfig{}, err
	}
	var c writeConfig
	switch v := strings.ToLower(o["manifest"]); v {
	case "", "sha256":
		c.alg = algSHA256
	case "sha1":
		c.alg = algSHA1
	default:
		return c, fmt.Errorf("ova: manifest %q: known: sha256, sha1: %w", o["manifest"], errs.ErrInvalidArgument)
	}
	switch v := strings.ToLower(o["nic_type"]); v {
	case "", "vmxnet3":
		c.nicType = "VmxNet3"
	case "e1000":
		c.nicType = "E1000"
	default:
		return c, fmt.Errorf("ova: nic_type %q: known: vmxnet3, e1000: %w", o["nic_type"], errs.ErrInvalidArgument)
	}
	return c, nil
}

// memberBase turns a VM name into the base of member file names: letters,
// digits, '.', '_' and '-' only, at most 64 bytes, so that every member
// name fits a ustar header.
func memberBase(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := strings.TrimLeft(b.String(), ".-")
	if len(s) > 64 {
		s = s[:64]
	}
	if s == "" {
		s = "vm"
	}
	return s
}

// makePlan checks vm and fills the defaults the descriptor needs.
func makePlan(vm core.VMSpec, nicType string) (*ovfPlan, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("ova: %s: %w", fmt.Sprintf(format, a...), errs.ErrInvalidArgument)
	}
	vm.Disks = append([]core.DiskSpec(nil), vm.Disks...)
	vm.NICs = append([]core.NICSpec(nil), vm.NICs...)
	vm.Name = strings.TrimSpace(vm.Name)
	if vm.Name == "" {
		vm.Name = "vm"
	}
	switch {
	case vm.CPUs < 0 || vm.CPUs > maxCPUs:
		return nil, bad("%d CPUs: want 1 to %d", vm.CPUs, maxCPUs)
	case vm.CPUs == 0:
		vm.CPUs = 1
	}
	switch {
	case vm.MemoryBytes < 0 || vm.MemoryBytes > maxMemoryBytes:
		return nil, bad("memory of %d bytes: want 1 MiB to %d bytes", vm.MemoryBytes, int64(maxMemoryBytes))
	case vm.MemoryBytes == 0:
		vm.MemoryBytes = 1 << 30
	}
	vm.MemoryBytes = (vm.MemoryBytes + 1<<20 - 1) &^ (1<<20 - 1)
	switch vm.Firmware {
	case "", core.BIOS:
		vm.Firmware = core.BIOS
	case core.UEFI:
	default:
		return nil, bad("firmware %q: known: %s, %s", vm.Firmware, core.BIOS, core.UEFI)
	}
	if len(vm.Disks) > scsiUnits*maxControllers {
		return nil, bad("%d disks: at most %d fit %d SCSI controllers", len(vm.Disks), scsiUnits*maxControllers, maxControllers)
	}
	base := memberBase(vm.Name)
	p := &ovfPlan{vm: vm, nicType: nicType}
	for i := range vm.Disks {
		d := &vm.Disks[i]
		if d.Size < 0 || d.Size > maxDiskBytes {
			return nil, bad("disk %d: size %d: want 0 to %d bytes", i, d.Size, int64(maxDiskBytes))
		}
		d.Size = (d.Size + 511) &^ 511
		if strings.TrimSpace(d.Name) == "" {
			d.Name = fmt.Sprintf("Hard disk %d", i+1)
		}
		p.hrefs = append(p.hrefs, fmt.Sprintf("%s-disk%d.vmdk", base, i+1))
	}
	for i := range vm.NICs {
		n := &vm.NICs[i]
		if strings.TrimSpace(n.Network) == "" {
			n.Network = "VM Network"
		}
		if strings.TrimSpace(n.Name) == "" {
			n.Name = fmt.Sprintf("Network adapter %d", i+1)
		}
	}
	p.slots = planSlots(vm.Disks)
	p.vm = vm
	return p, nil
}

// needsPAX reports whether the VMDK of a disk of this virtual size might
// outgrow a ustar header's 8 GiB: a streamOptimized grain never takes
// more than its 64 KiB plus a sector, and grain tables add 2.5 KiB per
// 32 MiB, well inside size/64, plus fixed metadata well inside 16 MiB.
func needsPAX(virtualSize int64) bool {
	return virtualSize+virtualSize/64+16<<20 > maxUstarSize
}

// writer writes an OVA. Members: the descriptor, the manifest, then the
// disks. On a FileTarget the descriptor and manifest slots are reserved up
// front and filled at Commit, and each disk's header is written once its
// size is known; on a plain Target the disks are staged in temporary files
// and the whole archive is written at Commit.
type writer struct {
	t       disk.Target
	ft      disk.FileTarget // nil for a plain Target
	reg     *disk.Registry
	plan    *ovfPlan
	alg     string
	workers int
	mtime   int64
	ovfName string
	mfName  string

	// FileTarget layout
	ovfSlot int64 // bytes reserved for the descriptor
	ovfOff  int64 // where the descriptor's data starts
	mfOff   int64
	mfLen   int64
	pos     int64 // where the next disk's header goes

	mu        sync.Mutex
	disks     []diskOut
	cur       *diskWriter
	committed bool
	closed    bool
	err       error // sticky: the archive cannot be finished
}

// diskOut is a finished disk member.
type diskOut struct {
	name string
	size int64
	sum  []byte
	tmp  *os.File // plain Target: the staged VMDK
}

var _ archive.Writer = (*writer)(nil)

// fileTarget returns t as a FileTarget when it is one that can really
// seek: an *os.File that is a pipe or a terminal is not.
func fileTarget(t disk.Target) (disk.FileTarget, bool) {
	ft, ok := t.(disk.FileTarget)
	if !ok {
		return nil, false
	}
	if f, isOS := t.(*os.File); isOS {
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			return nil, false
		}
	}
	return ft, true
}

func create(ctx context.Context, t disk.Target, vm core.VMSpec, opts *archive.CreateOptions) (archive.Writer, error) {
	if opts == nil || opts.Disks == nil {
		return nil, fmt.Errorf("ova: no disk registry to create the VMDK members with: %w", errs.ErrInvalidArgument)
	}
	cfg, err := parseWriteOptions(opts.Options)
	if err != nil {
		return nil, err
	}
	plan, err := makePlan(vm, cfg.nicType)
	if err != nil {
		return nil, err
	}
	base := memberBase(plan.vm.Name)
	w := &writer{
		t: t, reg: opts.Disks, plan: plan, alg: cfg.alg, workers: opts.Workers,
		mtime:   time.Now().Unix(),
		ovfName: base + ".ovf",
		mfName:  base + ".mf",
	}
	if ft, ok := fileTarget(t); ok {
		w.ft = ft
		if err := w.layout(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// layout reserves the descriptor and manifest at the front of a
// FileTarget and writes their headers. The descriptor's slot is the
// descriptor rendered with the longest possible file sizes, so the final
// one always fits.
func (w *writer) layout() error {
	maxSizes := make([]int64, len(w.plan.vm.Disks))
	for i := range maxSizes {
		maxSizes[i] = math.MaxInt64
	}
	w.ovfSlot = roundBlock(int64(len(w.plan.descriptorXML(maxSizes))))
	w.ovfOff = blockSize
	w.mfOff = w.ovfOff + w.ovfSlot + blockSize
	w.mfLen = int64(len(w.manifest(nil, nil)))
	w.pos = w.mfOff + roundBlock(w.mfLen)
	ovfHdr, err := memberHeader(w.ovfName, w.ovfSlot, w.mtime, false)
	if err != nil {
		return err
	}
	mfHdr, err := memberHeader(w.mfName, w.mfLen, w.mtime, false)
	if err != nil {
		return err
	}
	if err := w.writeAt(ovfHdr, 0); err != nil {
		return err
	}
	return w.writeAt(mfHdr, w.mfOff-blockSize)
}

// manifest renders the manifest: the descriptor's line, then the disks'.
// Nil sums render as zeros, which gives the manifest's exact length.
func (w *writer) manifest(ovfSum []byte, disks []diskOut) string {
	zero := make([]byte, digestLen(w.alg))
	var b strings.Builder
	b.WriteString(manifestLine(w.alg, w.ovfName, cmpOr(ovfSum, zero)))
	for i, href := range w.plan.hrefs {
		var sum []byte
		if i < len(disks) {
			sum = disks[i].sum
		}
		b.WriteString(manifestLine(w.alg, href, cmpOr(sum, zero)))
	}
	return b.String()
}

func cmpOr(a, b []byte) []byte {
	if a != nil {
		return a
	}
	return b
}

func (w *writer) writeAt(p []byte, off int64) error {
	n, err := w.ft.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("ova %s: write at %d: %w", w.ft.Name(), off, err)
	}
	return nil
}

func (w *writer) usable() error {
	switch {
	case w.err != nil:
		return w.err
	case w.committed || w.closed:
		return fmt.Errorf("ova: archive writer already committed or closed: %w", errs.ErrFailedPrecondition)
	}
	return nil
}

// NextDisk starts the next disk's member: a streamOptimized VMDK created
// through the registry, whose bytes are hashed and counted on their way
// to the archive.
func (w *writer) NextDisk(ctx context.Context) (disk.Writer, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return nil, err
	}
	if w.cur != nil {
		return nil, fmt.Errorf("ova: disk %d is still being written; commit it before the next: %w", w.cur.idx, errs.ErrFailedPrecondition)
	}
	i := len(w.disks)
	if i >= len(w.plan.vm.Disks) {
		return nil, fmt.Errorf("ova: all %d disks of the VM are written: %w", len(w.plan.vm.Disks), errs.ErrFailedPrecondition)
	}
	d := w.plan.vm.Disks[i]
	mt := &memberTarget{name: w.plan.hrefs[i], h: newHash(w.alg)}
	if w.ft != nil {
		mt.ft, mt.pax, mt.hdrOff = w.ft, needsPAX(d.Size), w.pos
		mt.base = w.pos + headerLen(mt.pax)
	} else {
		f, err := os.CreateTemp("", "ferry-ova-*.vmdk")
		if err != nil {
			return nil, fmt.Errorf("ova: stage disk %d for a streamed archive: %w", i, err)
		}
		// unlinked at once: nothing is left behind whatever happens
		os.Remove(f.Name())
		mt.tmp = f
	}
	dw, err := w.reg.CreateTo(ctx, mt, "vmdk", d.Size, &disk.CreateOptions{
		Options: map[string]string{"subformat": "streamOptimized"},
		Workers: w.workers,
	})
	if err == nil && dw.Size() != d.Size {
		dw.Close()
		err = fmt.Errorf("the VMDK writer made a %d-byte disk for a %d-byte one: %w", dw.Size(), d.Size, errs.ErrInvalidArgument)
	}
	if err != nil {
		if mt.tmp != nil {
			mt.tmp.Close()
		}
		return nil, fmt.Errorf("ova: disk %d (%s): %w", i, d.Name, err)
	}
	w.cur = &diskWriter{Writer: dw, w: w, idx: i, mt: mt}
	return w.cur, nil
}

// finishDisk records a committed disk: on a FileTarget its padding and
// header are written now that its size is known.
func (w *writer) finishDisk(d *diskWriter) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur != d {
		return fmt.Errorf("ova: disk %d is not the one being written: %w", d.idx, errs.ErrFailedPrecondition)
	}
	w.cur = nil
	mt := d.mt
	out := diskOut{name: mt.name, size: mt.n, sum: mt.h.Sum(nil), tmp: mt.tmp}
	if w.ft != nil {
		if !mt.pax && mt.n > maxUstarSize {
			w.err = fmt.Errorf("ova %s: member %s grew to %d bytes, past the ustar limit its header was laid out for: %w",
				w.ft.Name(), mt.name, mt.n, errs.ErrInvalidArgument)
			return w.err
		}
		hdr, err := memberHeader(mt.name, mt.n, w.mtime, mt.pax)
		if err == nil {
			err = w.writeAt(make([]byte, roundBlock(mt.n)-mt.n), mt.base+mt.n)
		}
		if err == nil {
			err = w.writeAt(hdr, mt.hdrOff)
		}
		if err != nil {
			w.err = err
			return err
		}
		w.pos = mt.base + roundBlock(mt.n)
	}
	w.disks = append(w.disks, out)
	return nil
}

// abandonDisk marks the archive unfinishable after a disk was closed
// without Commit or failed to commit.
func (w *writer) abandonDisk(d *diskWriter, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur != d {
		return
	}
	w.cur = nil
	if d.mt.tmp != nil {
		d.mt.tmp.Close()
	}
	if w.err == nil {
		if cause == nil {
			cause = fmt.Errorf("closed without commit: %w", errs.ErrFailedPrecondition)
		}
		w.err = fmt.Errorf("ova: disk %d (%s) was not finished: %w", d.idx, w.plan.vm.Disks[d.idx].Name, cause)
	}
}

// Commit writes the descriptor, with the disks' sizes, and the manifest.
func (w *writer) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	if w.cur != nil {
		return fmt.Errorf("ova: disk %d is still being written: %w", w.cur.idx, errs.ErrFailedPrecondition)
	}
	if len(w.disks) != len(w.plan.vm.Disks) {
		return fmt.Errorf("ova: %d of the VM's %d disks were written: %w", len(w.disks), len(w.plan.vm.Disks), errs.ErrFailedPrecondition)
	}
	sizes := make([]int64, len(w.disks))
	for i, d := range w.disks {
		sizes[i] = d.size
	}
	desc := w.plan.descriptorXML(sizes)
	var err error
	if w.ft != nil {
		err = w.commitFile(desc)
	} else {
		err = w.commitStream(ctx, desc)
	}
	if err != nil {
		w.err = err
		return err
	}
	w.committed = true
	w.closeTemps()
	return nil
}

func (w *writer) commitFile(desc []byte) error {
	if int64(len(desc)) > w.ovfSlot {
		return fmt.Errorf("ova %s: descriptor of %d bytes does not fit its %d-byte slot: %w", w.ft.Name(), len(desc), w.ovfSlot, errs.ErrInvalidArgument)
	}
	// Trailing white space after the root element is allowed XML; it
	// fills the slot so that the member's size is what was reserved.
	padded := append(desc, bytes.Repeat([]byte{' '}, int(w.ovfSlot)-len(desc))...)
	if len(padded) > len(desc) {
		padded[len(padded)-1] = '\n'
	}
	ovfSum := newHash(w.alg)
	ovfSum.Write(padded)
	mf := w.manifest(ovfSum.Sum(nil), w.disks)
	if int64(len(mf)) != w.mfLen {
		return fmt.Errorf("ova %s: manifest of %d bytes for a %d-byte slot: %w", w.ft.Name(), len(mf), w.mfLen, errs.ErrInvalidArgument)
	}
	if err := w.writeAt(padded, w.ovfOff); err != nil {
		return err
	}
	mfb := make([]byte, roundBlock(w.mfLen))
	copy(mfb, mf)
	if err := w.writeAt(mfb, w.mfOff); err != nil {
		return err
	}
	// end of archive: two zero blocks
	if err := w.writeAt(make([]byte, 2*blockSize), w.pos); err != nil {
		return err
	}
	if err := w.ft.Truncate(w.pos + 2*blockSize); err != nil {
		return fmt.Errorf("ova %s: truncate: %w", w.ft.Name(), err)
	}
	return nil
}

func (w *writer) commitStream(ctx context.Context, desc []byte) error {
	ovfSum := newHash(w.alg)
	ovfSum.Write(desc)
	mf := w.manifest(ovfSum.Sum(nil), w.disks)
	bw := bufio.NewWriterSize(w.t, 1<<20)
	put := func(name string, data []byte) error {
		hdr, err := memberHeader(name, int64(len(data)), w.mtime, false)
		if err != nil {
			return err
		}
		bw.Write(hdr)
		bw.Write(data)
		_, err = bw.Write(make([]byte, roundBlock(int64(len(data)))-int64(len(data))))
		return err
	}
	if err := put(w.ovfName, desc); err != nil {
		return fmt.Errorf("ova: write: %w", err)
	}
	if err := put(w.mfName, []byte(mf)); err != nil {
		return fmt.Errorf("ova: write: %w", err)
	}
	buf := make([]byte, 1<<20)
	for _, d := range w.disks {
		hdr, err := memberHeader(d.name, d.size, w.mtime, d.size > maxUstarSize)
		if err != nil {
			return err
		}
		if _, err := bw.Write(hdr); err != nil {
			return fmt.Errorf("ova: write: %w", err)
		}
		for off := int64(0); off < d.size; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := d.tmp.ReadAt(buf[:min(int64(len(buf)), d.size-off)], off)
			if n == 0 && err != nil {
				return fmt.Errorf("ova: read staged disk %s at %d: %w", d.name, off, err)
			}
			if _, err := bw.Write(buf[:n]); err != nil {
				return fmt.Errorf("ova: write: %w", err)
			}
			off += int64(n)
		}
		if _, err := bw.Write(make([]byte, roundBlock(d.size)-d.size)); err != nil {
			return fmt.Errorf("ova: write: %w", err)
		}
	}
	bw.Write(make([]byte, 2*blockSize))
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("ova: write: %w", err)
	}
	return nil
}

func (w *writer) closeTemps() {
	for _, d := range w.disks {
		if d.tmp != nil {
			d.tmp.Close()
		}
	}
}

// Close abandons an uncommitted archive: the disk being written is
// aborted and staged files are released.
func (w *writer) Close() error {
	w.mu.Lock()
	cur := w.cur
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	var err error
	if cur != nil {
		err = cur.Writer.Close()
		w.abandonDisk(cur, nil)
	}
	w.mu.Lock()
	w.closeTemps()
	w.mu.Unlock()
	return err
}

// diskWriter is the registry's VMDK writer for one disk; its Commit also
// finishes the disk's member.
type diskWriter struct {
	disk.Writer
	w   *writer
	idx int
	mt  *memberTarget

	once sync.Once
	err  error
}

func (d *diskWriter) Commit(ctx context.Context) error {
	if err := d.Writer.Commit(ctx); err != nil {
		d.w.abandonDisk(d, err)
		return fmt.Errorf("ova: disk %d: %w", d.idx, err)
	}
	return d.w.finishDisk(d)
}

func (d *diskWriter) Close() error {
	d.once.Do(func() {
		d.err = d.Writer.Close()
		d.w.abandonDisk(d, nil)
	})
	return d.err
}

// memberTarget receives a disk member's bytes, front to back, hashing and
// counting them: on a FileTarget it writes them after the member's header
// slot; otherwise to a staging file. It is a plain Target (Write only), so
// the VMDK writer appends to it.
type memberTarget struct {
	name string
	h    hash.Hash
	n    int64

	ft     disk.FileTarget
	hdrOff int64
	base   int64
	pax    bool

	tmp *os.File
}

// Name is the member's name, which the VMDK descriptor records as its
// extent file.
func (m *memberTarget) Name() string { return m.name }

func (m *memberTarget) Write(p []byte) (int, error) {
	var n int
	var err error
	if m.ft != nil {
		n, err = m.ft.WriteAt(p, m.base+m.n)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
	} else {
		n, err = m.tmp.Write(p)
	}
	m.h.Write(p[:n])
	m.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("ova: member %s: %w", m.name, err)
	}
	return n, nil
}
