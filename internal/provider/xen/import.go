package xen

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/xapi"
)

// revert collects compensation steps, run in reverse unless the work
// succeeds (lxd's revert pattern).
type revert struct {
	p     *Provider
	steps []revertStep
	done  bool
}

type revertStep struct {
	what string
	fn   func(ctx context.Context) error
}

func (r *revert) add(what string, fn func(ctx context.Context) error) {
	r.steps = append(r.steps, revertStep{what, fn})
}

func (r *revert) success() { r.done = true }

// fail runs the steps, newest first (deferred).
func (r *revert) fail() {
	if r.done {
		return
	}
	for i := len(r.steps) - 1; i >= 0; i-- {
		r.p.undo(r.steps[i].what, r.steps[i].fn)
	}
}

// ImportVM creates a VM from spec with disks streamed from disks (one
// Image per spec.Disks entry, in order), on the SR o.Storage (name or
// UUID; the pool's default SR when empty), with its NICs on the networks
// o.Networks maps their network names to (a network ID or name; an
// unmapped name is looked up as is). Everything created is removed if a
// step fails or ctx is cancelled.
func (p *Provider) ImportVM(ctx context.Context, spec core.VMSpec, disks []disk.Image, o *provider.ImportOptions) (core.VMID, error) {
	if o == nil {
		o = &provider.ImportOptions{}
	}
	what := fmt.Sprintf("xen: import VM %q", spec.Name)
	rep := progress.Or(o.Progress)
	if err := checkSpec(spec, disks); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	sr, err := p.findSR(ctx, o.Storage)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	nets, err := p.findNetworks(ctx, spec.NICs, o.Networks)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}

	rv := &revert{p: p}
	defer rv.fail()

	var total int64
	for _, d := range disks {
		total += d.Size()
	}
	rep.SetTotal(total)

	vmRec := vmRecord(spec, o.Tags)
	vm, err := p.c.VM().Create(ctx, vmRec)
	if err != nil {
		return "", fmt.Errorf("%s: create the VM: %w", what, err)
	}
	rv.add("destroy VM", func(ctx context.Context) error { return p.c.VM().Destroy(ctx, vm) })

	for i, ds := range spec.Disks {
		img := disks[i]
		size := max(ds.Size, img.Size())
		size = (size + 511) &^ 511
		name := cmp.Or(ds.Name, fmt.Sprintf("%s disk %d", spec.Name, i))
		vdi, err := p.c.VDI().Create(ctx, xapi.VDIRecord{
			NameLabel: name, NameDescription: "imported by ferry", SR: sr, VirtualSize: size,
			Type: xapi.VDITypeUser, OtherConfig: map[string]string{}, Tags: formatTags(o.Tags),
		})
		if err != nil {
			return "", fmt.Errorf("%s: create disk %d (%s, %d bytes): %w", what, i, name, size, err)
		}
		rv.add("destroy VDI "+name, func(ctx context.Context) error { return p.c.VDI().Destroy(ctx, vdi) })
		rep.Phase(fmt.Sprintf("copy disk %d/%d", i+1, len(spec.Disks)))
		if err := p.c.ImportRawVDI(ctx, vdi, p.cfg.ImportFormat, img, progress.KeepTotal(rep)); err != nil {
			return "", fmt.Errorf("%s: write disk %d (%s): %w", what, i, name, err)
		}
		vbd, err := p.c.VBD().Create(ctx, xapi.VBDRecord{
			VM: vm, VDI: vdi, Userdevice: strconv.Itoa(ds.Position), Bootable: ds.Bootable,
			Mode: xapi.VBDModeRW, Type: xapi.VBDTypeDisk, Empty: false, Unpluggable: false,
			OtherConfig: map[string]string{}, QosAlgorithmType: "", QosAlgorithmParams: map[string]string{},
		})
		if err != nil {
			return "", fmt.Errorf("%s: attach disk %d (%s): %w", what, i, name, err)
		}
		rv.add("destroy VBD", func(ctx context.Context) error { return p.c.VBD().Destroy(ctx, vbd) })
	}
	for i, n := range spec.NICs {
		vif, err := p.c.VIF().Create(ctx, xapi.VIFRecord{
			Device: strconv.Itoa(i), Network: nets[i], VM: vm, MAC: n.MAC, MTU: 1500,
			OtherConfig: map[string]string{}, QosAlgorithmType: "", QosAlgorithmParams: map[string]string{},
		})
		if err != nil {
			return "", fmt.Errorf("%s: create NIC %d: %w", what, i, err)
		}
		rv.add("destroy VIF", func(ctx context.Context) error { return p.c.VIF().Destroy(ctx, vif) })
	}
	uuid, err := p.c.VM().GetUUID(ctx, vm)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	rv.success()
	return core.VMID(uuid), nil
}

