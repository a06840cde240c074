package xen

import (
	"context"
	"fmt"
	"strconv"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/xapi"
)

// The methods below are ImportVM in pieces, for callers that checkpoint
// between them (a resumable migration): create the disks, write them in
// as many passes as they like, then create the VM over them.

// CreateDisk creates an empty VDI of size bytes (rounded up to 512) on the
// SR storage (a UUID or name; the pool's default SR when empty) and
// returns its UUID.
func (p *Provider) CreateDisk(ctx context.Context, storage, name string, size int64, tags map[string]string) (core.DiskID, error) {
	what := fmt.Sprintf("xen: create disk %q", name)
	if size <= 0 {
		return "", fmt.Errorf("%s: size %d: %w", what, size, errs.ErrInvalidArgument)
	}
	sr, err := p.findSR(ctx, storage)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	ref, err := p.c.VDI().Create(ctx, xapi.VDIRecord{
		NameLabel: name, NameDescription: "created by ferry", SR: sr, VirtualSize: (size + 511) &^ 511,
		Type: xapi.VDITypeUser, OtherConfig: map[string]string{}, Tags: formatTags(tags),
	})
	if err != nil {
		return "", fmt.Errorf("%s (%d bytes): %w", what, size, err)
	}
	uuid, err := p.c.VDI().GetUUID(ctx, ref)
	if err != nil {
		p.undo("destroy VDI "+name, func(ctx context.Context) error { return p.c.VDI().Destroy(ctx, ref) })
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return core.DiskID(uuid), nil
}

// FindDisk returns the UUID of a VDI (not a snapshot) carrying every tag
// of tags ("" when none does): a caller that tags what it creates finds
// what it made before a crash cut it off from the answer.
func (p *Provider) FindDisk(ctx context.Context, tags map[string]string) (core.DiskID, error) {
	recs, err := p.c.VDI().GetAllRecords(ctx)
	if err != nil {
		return "", fmt.Errorf("xen: find disk tagged %v: %w", tags, err)
	}
	for _, r := range recs {
		if !r.IsASnapshot && hasTags(r.Tags, tags) {
			return core.DiskID(r.UUID), nil
		}
	}
	return "", nil
}

// WriteDisk writes img's data extents into the VDI d (by UUID) with
// import_raw_vdi as a dynamic VHD: ranges img reports as unallocated or
// zero are not sent and keep the VDI's content, so a disk can be written
// in several passes, each an image that exposes one part.
func (p *Provider) WriteDisk(ctx context.Context, d core.DiskID, img disk.Image, rep progress.Reporter) error {
	ref, err := p.c.VDI().GetByUUID(ctx, string(d))
	if err != nil {
		return fmt.Errorf("xen: write disk %s: %w", d, err)
	}
	if err := p.c.ImportRawVDI(ctx, ref, xapi.FormatVHD, img, rep); err != nil {
		return fmt.Errorf("xen: write disk %s: %w", d, err)
	}
	return nil
}

// DestroyDisk destroys the VDI d (by UUID); a VDI already gone is no
// error.
func (p *Provider) DestroyDisk(ctx context.Context, d core.DiskID) error {
	ref, err := p.c.VDI().GetByUUID(ctx, string(d))
	if errs.Is(err, errs.NotFound) {
		return nil
	}
	if err == nil {
		err = p.c.VDI().Destroy(ctx, ref)
	}
	if err != nil && !errs.Is(err, errs.NotFound) {
		return fmt.Errorf("xen: destroy disk %s: %w", d, err)
	}
	return nil
}

// DiscardVMs destroys the VMs (not snapshots or templates) that carry all
// of tags, keeping their disks: XAPI's VM.destroy removes a VM's VBDs and
// VIFs, never its VDIs. A caller that creates a VM with CreateVM and
// records it only once CreateVM returns calls it first, so that the VM a
// crash cut off (perhaps half attached) is not left beside the new one.
// A VM that is not halted is refused (FailedPrecondition): something uses
// it. It returns how many it destroyed.
func (p *Provider) DiscardVMs(ctx context.Context, tags map[string]string) (int, error) {
	if len(tags) == 0 {
		return 0, fmt.Errorf("xen: discard VMs: no tags to find them by: %w", errs.ErrInvalidArgument)
	}
	recs, err := p.c.VM().GetAllRecords(ctx)
	if err != nil {
		return 0, fmt.Errorf("xen: discard VMs tagged %v: %w", tags, err)
	}
	n := 0
	for ref, r := range recs {
		if !isVM(&r) || !hasTags(r.Tags, tags) {
			continue
		}
		if r.PowerState != xapi.VMPowerStateHalted {
			return n, fmt.Errorf("xen: discard VM %s tagged %v: it is %s: %w", r.UUID, tags, r.PowerState, errs.ErrFailedPrecondition)
		}
		if err := p.c.VM().Destroy(ctx, ref); err != nil && !errs.Is(err, errs.NotFound) {
			return n, fmt.Errorf("xen: discard VM %s: %w", r.UUID, err)
		}
		p.log.Info("xen: discarded a VM an earlier run left", "vm_id", r.UUID, "tags", tags)
		n++
	}
	return n, nil
}

// CreateVM creates a halted VM from spec over existing VDIs (disks[i], by
// UUID, is spec.Disks[i]), with its NICs on the networks the mapping
// gives (as ImportVM). On failure it removes the VM it made but never the
// disks.
func (p *Provider) CreateVM(ctx context.Context, spec core.VMSpec, disks []core.DiskID, networks map[string]string, tags map[string]string) (core.VMID, error) {
	what := fmt.Sprintf("xen: create VM %q", spec.Name)
	if len(disks) != len(spec.Disks) {
		return "", fmt.Errorf("%s: %d disks described but %d given: %w", what, len(spec.Disks), len(disks), errs.ErrInvalidArgument)
	}
	if spec.CPUs < 1 || spec.MemoryBytes < 1<<20 {
		return "", fmt.Errorf("%s: %d CPUs, %d bytes of memory: %w", what, spec.CPUs, spec.MemoryBytes, errs.ErrInvalidArgument)
	}
	nets, err := p.findNetworks(ctx, spec.NICs, networks)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	vdis := make([]xapi.VDIRef, len(disks))
	for i, d := range disks {
		if vdis[i], err = p.c.VDI().GetByUUID(ctx, string(d)); err != nil {
			return "", fmt.Errorf("%s: disk %d (%s): %w", what, i, d, err)
		}
	}
	rv := &revert{p: p}
	defer rv.fail()
	vm, err := p.c.VM().Create(ctx, vmRecord(spec, tags))
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	rv.add("destroy VM", func(ctx context.Context) error { return p.c.VM().Destroy(ctx, vm) })
	for i, ds := range spec.Disks {
		if _, err := p.c.VBD().Create(ctx, xapi.VBDRecord{
			VM: vm, VDI: vdis[i], Userdevice: strconv.Itoa(ds.Position), Bootable: ds.Bootable,
			Mode: xapi.VBDModeRW, Type: xapi.VBDTypeDisk, OtherConfig: map[string]string{}, QosAlgorithmParams: map[string]string{},
		}); err != nil {
			return "", fmt.Errorf("%s: attach disk %d: %w", what, i, err)
		}
	}
	for i, n := range spec.NICs {
		if _, err := p.c.VIF().Create(ctx, xapi.VIFRecord{
			Device: strconv.Itoa(i), Network: nets[i], VM: vm, MAC: n.MAC, MTU: 1500,
			OtherConfig: map[string]string{}, QosAlgorithmParams: map[string]string{},
		}); err != nil {
			return "", fmt.Errorf("%s: create NIC %d: %w", what, i, err)
		}
	}
	uuid, err := p.c.VM().GetUUID(ctx, vm)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	rv.success()
	return core.VMID(uuid), nil
}
