// Package providertest is the conformance suite every provider (xen, aws,
// fakes) must pass: one Run from the provider's own tests.
//
//	func TestConformance(t *testing.T) {
//		providertest.Run(t, func(t *testing.T) provider.Provider { return open(t) })
//	}
//
// The suite checks the contract of package provider, in order, on one
// connected site:
//
//   - Info: the kind and name are set; every capability reported is backed
//     by its interface, and every optional interface implemented is
//     reported.
//   - Import (Importer): a VM is imported from disk images of known content
//     and read back: ListVMs reports it with its name, CPUs, memory,
//     firmware, disks (sizes, positions) and NICs, and (DiskExporter) each
//     disk opens and reads back as written. Providers without an Importer
//     name an existing VM and its disks' content with WithExistingVM.
//   - ListVMs: every VM has an ID, a known power state and the site's
//     name; filters by name, state and ID work; an error from the callback
//     stops the listing and is returned.
//   - Power: start, start again (a no-op), stop, stop again; the state
//     reported follows (polled until PowerTimeout).
//   - Watch (Watcher): a power change is seen.
//   - Snapshot (Snapshotter, DiskExporter): a snapshot's disks read back as
//     the VM's; with ChangedBlocks, the changes between two snapshots read
//     as the later one wherever they report data; a deleted snapshot's
//     disks are gone, and deleting it again is NotFound; with
//     SnapshotFinder, a snapshot is found again by its options (not by
//     others', not once deleted).
//   - NotFound: unknown VM, snapshot and disk IDs give errs.NotFound.
//   - Cancelled: a cancelled context stops every call with errs.Canceled,
//     and an import cancelled half way leaves no VM behind.
//   - Inventory, Console: listings work; a console log is text or
//     errs.Unimplemented.
//
// VMs the suite creates are removed at the end with the Cleanup fixture,
// or the provider's DeleteVM(ctx, id) method when it has one.
package providertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
)

// Options tune the suite; set them with Fixtures.
type Options struct {
	// Spec is the VM the suite imports, Content its disks' content (one
	// pattern per Spec.Disks entry, of the same size).
	Spec    core.VMSpec
	Content []*synth.Pattern
	// Import is passed to ImportVM (storage, network mapping).
	Import provider.ImportOptions
	// VM is an existing VM to use instead of importing one; Content is
	// then its disks' content, or nil not to check it.
	VM core.VMID
	// UnknownVM, UnknownSnapshot and UnknownDisk are well-formed IDs that
	// name nothing on the site.
	UnknownVM       core.VMID
	UnknownSnapshot core.SnapshotID
	UnknownDisk     core.DiskID
	// Cleanup removes a VM the suite created. Default: the provider's
	// DeleteVM(ctx, id) method, if it has one.
	Cleanup func(ctx context.Context, p provider.Provider, id core.VMID) error
	// PowerTimeout bounds the wait for a power state. Default 2 minutes.
	PowerTimeout time.Duration
	// SkipPower skips power operations (and the Watch test, which needs
	// one).
	SkipPower bool
}

// Fixture sets Options.
type Fixture func(*Options)

// WithVM imports spec with disks of the given content instead of the
// default VM.
func WithVM(spec core.VMSpec, content ...*synth.Pattern) Fixture {
	return func(o *Options) { o.Spec, o.Content = spec, content }
}

// WithExistingVM uses an existing VM; content (optional) is what its
// disks hold, in order.
func WithExistingVM(id core.VMID, content ...*synth.Pattern) Fixture {
	return func(o *Options) { o.VM, o.Content = id, content }
}

// WithImportOptions passes o to ImportVM.
func WithImportOptions(io provider.ImportOptions) Fixture {
	return func(o *Options) { o.Import = io }
}

// WithUnknownIDs sets the IDs that name nothing.
func WithUnknownIDs(vm core.VMID, snap core.SnapshotID, d core.DiskID) Fixture {
	return func(o *Options) { o.UnknownVM, o.UnknownSnapshot, o.UnknownDisk = vm, snap, d }
}

// WithCleanup sets how the suite removes the VMs it created.
func WithCleanup(fn func(ctx context.Context, p provider.Provider, id core.VMID) error) Fixture {
	return func(o *Options) { o.Cleanup = fn }
}