func checkSpec(spec core.VMSpec, disks []disk.Image) error {
	if spec.Name == "" {
		return fmt.Errorf("the VM has no name: %w", errs.ErrInvalidArgument)
	}
	if spec.CPUs < 1 {
		return fmt.Errorf("%d CPUs: %w", spec.CPUs, errs.ErrInvalidArgument)
	}
	if spec.MemoryBytes < 1<<20 {
		return fmt.Errorf("%d bytes of memory: %w", spec.MemoryBytes, errs.ErrInvalidArgument)
	}
	if len(spec.Disks) != len(disks) {
		return fmt.Errorf("%d disks described but %d images given: %w", len(spec.Disks), len(disks), errs.ErrInvalidArgument)
	}
	seen := map[int]bool{}
	for i, d := range spec.Disks {
		if d.Size > 0 && d.Size < disks[i].Size() {
			return fmt.Errorf("disk %d: described as %d bytes but the image holds %d: %w", i, d.Size, disks[i].Size(), errs.ErrInvalidArgument)
		}
		if d.Position < 0 || seen[d.Position] {
			return fmt.Errorf("disk %d: position %d is negative or taken: %w", i, d.Position, errs.ErrInvalidArgument)
		}
		seen[d.Position] = true
	}
	switch spec.Firmware {
	case "", core.BIOS, core.UEFI:
	default:
		return fmt.Errorf("firmware %q: %w", spec.Firmware, errs.ErrInvalidArgument)
	}
	return nil
}

// vmRecord is the VM.create record for spec: HVM, BIOS or UEFI, fixed
// memory, every field xapi requires set.
func vmRecord(spec core.VMSpec, tags map[string]string) xapi.VMRecord {
	mem := spec.MemoryBytes
	boot := map[string]string{"order": "cd", "firmware": "bios"}
	platform := map[string]string{
		"acpi": "1", "apic": "true", "pae": "true", "nx": "true", "hpet": "true", "timeoffset": "0",
		"viridian": "false", "device-model": "qemu-upstream-compat",
	}
	if spec.Firmware == core.UEFI {
		boot["firmware"] = "uefi"
		platform["device-model"] = "qemu-upstream-uefi"
		platform["secureboot"] = "false"
	}
	if strings.Contains(strings.ToLower(spec.OSType), "windows") {
		platform["viridian"] = "true"
	}
	other := map[string]string{}
	if spec.OSType != "" {
		other["ferry_os_type"] = spec.OSType
	}
	return xapi.VMRecord{
		NameLabel: spec.Name, NameDescription: spec.Description, UserVersion: 1,
		IsATemplate: false, Affinity: xapi.NullRef,
		MemoryStaticMax: mem, MemoryDynamicMax: mem, MemoryDynamicMin: mem, MemoryStaticMin: mem,
		VCPUsParams: map[string]string{}, VCPUsMax: int64(spec.CPUs), VCPUsAtStartup: int64(spec.CPUs),
		ActionsAfterShutdown: xapi.OnNormalExitDestroy, ActionsAfterReboot: xapi.OnNormalExitRestart,
		ActionsAfterCrash: xapi.OnCrashBehaviourRestart,
		HVMBootPolicy:     "BIOS order", HVMBootParams: boot, Platform: platform,
		OtherConfig: other, DomainType: xapi.DomainTypeHVM, Tags: formatTags(tags),
	}
}

