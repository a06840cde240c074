package xen

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/xapi"
)

// Snapshot takes a crash-consistent snapshot of a VM (VM.snapshot) and
// tags it with o.Tags. With Config.EnableCBT, changed block tracking is
// enabled first on every disk of the VM that lacks it.
func (p *Provider) Snapshot(ctx context.Context, id core.VMID, o *provider.SnapshotOptions) (provider.Snapshot, error) {
	if o == nil {
		o = &provider.SnapshotOptions{}
	}
	what := fmt.Sprintf("xen: snapshot VM %s", id)
	ref, rec, err := p.vmByID(ctx, id)
	if err != nil {
		return provider.Snapshot{}, err
	}
	if p.cfg.EnableCBT {
		if err := p.enableCBT(ctx, rec.VBDs); err != nil {
			return provider.Snapshot{}, fmt.Errorf("%s: %w", what, err)
		}
	}
	name := o.Name
	if name == "" {
		name = rec.NameLabel + " (ferry " + time.Now().UTC().Format("2006-01-02T15:04:05Z") + ")"
	}
	res, err := p.runTaskResult(ctx, func() (xapi.TaskRef, error) { return p.c.VM().AsyncSnapshot(ctx, ref, name, nil) }, nil)
	if err != nil {
		return provider.Snapshot{}, fmt.Errorf("%s: %w", what, err)
	}
	refs := xapi.ResultRefs(res)
	if len(refs) == 0 {
		return provider.Snapshot{}, fmt.Errorf("%s: the snapshot task returned no VM (%q): %w", what, res, errs.ErrCorrupt)
	}
	snap := xapi.VMRef(refs[0])
	ok := false
	defer func() {
		if !ok {
			p.undo("remove the unfinished snapshot", func(ctx context.Context) error { return p.deleteSnapshot(ctx, snap) })
		}
	}()
	for _, t := range formatTags(o.Tags) {
		if err := p.c.VM().AddTags(ctx, snap, t); err != nil {
			return provider.Snapshot{}, fmt.Errorf("%s: tag it: %w", what, err)
		}
	}
	srec, err := p.c.VM().GetRecord(ctx, snap)
	if err != nil {
		return provider.Snapshot{}, fmt.Errorf("%s: %w", what, err)
	}
	disks, err := p.disksOfVBDs(ctx, srec.VBDs)
	if err != nil {
		return provider.Snapshot{}, fmt.Errorf("%s: %w", what, err)
	}
	ok = true
	return provider.Snapshot{ID: core.SnapshotID(srec.UUID), VM: id, Disks: disks}, nil
}

// FindSnapshot finds the snapshot of VM id that carries all of o.Tags, or
// is named o.Name (a crash between VM.snapshot and tagging it leaves it
// untagged: it gets its tags now). See provider.SnapshotFinder.
func (p *Provider) FindSnapshot(ctx context.Context, id core.VMID, o *provider.SnapshotOptions) (provider.Snapshot, bool, error) {
	if o == nil || (len(o.Tags) == 0 && o.Name == "") {
		return provider.Snapshot{}, false, fmt.Errorf("xen: find a snapshot of VM %s: no name or tags to find it by: %w", id, errs.ErrInvalidArgument)
	}
	_, rec, err := p.vmByID(ctx, id)
	if err != nil {
		return provider.Snapshot{}, false, err
	}
	want := formatTags(o.Tags)
	for _, ref := range rec.Snapshots {
		srec, err := p.c.VM().GetRecord(ctx, ref)
		if errs.Is(err, errs.NotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return provider.Snapshot{}, false, fmt.Errorf("xen: find a snapshot of VM %s: %w", id, err)
		}
		tagged := len(o.Tags) > 0 && hasTags(srec.Tags, o.Tags)
		if !tagged && (o.Name == "" || srec.NameLabel != o.Name) {
			continue
		}
		for _, t := range want {
			if !slices.Contains(srec.Tags, t) {
				if err := p.c.VM().AddTags(ctx, ref, t); err != nil {
					return provider.Snapshot{}, false, fmt.Errorf("xen: tag snapshot %s of VM %s: %w", srec.UUID, id, err)
				}
			}
		}
		disks, err := p.disksOfVBDs(ctx, srec.VBDs)
		if err != nil {
			return provider.Snapshot{}, false, fmt.Errorf("xen: snapshot %s of VM %s: %w", srec.UUID, id, err)
		}
		return provider.Snapshot{ID: core.SnapshotID(srec.UUID), VM: id, Disks: disks}, true, nil
	}
	return provider.Snapshot{}, false, nil
}