// WithPowerTimeout bounds the wait for power states.
func WithPowerTimeout(d time.Duration) Fixture { return func(o *Options) { o.PowerTimeout = d } }

// SkipPower skips the power cycle and the Watch test.
func SkipPower() Fixture { return func(o *Options) { o.SkipPower = true } }

// DefaultSpec is the VM imported unless WithVM says otherwise: BIOS, one
// CPU, 256 MiB, a bootable 4 MiB disk of mixed content and a sparse 3 MiB
// one, one NIC on the default network.
func DefaultSpec() (core.VMSpec, []*synth.Pattern) {
	d0 := &synth.Pattern{Name: "ferry-conformance-disk0", Size: 4<<20 + 64<<10, Seed: 11, Data: []disk.Extent{
		{Off: 0, Len: 1 << 20}, {Off: 1<<20 + 512, Len: 4096}, {Off: 3 << 20, Len: 1<<20 + 64<<10},
	}}
	d1 := &synth.Pattern{Name: "ferry-conformance-disk1", Size: 3 << 20, Seed: 12, Data: []disk.Extent{
		{Off: 2<<20 - 512, Len: 1024},
	}}
	spec := core.VMSpec{
		Name: "ferry-conformance", Description: "created by ferry's provider conformance suite",
		CPUs: 1, MemoryBytes: 256 << 20, Firmware: core.BIOS, OSType: "linux",
		Disks: []core.DiskSpec{
			{Name: d0.Name, Size: d0.Size, Bootable: true, Position: 0},
			{Name: d1.Name, Size: d1.Size, Position: 1},
		},
		NICs: []core.NICSpec{{Name: "eth0", MAC: "02:fe:00:00:00:01"}},
	}
	return spec, []*synth.Pattern{d0, d1}
}

type vmDeleter interface {
	DeleteVM(ctx context.Context, id core.VMID) error
}

// suite is one run's state.
type suite struct {
	o    Options
	p    provider.Provider
	info provider.Info
	vm   core.VMID // the VM under test
	// created lists VMs to remove at the end.
	created []core.VMID
}

// Run runs the suite against the provider newProvider returns (it is
// closed at the end).
func Run(t *testing.T, newProvider func(t *testing.T) provider.Provider, fixtures ...Fixture) {
	o := Options{
		UnknownVM:       "00000000-0000-4000-8000-00000000fe01",
		UnknownSnapshot: "00000000-0000-4000-8000-00000000fe02",
		UnknownDisk:     "00000000-0000-4000-8000-00000000fe03",
		PowerTimeout:    2 * time.Minute,
	}
	o.Spec, o.Content = DefaultSpec()
	for _, f := range fixtures {
		f(&o)
	}
	p := newProvider(t)
	s := &suite{o: o, p: p, info: p.Info()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, id := range s.created {
			if err := s.cleanup(ctx, id); err != nil && !errs.Is(err, errs.NotFound) {
				t.Errorf("cleanup of VM %s: %v", id, err)
			}
		}
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	t.Run("Info", s.testInfo)
	if !t.Run("Import", s.testImport) || s.vm == "" {
		t.Fatal("no VM to test with: Import failed")
	}
	t.Run("ListVMs", s.testListVMs)
	t.Run("Power", s.testPower)
	t.Run("Watch", s.testWatch)
	t.Run("Snapshot", s.testSnapshot)
	t.Run("NotFound", s.testNotFound)
	t.Run("Cancelled", s.testCancelled)
	t.Run("Inventory", s.testInventory)
	t.Run("Console", s.testConsole)
}

func (s *suite) cleanup(ctx context.Context, id core.VMID) error {
	if s.o.Cleanup != nil {
		return s.o.Cleanup(ctx, s.p, id)
	}
	if d, ok := s.p.(vmDeleter); ok {
		return d.DeleteVM(ctx, id)
	}
	return nil
}

func (s *suite) testInfo(t *testing.T) {
	if s.info.Kind == "" || s.info.Name == "" {
		t.Errorf("info %+v: kind and name must be set", s.info)
	}
	c := s.info.Capabilities
	_, snap := s.p.(provider.Snapshotter)
	_, exp := s.p.(provider.DiskExporter)
	_, imp := s.p.(provider.Importer)
	_, watch := s.p.(provider.Watcher)
	_, cons := s.p.(provider.Consoler)
	_, inv := s.p.(provider.Inventory)
	for _, chk := range []struct {
		name      string
		cap, impl bool
	}{
		{"Snapshot/Snapshotter", c.Snapshot, snap},
		{"ExportDisk/DiskExporter", c.ExportDisk, exp},
		{"ImportVM/Importer", c.ImportVM, imp},
		{"Events/Watcher", c.Events, watch},
		{"ConsoleLog/Consoler", c.ConsoleLog, cons},
		{"StorageListing/Inventory", c.StorageListing, inv},
	} {
		if chk.cap != chk.impl {
			t.Errorf("capability %s: reported %v, implemented %v", chk.name, chk.cap, chk.impl)
		}
	}
	if c.ChangedBlocks && !exp {
		t.Error("ChangedBlocks reported without a DiskExporter")
	}
}

// vmByID returns the VM as ListVMs reports it.
func (s *suite) vmByID(ctx context.Context, t *testing.T, id core.VMID) (core.VM, bool) {
	t.Helper()
	var found []core.VM
	err := s.p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id}}, func(vm core.VM) error {
		found = append(found, vm)
		return nil
	})
	if err != nil {
		t.Fatalf("ListVMs(ID %s): %v", id, err)
	}
	if len(found) > 1 {
		t.Fatalf("ListVMs(ID %s): %d VMs", id, len(found))
	}
	if len(found) == 0 {
		return core.VM{}, false
	}
	return found[0], true
}