// findSR picks the SR by UUID or name, or the pool's default SR.
func (p *Provider) findSR(ctx context.Context, want string) (xapi.SRRef, error) {
	if want == "" {
		pools, err := p.c.Pool().GetAllRecords(ctx)
		if err != nil {
			return "", err
		}
		for _, pl := range pools {
			if !pl.DefaultSR.IsNull() {
				return pl.DefaultSR, nil
			}
		}
		return "", fmt.Errorf("the pool has no default SR; choose one: %w", errs.ErrFailedPrecondition)
	}
	srs, err := p.c.SR().GetAllRecords(ctx)
	if err != nil {
		return "", err
	}
	var byName []xapi.SRRef
	for ref, r := range srs {
		if r.UUID == want || string(ref) == want {
			return ref, nil
		}
		if r.NameLabel == want {
			byName = append(byName, ref)
		}
	}
	switch len(byName) {
	case 1:
		return byName[0], nil
	case 0:
		return "", fmt.Errorf("storage %q: no SR has that UUID or name: %w", want, errs.ErrNotFound)
	}
	return "", fmt.Errorf("storage %q: %d SRs have that name; give a UUID: %w", want, len(byName), errs.ErrInvalidArgument)
}

// findNetworks maps each NIC to a network: o.Networks[nic.Network] (an ID
// or a name), else a network named nic.Network, else, for a NIC with no
// network named, the pool's only network (or its first by name).
func (p *Provider) findNetworks(ctx context.Context, nics []core.NICSpec, mapping map[string]string) ([]xapi.NetworkRef, error) {
	if len(nics) == 0 {
		return nil, nil
	}
	recs, err := p.c.Network().GetAllRecords(ctx)
	if err != nil {
		return nil, err
	}
	type net struct {
		ref xapi.NetworkRef
		rec xapi.NetworkRecord
	}
	var all []net
	for ref, r := range recs {
		if r.OtherConfig["is_host_internal_management_network"] == "true" || r.OtherConfig["is_guest_installer_network"] == "true" {
			continue
		}
		all = append(all, net{ref, r})
	}
	slices.SortFunc(all, func(a, b net) int { return cmp.Compare(a.rec.NameLabel, b.rec.NameLabel) })
	find := func(want string) (xapi.NetworkRef, int) {
		var found []xapi.NetworkRef
		for _, n := range all {
			if n.rec.UUID == want || string(n.ref) == want {
				return n.ref, 1
			}
			if n.rec.NameLabel == want {
				found = append(found, n.ref)
			}
		}
		if len(found) == 0 {
			return "", 0
		}
		return found[0], len(found)
	}
	out := make([]xapi.NetworkRef, len(nics))
	for i, n := range nics {
		want := n.Network
		if m, ok := mapping[n.Network]; ok {
			want = m
		}
		if want == "" {
			if len(all) == 0 {
				return nil, fmt.Errorf("NIC %d: the pool has no network: %w", i, errs.ErrFailedPrecondition)
			}
			out[i] = all[0].ref
			continue
		}
		ref, count := find(want)
		switch {
		case count == 0:
			return nil, fmt.Errorf("NIC %d: network %q: no network has that ID or name (map it with ImportOptions.Networks): %w", i, want, errs.ErrNotFound)
		case count > 1:
			return nil, fmt.Errorf("NIC %d: network %q: %d networks have that name; map it to an ID: %w", i, want, count, errs.ErrInvalidArgument)
		}
		out[i] = ref
	}
	return out, nil
}