// enableCBT turns changed block tracking on for the VDIs of a VM's disks
// that lack it.
func (p *Provider) enableCBT(ctx context.Context, vbds []xapi.VBDRef) error {
	for _, v := range p.diskVDIs(ctx, vbds) {
		on, err := p.c.VDI().GetCBTEnabled(ctx, v)
		if err != nil {
			return err
		}
		if on {
			continue
		}
		if err := p.c.VDI().EnableCBT(ctx, v); err != nil {
			if errs.Is(err, errs.Unimplemented) {
				p.log.Warn("the SR cannot track changed blocks; deltas will come from export_raw_vdi", "vdi", string(v), "err", err)
				continue
			}
			return fmt.Errorf("enable changed block tracking: %w", err)
		}
	}
	return nil
}

// disksOfVBDs describes the disks behind VBDs (type Disk with a VDI), in
// userdevice order.
func (p *Provider) disksOfVBDs(ctx context.Context, vbds []xapi.VBDRef) ([]core.Disk, error) {
	out := []core.Disk{}
	srNames := map[xapi.SRRef]string{}
	for _, ref := range vbds {
		vbd, err := p.c.VBD().GetRecord(ctx, ref)
		if err != nil {
			return nil, err
		}
		if vbd.Type != xapi.VBDTypeDisk || vbd.Empty || vbd.VDI.IsNull() {
			continue
		}
		vdi, err := p.c.VDI().GetRecord(ctx, vbd.VDI)
		if err != nil {
			return nil, err
		}
		if _, ok := srNames[vdi.SR]; !ok && !vdi.SR.IsNull() {
			if sr, err := p.c.SR().GetRecord(ctx, vdi.SR); err == nil {
				srNames[vdi.SR] = sr.NameLabel
			}
		}
		pos, _ := strconv.Atoi(vbd.Userdevice)
		out = append(out, core.Disk{ID: core.DiskID(vdi.UUID), Name: vdi.NameLabel, Size: vdi.VirtualSize, Position: pos,
			Bootable: vbd.Bootable, Storage: srNames[vdi.SR]})
	}
	slices.SortStableFunc(out, func(a, b core.Disk) int { return cmp.Compare(a.Position, b.Position) })
	return out, nil
}

// DeleteSnapshot removes a snapshot VM and its disks.
func (p *Provider) DeleteSnapshot(ctx context.Context, id core.SnapshotID) error {
	ref, rec, err := p.objByID(ctx, string(id))
	if err != nil {
		return fmt.Errorf("xen: delete snapshot %s: %w", id, err)
	}
	if !rec.IsASnapshot {
		return fmt.Errorf("xen: delete snapshot %s: a VM, not a snapshot: %w", id, errs.ErrInvalidArgument)
	}
	if err := p.deleteSnapshot(ctx, ref); err != nil {
		return fmt.Errorf("xen: delete snapshot %s: %w", id, err)
	}
	return nil
}

func (p *Provider) deleteSnapshot(ctx context.Context, ref xapi.VMRef) error {
	rec, err := p.c.VM().GetRecord(ctx, ref)
	if err != nil {
		return err
	}
	vdis := p.diskVDIs(ctx, rec.VBDs)
	if err := p.c.VM().Destroy(ctx, ref); err != nil {
		return err
	}
	var errList []error
	for _, v := range vdis {
		if err := p.c.VDI().Destroy(ctx, v); err != nil && !errs.Is(err, errs.NotFound) {
			errList = append(errList, fmt.Errorf("remove disk %s: %w", v, err))
		}
	}
	return errors.Join(errList...)
}

// undo runs a compensation step on a context of its own (the caller's
// may be cancelled), logging its failure.
func (p *Provider) undo(what string, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := fn(ctx); err != nil && !errs.Is(err, errs.NotFound) {
		p.log.Warn("undo failed", "step", what, "err", err)
	}
}