func (s *suite) images() []disk.Image {
	out := make([]disk.Image, len(s.o.Content))
	for i, pt := range s.o.Content {
		out[i] = synth.Image{P: pt}
	}
	return out
}

func (s *suite) testImport(t *testing.T) {
	ctx := t.Context()
	if s.o.VM != "" {
		s.vm = s.o.VM
		return
	}
	imp, ok := s.p.(provider.Importer)
	if !ok {
		t.Fatal("the provider has no Importer: name a VM with WithExistingVM")
	}
	if len(s.o.Content) != len(s.o.Spec.Disks) {
		t.Fatalf("fixture: %d disk contents for %d disks", len(s.o.Content), len(s.o.Spec.Disks))
	}
	var ctr progress.Counter
	io := s.o.Import
	io.Progress = &ctr
	id, err := imp.ImportVM(ctx, s.o.Spec, s.images(), &io)
	if err != nil {
		t.Fatalf("ImportVM: %v", err)
	}
	s.vm = id
	s.created = append(s.created, id)
	var total int64
	for _, pt := range s.o.Content {
		total += pt.Size
	}
	if st := ctr.Snapshot(); st.Total != total || st.Done != total {
		t.Errorf("import progress %+v, want %d of %d bytes", st, total, total)
	}

	// Read it back.
	vm, ok := s.vmByID(ctx, t, id)
	if !ok {
		t.Fatalf("imported VM %s is not listed", id)
	}
	spec := s.o.Spec
	if vm.Name != spec.Name || vm.CPUs != spec.CPUs || vm.MemoryBytes != spec.MemoryBytes {
		t.Errorf("VM %+v: want name %q, %d CPUs, %d bytes", vm, spec.Name, spec.CPUs, spec.MemoryBytes)
	}
	if spec.Firmware != "" && vm.Firmware != spec.Firmware {
		t.Errorf("firmware %q, want %q", vm.Firmware, spec.Firmware)
	}
	if vm.PowerState != core.Halted {
		t.Errorf("imported VM is %s, want halted", vm.PowerState)
	}
	if len(vm.NICs) != len(spec.NICs) {
		t.Errorf("%d NICs, want %d", len(vm.NICs), len(spec.NICs))
	}
	for i, n := range spec.NICs {
		if i < len(vm.NICs) && n.MAC != "" && !strings.EqualFold(vm.NICs[i].MAC, n.MAC) {
			t.Errorf("NIC %d MAC %q, want %q", i, vm.NICs[i].MAC, n.MAC)
		}
	}
	if len(vm.Disks) != len(spec.Disks) {
		t.Fatalf("%d disks, want %d", len(vm.Disks), len(spec.Disks))
	}
	for i, d := range spec.Disks {
		got := vm.Disks[i]
		if got.ID == "" || got.Size < d.Size || got.Position != d.Position || got.Bootable != d.Bootable {
			t.Errorf("disk %d %+v, want %+v", i, got, d)
		}
	}
	if _, ok := s.p.(provider.DiskExporter); ok {
		s.checkDisks(t, vm.Disks, s.o.Content)
	}
}

// checkDisks opens each disk and compares it with its content.
func (s *suite) checkDisks(t *testing.T, disks []core.Disk, content []*synth.Pattern) {
	t.Helper()
	exp := s.p.(provider.DiskExporter)
	for i, d := range disks {
		if i >= len(content) || content[i] == nil {
			continue
		}
		img, err := exp.OpenDisk(t.Context(), d.ID, "")
		if err != nil {
			t.Fatalf("OpenDisk(%s): %v", d.ID, err)
		}
		res, err := disk.Compare(t.Context(), img, synth.Image{P: content[i]}, nil)
		img.Close()
		if err != nil {
			t.Fatalf("compare disk %d (%s): %v", i, d.ID, err)
		}
		if !res.Identical {
			t.Errorf("disk %d (%s) differs from what was written at byte %d", i, d.ID, res.Offset)
		}
	}
}

var powerStates = []core.PowerState{core.Running, core.Halted, core.Suspended, core.Paused, core.Pending, core.Unknown}

func (s *suite) testListVMs(t *testing.T) {
	ctx := t.Context()
	var all []core.VM
	if err := s.p.ListVMs(ctx, provider.Filter{}, func(vm core.VM) error { all = append(all, vm); return nil }); err != nil {
		t.Fatal(err)
	}
	var ours *core.VM
	ids := map[core.VMID]bool{}
	for i, vm := range all {
		if vm.ID == "" || !slices.Contains(powerStates, vm.PowerState) || vm.Site != s.info.Name {
			t.Errorf("VM %+v: want an ID, a known power state and site %q", vm, s.info.Name)
		}
		if ids[vm.ID] {
			t.Errorf("VM %s listed twice", vm.ID)
		}
		ids[vm.ID] = true
		if vm.ID == s.vm {
			ours = &all[i]
		}
	}
	if ours == nil {
		t.Fatalf("VM %s is not in the listing of %d VMs", s.vm, len(all))
	}
	count := func(f provider.Filter) (n int, hasOurs bool) {
		err := s.p.ListVMs(ctx, f, func(vm core.VM) error {
			n++
			hasOurs = hasOurs || vm.ID == s.vm
			if f.Name != "" && vm.Name != f.Name || f.PowerState != "" && vm.PowerState != f.PowerState {
				t.Errorf("filter %+v let through %s (%q, %s)", f, vm.ID, vm.Name, vm.PowerState)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("ListVMs(%+v): %v", f, err)
		}
		return n, hasOurs
	}
	if _, ok := count(provider.Filter{Name: ours.Name}); !ok {
		t.Error("filter by name misses the VM")
	}
	if _, ok := count(provider.Filter{PowerState: ours.PowerState}); !ok {
		t.Error("filter by power state misses the VM")
	}
	if n, _ := count(provider.Filter{Name: "ferry-no-such-vm-\x01"}); n != 0 {
		t.Errorf("filter by an unknown name: %d VMs", n)
	}
	if n, ok := count(provider.Filter{IDs: []core.VMID{s.vm, s.o.UnknownVM}}); n != 1 || !ok {
		t.Errorf("filter by IDs: %d VMs", n)
	}
	stop := errors.New("stop here")
	calls := 0
	err := s.p.ListVMs(ctx, provider.Filter{}, func(core.VM) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("callback error: ListVMs returned %v after %d calls", err, calls)
	}
}

// waitState polls until the VM reaches want.
func (s *suite) waitState(t *testing.T, want core.PowerState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), s.o.PowerTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		vm, ok := s.vmByID(ctx, t, s.vm)
		if !ok {
			t.Fatalf("VM %s vanished", s.vm)
		}
		if vm.PowerState == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("VM %s is %s after %v, want %s", s.vm, vm.PowerState, s.o.PowerTimeout, want)
		case <-tick.C:
		}
	}
}

func (s *suite) testPower(t *testing.T) {
	if s.o.SkipPower {
		t.Skip("SkipPower")
	}
	ctx := t.Context()
	for _, step := range []struct {
		op   provider.PowerOp
		want core.PowerState
	}{
		{provider.Start, core.Running},
		{provider.Start, core.Running}, // already running: succeeds
		{provider.Stop, core.Halted},
		{provider.Stop, core.Halted}, // already halted: succeeds
	} {
		if err := s.p.PowerVM(ctx, s.vm, step.op); err != nil {
			t.Fatalf("PowerVM(%s): %v", step.op, err)
		}
		s.waitState(t, step.want)
	}
	if err := s.p.PowerVM(ctx, s.vm, provider.PowerOp("explode")); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("unknown power op: %v", err)
	}
}

func (s *suite) testWatch(t *testing.T) {
	w, ok := s.p.(provider.Watcher)
	if !ok {
		t.Skip("no Watcher")
	}
	if s.o.SkipPower {
		t.Skip("SkipPower: nothing to trigger a change with")
	}
	ctx, cancel := context.WithTimeout(t.Context(), s.o.PowerTimeout)
	defer cancel()
	seen := make(chan core.VM, 64)
	done := make(chan error, 1)
	var started atomic.Bool
	go func() {
		done <- w.Watch(ctx, func(vm core.VM) error {
			started.Store(true)
			if vm.ID == s.vm {
				select {
				case seen <- vm:
				default:
				}
			}
			return nil
		})
	}()
	// Change the VM until the watcher reports it running.
	if err := s.p.PowerVM(ctx, s.vm, provider.Start); err != nil {
		t.Fatalf("PowerVM(start): %v", err)
	}
	defer func() {
		if err := s.p.PowerVM(context.WithoutCancel(ctx), s.vm, provider.Stop); err != nil {
			t.Errorf("PowerVM(stop): %v", err)
		}
	}()
	for {
		select {
		case vm := <-seen:
			if vm.PowerState == core.Running {
				cancel()
				if err := <-done; !errs.Is(err, errs.Canceled) {
					t.Errorf("Watch ended with %v, want a cancellation", err)
				}
				return
			}
		case err := <-done:
			t.Fatalf("Watch ended early: %v", err)
		case <-ctx.Done():
			t.Fatalf("no event showed VM %s running", s.vm)
		}
	}
}

func (s *suite) testSnapshot(t *testing.T) {
	snapper, ok := s.p.(provider.Snapshotter)
	if !ok {
		t.Skip("no Snapshotter")
	}
	ctx := t.Context()
	vm, _ := s.vmByID(ctx, t, s.vm)
	opts := &provider.SnapshotOptions{Name: "ferry-conformance-snap", Tags: map[string]string{"ferry_job": "conformance"}}
	snap, err := snapper.Snapshot(ctx, s.vm, opts)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	deleted := false
	defer func() {
		if !deleted {
			snapper.DeleteSnapshot(context.WithoutCancel(ctx), snap.ID)
		}
	}()
	if snap.ID == "" || snap.VM != s.vm || len(snap.Disks) != len(vm.Disks) {
		t.Fatalf("snapshot %+v of a VM with %d disks", snap, len(vm.Disks))
	}
	for i, d := range snap.Disks {
		if d.ID == "" || d.ID == vm.Disks[i].ID || d.Size != vm.Disks[i].Size || d.Position != vm.Disks[i].Position {
			t.Errorf("snapshot disk %d %+v; the VM's is %+v", i, d, vm.Disks[i])
		}
	}
	// Snapshots are not VMs.
	if _, ok := s.vmByID(ctx, t, core.VMID(snap.ID)); ok {
		t.Errorf("snapshot %s is listed as a VM", snap.ID)
	}
	// Found again by its options (a step run again after a crash).
	finder, canFind := s.p.(provider.SnapshotFinder)
	if canFind {
		got, found, err := finder.FindSnapshot(ctx, s.vm, opts)
		if err != nil || !found || got.ID != snap.ID || !slices.EqualFunc(got.Disks, snap.Disks, func(a, b core.Disk) bool { return a.ID == b.ID }) {
			t.Errorf("FindSnapshot = %+v, %v, %v; want %+v", got, found, err, snap)
		}
		other := &provider.SnapshotOptions{Name: "ferry-conformance-other", Tags: map[string]string{"ferry_job": "other"}}
		if got, found, err := finder.FindSnapshot(ctx, s.vm, other); err != nil || found {
			t.Errorf("FindSnapshot(other tags) = %+v, %v, %v; want none", got, found, err)
		}
	}
	exp, ok := s.p.(provider.DiskExporter)
	if ok && s.o.Content != nil {
		s.checkDisks(t, snap.Disks, s.o.Content)
	}
	if ok && s.info.Capabilities.ChangedBlocks {
		snap2, err := snapper.Snapshot(ctx, s.vm, nil)
		if err != nil {
			t.Fatalf("second Snapshot: %v", err)
		}
		for i, d := range snap2.Disks {
			s.checkDelta(t, exp, d.ID, snap.Disks[i].ID)
		}
		if err := snapper.DeleteSnapshot(ctx, snap2.ID); err != nil {
			t.Errorf("DeleteSnapshot(second): %v", err)
		}
	}
	if err := snapper.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	deleted = true
	if ok {
		if img, err := exp.OpenDisk(ctx, snap.Disks[0].ID, ""); !errs.Is(err, errs.NotFound) {
			if img != nil {
				img.Close()
			}
			t.Errorf("OpenDisk of a deleted snapshot's disk: %v, want NotFound", err)
		}
	}
	if err := snapper.DeleteSnapshot(ctx, snap.ID); !errs.Is(err, errs.NotFound) {
		t.Errorf("DeleteSnapshot again: %v, want NotFound", err)
	}
	if canFind {
		if got, found, err := finder.FindSnapshot(ctx, s.vm, opts); err != nil || found {
			t.Errorf("FindSnapshot after DeleteSnapshot = %+v, %v, %v; want none", got, found, err)
		}
	}
}

// checkDelta opens the changes of d since base: wherever they report
// data, they must read as d itself.
func (s *suite) checkDelta(t *testing.T, exp provider.DiskExporter, d, base core.DiskID) {
	t.Helper()
	ctx := t.Context()
	delta, err := exp.OpenDisk(ctx, d, base)
	if err != nil {
		t.Fatalf("OpenDisk(%s since %s): %v", d, base, err)
	}
	defer delta.Close()
	full, err := exp.OpenDisk(ctx, d, "")
	if err != nil {
		t.Fatalf("OpenDisk(%s): %v", d, err)
	}
	defer full.Close()
	if delta.Size() != full.Size() {
		t.Fatalf("delta of %d bytes for a disk of %d", delta.Size(), full.Size())
	}
	var changed int64
	for e, err := range delta.Extents(ctx, 0, delta.Size()) {
		if err != nil {
			t.Fatalf("delta extents: %v", err)
		}
		if e.Kind != disk.Data {
			continue
		}
		changed += e.Len
		a, b := make([]byte, e.Len), make([]byte, e.Len)
		if _, err := delta.ReadAt(a, e.Off); err != nil {
			t.Fatalf("delta read at %d: %v", e.Off, err)
		}
		if _, err := full.ReadAt(b, e.Off); err != nil {
			t.Fatalf("disk read at %d: %v", e.Off, err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("delta of %s differs from the disk in [%d, %d)", d, e.Off, e.End())
		}
	}
	t.Logf("disk %s: %d bytes changed since %s with nothing written", d, changed, base)
}

func (s *suite) testNotFound(t *testing.T) {
	ctx := t.Context()
	u := s.o
	check := func(what string, err error) {
		t.Helper()
		if !errs.Is(err, errs.NotFound) {
			t.Errorf("%s: %v (%v), want NotFound", what, err, errs.CodeOf(err))
		}
	}
	check("PowerVM", s.p.PowerVM(ctx, u.UnknownVM, provider.Start))
	if sn, ok := s.p.(provider.Snapshotter); ok {
		_, err := sn.Snapshot(ctx, u.UnknownVM, nil)
		check("Snapshot", err)
		check("DeleteSnapshot", sn.DeleteSnapshot(ctx, u.UnknownSnapshot))
	}
	if ex, ok := s.p.(provider.DiskExporter); ok {
		img, err := ex.OpenDisk(ctx, u.UnknownDisk, "")
		check("OpenDisk", err)
		if img != nil {
			img.Close()
		}
		vm, _ := s.vmByID(ctx, t, s.vm)
		if len(vm.Disks) > 0 {
			img, err := ex.OpenDisk(ctx, vm.Disks[0].ID, u.UnknownDisk)
			check("OpenDisk with an unknown base", err)
			if img != nil {
				img.Close()
			}
		}
	}
	if c, ok := s.p.(provider.Consoler); ok {
		_, err := c.ConsoleLog(ctx, u.UnknownVM)
		check("ConsoleLog", err)
	}
	n := 0
	if err := s.p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{u.UnknownVM}}, func(core.VM) error { n++; return nil }); err != nil || n != 0 {
		t.Errorf("ListVMs of an unknown ID: %d VMs, %v", n, err)
	}
}

// cancelAfter is an Image that cancels a context after some reads.
type cancelAfter struct {
	disk.Image
	after  int32
	reads  atomic.Int32
	cancel context.CancelFunc
}

func (c *cancelAfter) ReadAt(p []byte, off int64) (int, error) {
	if c.reads.Add(1) == c.after {
		c.cancel()
	}
	return c.Image.ReadAt(p, off)
}

func (s *suite) testCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check := func(what string, err error) {
		t.Helper()
		if !errs.Is(err, errs.Canceled) {
			t.Errorf("%s with a cancelled context: %v (%v), want Canceled", what, err, errs.CodeOf(err))
		}
	}
	check("ListVMs", s.p.ListVMs(ctx, provider.Filter{}, func(core.VM) error { return nil }))
	check("PowerVM", s.p.PowerVM(ctx, s.vm, provider.Start))
	if sn, ok := s.p.(provider.Snapshotter); ok {
		_, err := sn.Snapshot(ctx, s.vm, nil)
		check("Snapshot", err)
	}
	vm, _ := s.vmByID(t.Context(), t, s.vm)
	if ex, ok := s.p.(provider.DiskExporter); ok && len(vm.Disks) > 0 {
		img, err := ex.OpenDisk(ctx, vm.Disks[0].ID, "")
		check("OpenDisk", err)
		if img != nil {
			img.Close()
		}
	}
	if w, ok := s.p.(provider.Watcher); ok {
		check("Watch", w.Watch(ctx, func(core.VM) error { return nil }))
	}
	imp, ok := s.p.(provider.Importer)
	if !ok || s.o.VM != "" {
		return
	}
	spec := s.o.Spec
	spec.Name += "-cancelled"
	_, err := imp.ImportVM(ctx, spec, s.images(), &s.o.Import)
	check("ImportVM", err)
	// Cancelled half way: nothing is left behind.
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	imgs := s.images()
	imgs[0] = &cancelAfter{Image: imgs[0], after: 2, cancel: cancel2}
	id, err := imp.ImportVM(ctx2, spec, imgs, &s.o.Import)
	if err == nil {
		s.created = append(s.created, id)
	}
	check("ImportVM cancelled while copying", err)
	var left []core.VMID
	if err := s.p.ListVMs(t.Context(), provider.Filter{Name: spec.Name}, func(vm core.VM) error {
		left = append(left, vm.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		s.created = append(s.created, left...)
		t.Errorf("a cancelled import left VMs %v", left)
	}
}

func (s *suite) testInventory(t *testing.T) {
	inv, ok := s.p.(provider.Inventory)
	if !ok {
		t.Skip("no Inventory")
	}
	st, err := inv.ListStorage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range st {
		if x.ID == "" || x.FreeBytes < 0 || x.SizeBytes < 0 || x.FreeBytes > x.SizeBytes && x.SizeBytes > 0 {
			t.Errorf("storage %+v", x)
		}
	}
	nets, err := inv.ListNetworks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		if n.ID == "" {
			t.Errorf("network %+v", n)
		}
	}
	if len(st) == 0 {
		t.Error("no storage listed")
	}
}

func (s *suite) testConsole(t *testing.T) {
	c, ok := s.p.(provider.Consoler)
	if !ok {
		t.Skip("no Consoler")
	}
	text, err := c.ConsoleLog(t.Context(), s.vm)
	switch {
	case errs.Is(err, errs.Unimplemented):
		t.Logf("console log: %v", err)
	case err != nil:
		t.Errorf("ConsoleLog: %v", err)
	default:
		t.Logf("console log: %d bytes", len(text))
	}
}

// String makes Options readable in failures.
func (o Options) String() string { return fmt.Sprintf("%+v", o.Spec) }
