// Package migrate moves a VM between sites: a XenServer pool and an EC2
// region, either way (a cold migration: the disks are copied from a
// snapshot, the VM is created on the target, the source is left as it
// was).
//
// A migration is planned first ([Planner.Plan]): the source VM, its disks
// and the target's limits are checked, CPUs and memory are mapped to an
// instance type with its price, and networks are mapped. The plan is
// stored with the job that carries it out ([Kind]): snapshot the source,
// stream each disk through the disk engine straight into the target (EBS
// direct snapshots, or VDIs through import_raw_vdi), verify every block
// end to end, create the VM and start it. The job checkpoints inside the
// transfer, so a crash resumes with the blocks not yet committed, and it
// records every resource it creates, so a cancel removes them all.
package migrate

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws"
	"github.com/ferry-project/ferry/internal/provider/xen"
)

// Sites gives connections to registered sites (site.Manager). The caller
// does not close what it returns.
type Sites interface {
	Provider(ctx context.Context, name core.SiteName) (provider.Provider, error)
}

// Methods of moving disks into EC2.
const (
	MethodEBSDirect = "ebs-direct" // EBS direct APIs: blocks straight into a snapshot
	MethodS3Import  = "s3-import"  // stage a VMDK in S3, then ImportSnapshot
	MethodXenImport = "import_raw_vdi"
)

// Disk size limits of the targets.
const (
	maxEBSVolume = 16 << 40   // gp3/gp2: 16 TiB
	maxVHDVDI    = 2040 << 30 // VHD-based SRs: 2040 GiB
	maxEBSDisks  = 25         // block device mappings per AMI that ferry fills
	gib          = int64(1) << 30
)

// Request is what a user asks for.
type Request struct {
	Source core.SiteName `json:"source"`
	// VM is the source VM's ID or name.
	VM     string        `json:"vm"`
	Target core.SiteName `json:"target"`
	// Name of the new VM; default the source VM's.
	Name string `json:"name,omitempty"`
	// InstanceType (EC2 targets): "auto" (default) or a type name.
	InstanceType string `json:"instance_type,omitempty"`
	// Subnet and SecurityGroups (EC2 targets): where the instance goes;
	// default the region's default subnet and group.
	Subnet         string   `json:"subnet,omitempty"`
	SecurityGroups []string `json:"security_groups,omitempty"`
	// NetworkMap maps a source network (ID or name) to a target network
	// (a XenServer network's UUID or name, an EC2 subnet ID).
	NetworkMap map[string]string `json:"network_map,omitempty"`
	// SR (XenServer targets): the SR's UUID or name; default the pool's
	// default SR.
	SR string `json:"sr,omitempty"`
	// Method (EC2 targets): ebs-direct (default) or s3-import.
	Method string `json:"method,omitempty"`
	// NoStart leaves the new VM stopped.
	NoStart bool `json:"no_start,omitempty"`
}

// PlanDisk is one disk to move.
type PlanDisk struct {
	core.Disk
	// TargetSize is the disk's size on the target (EBS volumes are whole
	// GiB).
	TargetSize int64 `json:"target_size"`
}

// NetworkMapping is where one NIC goes.
type NetworkMapping struct {
	NIC    int    `json:"nic"`
	Source string `json:"source"`
	// Target is the target network's ID ("" = the site's default).
	Target     string `json:"target"`
	TargetName string `json:"target_name,omitempty"`
}

// Plan is a checked migration, stored with its job.
type Plan struct {
	Request    Request       `json:"request"`
	SourceKind provider.Kind `json:"source_kind"`
	TargetKind provider.Kind `json:"target_kind"`
	// VM is the source VM as the plan saw it.
	VM   core.VM `json:"vm"`
	Name string  `json:"name"`
	// Disks in the VM's order.
	Disks []PlanDisk `json:"disks"`
	// DiskBytes is the sum of the disks' sizes.
	DiskBytes int64 `json:"disk_bytes"`
	// Instance (EC2 targets) is the instance type and its price.
	Instance       *pricing.Offer   `json:"instance,omitempty"`
	Region         string           `json:"region,omitempty"`
	Subnet         string           `json:"subnet,omitempty"`
	SecurityGroups []string         `json:"security_groups,omitempty"`
	Networks       []NetworkMapping `json:"networks,omitempty"`
	// Storage is the SR (XenServer) or the EBS volume type (EC2).
	Storage   string    `json:"storage,omitempty"`
	Method    string    `json:"method"`
	Start     bool      `json:"start"`
	Warnings  []string  `json:"warnings,omitempty"`
	PlannedAt time.Time `json:"planned_at"`
}

// Direction is "xen→aws" or "aws→xen".
func (p *Plan) Direction() string { return string(p.SourceKind) + "→" + string(p.TargetKind) }

// Planner plans migrations.
type Planner struct {
	Sites  Sites
	Prices *pricing.Table
	Now    func() time.Time
}

// Plan checks r against both sites and returns the plan, or an error that
// says why the migration cannot be done: NotFound for an unknown site or
// VM, FailedPrecondition for a VM or target that cannot take it (a disk
// too large, a suspended VM, an SR too full), InvalidArgument for a bad
// request, Unimplemented for a pair of site kinds ferry does not migrate
// between.
func (pl *Planner) Plan(ctx context.Context, r Request) (Plan, error) {
	switch {
	case r.Source == "":
		return Plan{}, fmt.Errorf("migrate: no source site: %w", errs.ErrInvalidArgument)
	case r.Target == "":
		return Plan{}, fmt.Errorf("migrate: no target site (--to): %w", errs.ErrInvalidArgument)
	case r.VM == "":
		return Plan{}, fmt.Errorf("migrate: no VM named: %w", errs.ErrInvalidArgument)
	case r.Source == r.Target:
		return Plan{}, fmt.Errorf("migrate %s: the source and target site are both %s: %w", r.VM, r.Source, errs.ErrInvalidArgument)
	}
	src, err := pl.Sites.Provider(ctx, r.Source)
	if err != nil {
		return Plan{}, fmt.Errorf("migrate: source site %s: %w", r.Source, err)
	}
	tgt, err := pl.Sites.Provider(ctx, r.Target)
	if err != nil {
		return Plan{}, fmt.Errorf("migrate: target site %s: %w", r.Target, err)
	}
	p := Plan{Request: r, SourceKind: src.Info().Kind, TargetKind: tgt.Info().Kind, Start: !r.NoStart}
	if pl.Now != nil {
		p.PlannedAt = pl.Now().UTC()
	} else {
		p.PlannedAt = time.Now().UTC()
	}
	what := fmt.Sprintf("migrate %s/%s to %s", r.Source, r.VM, r.Target)
	switch p.Direction() {
	case "xen→aws", "aws→xen":
	default:
		return Plan{}, fmt.Errorf("%s: migration from a %s site to a %s site is not supported (ferry migrates xen→aws and aws→xen): %w",
			what, p.SourceKind, p.TargetKind, errs.ErrUnimplemented)
	}
	if _, ok := src.(provider.Snapshotter); !ok {
		return Plan{}, fmt.Errorf("%s: site %s cannot snapshot VMs: %w", what, r.Source, errs.ErrUnimplemented)
	}
	if _, ok := src.(provider.DiskExporter); !ok {
		return Plan{}, fmt.Errorf("%s: site %s cannot export disks: %w", what, r.Source, errs.ErrUnimplemented)
	}

	vm, err := findVM(ctx, src, r.VM)
	if err != nil {
		return Plan{}, fmt.Errorf("%s: %w", what, err)
	}
	p.VM = vm
	p.Name = cmp.Or(r.Name, vm.Name)
	switch vm.PowerState {
	case core.Halted:
	case core.Running:
		p.Warnings = append(p.Warnings, "the VM is running: its disks are copied from a crash-consistent snapshot; shut it down first for a clean copy")
	default:
		return Plan{}, fmt.Errorf("%s: the VM is %s; migrate a halted or running VM: %w", what, vm.PowerState, errs.ErrFailedPrecondition)
	}
	if p.TargetKind == provider.KindXen {
		// An instance ferry migrated into EC2 keeps its VM's own size in
		// tags; the instance type's may be larger.
		cpus, err1 := strconv.Atoi(vm.Tags[TagCPUs])
		mem, err2 := strconv.ParseInt(vm.Tags[TagMemory], 10, 64)
		if err1 == nil && err2 == nil && cpus > 0 && mem > 0 && (cpus != vm.CPUs || mem != vm.MemoryBytes) {
			p.Warnings = append(p.Warnings, fmt.Sprintf("the VM gets %d vCPUs and %s, its size before it was migrated to EC2 (the instance type has %d vCPUs and %s)",
				cpus, progress.HumanBytes(mem), vm.CPUs, progress.HumanBytes(vm.MemoryBytes)))
			p.VM.CPUs, p.VM.MemoryBytes = cpus, mem
			vm = p.VM
		}
	}
	if vm.CPUs < 1 || vm.MemoryBytes <= 0 {
		return Plan{}, fmt.Errorf("%s: the VM reports %d CPUs and %d bytes of memory: %w", what, vm.CPUs, vm.MemoryBytes, errs.ErrFailedPrecondition)
	}
	if len(vm.Disks) == 0 {
		return Plan{}, fmt.Errorf("%s: the VM has no disks: %w", what, errs.ErrFailedPrecondition)
	}
	if err := pl.planDisks(&p); err != nil {
		return Plan{}, fmt.Errorf("%s: %w", what, err)
	}
	switch p.TargetKind {
	case provider.KindAWS:
		err = pl.planAWS(ctx, &p, tgt)
	case provider.KindXen:
		err = pl.planXen(ctx, &p, tgt)
	}
	if err != nil {
		return Plan{}, fmt.Errorf("%s: %w", what, err)
	}
	return p, nil
}

// findVM finds a VM by ID, else by name (which must be unique).
func findVM(ctx context.Context, src provider.Provider, ref string) (core.VM, error) {
	var found []core.VM
	collect := func(vm core.VM) error { found = append(found, vm); return nil }
	if err := src.ListVMs(ctx, provider.Filter{IDs: []core.VMID{core.VMID(ref)}}, collect); err != nil && !errs.Is(err, errs.NotFound) {
		return core.VM{}, err
	}
	if len(found) == 0 {
		if err := src.ListVMs(ctx, provider.Filter{Name: ref}, collect); err != nil {
			return core.VM{}, err
		}
	}
	switch len(found) {
	case 0:
		return core.VM{}, fmt.Errorf("no VM has the ID or name %q on site %s: %w", ref, src.Info().Name, errs.ErrNotFound)
	case 1:
		return found[0], nil
	}
	var ids []string
	for _, vm := range found {
		ids = append(ids, string(vm.ID))
	}
	return core.VM{}, fmt.Errorf("%d VMs are named %q (%s); give the ID: %w", len(found), ref, strings.Join(ids, ", "), errs.ErrInvalidArgument)
}

func (pl *Planner) planDisks(p *Plan) error {
	disks := slices.Clone(p.VM.Disks)
	slices.SortStableFunc(disks, func(a, b core.Disk) int { return cmp.Compare(a.Position, b.Position) })
	for _, d := range disks {
		if d.Size <= 0 {
			return fmt.Errorf("disk %s (%s) reports size %d: %w", d.Name, d.ID, d.Size, errs.ErrFailedPrecondition)
		}
		pd := PlanDisk{Disk: d, TargetSize: d.Size}
		switch p.TargetKind {
		case provider.KindAWS:
			if d.Size > maxEBSVolume {
				return fmt.Errorf("disk %s (%s) is %s; an EBS volume holds at most 16 TiB: %w", d.Name, d.ID, progress.HumanBytes(d.Size), errs.ErrFailedPrecondition)
			}
			pd.TargetSize = (d.Size + gib - 1) / gib * gib
		case provider.KindXen:
			if d.Size > maxVHDVDI {
				return fmt.Errorf("disk %s (%s) is %s; a VDI on a VHD SR holds at most 2040 GiB: %w", d.Name, d.ID, progress.HumanBytes(d.Size), errs.ErrFailedPrecondition)
			}
		}
		p.Disks = append(p.Disks, pd)
		p.DiskBytes += d.Size
	}
	if p.TargetKind == provider.KindAWS && len(p.Disks) > maxEBSDisks {
		return fmt.Errorf("the VM has %d disks; an AMI ferry registers holds at most %d: %w", len(p.Disks), maxEBSDisks, errs.ErrFailedPrecondition)
	}
	bootable := slices.ContainsFunc(p.Disks, func(d PlanDisk) bool { return d.Bootable })
	if !bootable {
		p.Warnings = append(p.Warnings, fmt.Sprintf("no disk is marked bootable; the first (%s) becomes the root disk", p.Disks[0].Name))
	}
	return nil
}

func (pl *Planner) planAWS(ctx context.Context, p *Plan, tgt provider.Provider) error {
	a, ok := tgt.(*aws.Provider)
	if !ok {
		return fmt.Errorf("target site %s is not an EC2 region ferry can write to: %w", p.Request.Target, errs.ErrUnimplemented)
	}
	r := p.Request
	p.Region = tgt.Info().Region
	p.Method = cmp.Or(r.Method, MethodEBSDirect)
	if p.Method != MethodEBSDirect && p.Method != MethodS3Import {
		return fmt.Errorf("method %q: want %s or %s: %w", r.Method, MethodEBSDirect, MethodS3Import, errs.ErrInvalidArgument)
	}
	if p.Method == MethodS3Import && a.StagingBucket() == "" {
		return fmt.Errorf("method %s: site %s has no staging bucket (set its bucket setting): %w", MethodS3Import, r.Target, errs.ErrFailedPrecondition)
	}
	prices := pl.Prices
	if prices == nil {
		prices = pricing.Default()
	}
	switch it := cmp.Or(r.InstanceType, "auto"); it {
	case "auto":
		o, err := prices.Fit(p.Region, p.VM.CPUs, p.VM.MemoryBytes)
		if err != nil {
			return fmt.Errorf("instance type for %d vCPUs and %s: %w", p.VM.CPUs, progress.HumanBytes(p.VM.MemoryBytes), err)
		}
		p.Instance = &o
	default:
		o, ok := prices.Offer(p.Region, it)
		p.Instance = &o
		switch {
		case !ok:
			p.Warnings = append(p.Warnings, fmt.Sprintf("instance type %s has no size or price in the table for %s; cost unknown", it, p.Region))
		case o.VCPUs < p.VM.CPUs || o.MemoryMiB<<20 < p.VM.MemoryBytes:
			p.Warnings = append(p.Warnings, fmt.Sprintf("instance type %s (%d vCPUs, %d MiB) is smaller than the VM (%d vCPUs, %s)",
				it, o.VCPUs, o.MemoryMiB, p.VM.CPUs, progress.HumanBytes(p.VM.MemoryBytes)))
		}
	}
	subnets, err := a.ListSubnets(ctx)
	if err != nil {
		return fmt.Errorf("list subnets of %s: %w", p.Request.Target, err)
	}
	subnetName := func(id string) (string, bool) {
		for _, s := range subnets {
			if s.ID == id {
				return cmp.Or(s.Tags["Name"], s.CIDR+" in "+s.Zone), true
			}
		}
		return "", false
	}
	if r.Subnet != "" {
		if _, ok := subnetName(r.Subnet); !ok {
			return fmt.Errorf("subnet %s: not in region %s: %w", r.Subnet, p.Region, errs.ErrNotFound)
		}
	}
	p.Subnet = r.Subnet
	for i, n := range p.VM.NICs {
		m := NetworkMapping{NIC: i, Source: n.Network, Target: r.Subnet}
		if t, ok := r.NetworkMap[n.Network]; ok {
			m.Target = t
		}
		if m.Target != "" {
			name, ok := subnetName(m.Target)
			if !ok {
				return fmt.Errorf("NIC %d: network %q maps to subnet %s, which region %s does not have: %w", i, n.Network, m.Target, p.Region, errs.ErrNotFound)
			}
			m.TargetName = name
		} else {
			m.TargetName = "default subnet"
		}
		p.Networks = append(p.Networks, m)
	}
	if len(p.Networks) > 0 && p.Subnet == "" {
		p.Subnet = p.Networks[0].Target
	}
	if len(p.Networks) > 1 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("the VM has %d NICs; the instance gets one, in %s", len(p.Networks), cmp.Or(p.Subnet, "the default subnet")))
	}
	if len(r.SecurityGroups) > 0 {
		groups, err := a.ListSecurityGroups(ctx)
		if err != nil {
			return fmt.Errorf("list security groups of %s: %w", p.Request.Target, err)
		}
		for _, g := range r.SecurityGroups {
			if !slices.ContainsFunc(groups, func(s aws.SecurityGroup) bool { return s.ID == g }) {
				return fmt.Errorf("security group %s: not in region %s: %w", g, p.Region, errs.ErrNotFound)
			}
		}
		p.SecurityGroups = slices.Clone(r.SecurityGroups)
	}
	if r.SR != "" {
		return fmt.Errorf("--sr names XenServer storage; the target %s is an EC2 region: %w", p.Request.Target, errs.ErrInvalidArgument)
	}
	p.Storage = "gp3"
	return nil
}

func (pl *Planner) planXen(ctx context.Context, p *Plan, tgt provider.Provider) error {
	x, ok := tgt.(*xen.Provider)
	if !ok {
		return fmt.Errorf("target site %s is not a XenServer pool ferry can write to: %w", p.Request.Target, errs.ErrUnimplemented)
	}
	r := p.Request
	switch {
	case r.InstanceType != "" && r.InstanceType != "auto":
		return fmt.Errorf("--instance-type applies to EC2 targets; %s is a XenServer pool: %w", r.Target, errs.ErrInvalidArgument)
	case r.Subnet != "" || len(r.SecurityGroups) > 0:
		return fmt.Errorf("--subnet and --security-group apply to EC2 targets; %s is a XenServer pool (use --network-map): %w", r.Target, errs.ErrInvalidArgument)
	case r.Method != "" && r.Method != MethodXenImport:
		return fmt.Errorf("method %q: a XenServer target is written with %s: %w", r.Method, MethodXenImport, errs.ErrInvalidArgument)
	}
	p.Method = MethodXenImport
	srs, err := x.ListStorage(ctx)
	if err != nil {
		return fmt.Errorf("list SRs of %s: %w", r.Target, err)
	}
	var need int64
	for _, d := range p.Disks {
		need += d.TargetSize
	}
	if r.SR != "" {
		i := slices.IndexFunc(srs, func(s core.Storage) bool { return s.ID == r.SR || s.Name == r.SR })
		if i < 0 {
			return fmt.Errorf("SR %q: the pool has no SR with that UUID or name: %w", r.SR, errs.ErrNotFound)
		}
		sr := srs[i]
		if sr.SizeBytes > 0 && sr.FreeBytes < need {
			return fmt.Errorf("SR %s has %s free; the disks need %s: %w", sr.Name, progress.HumanBytes(sr.FreeBytes), progress.HumanBytes(need), errs.ErrFailedPrecondition)
		}
		p.Storage = sr.ID
	} else {
		fits := false
		for _, s := range srs {
			if s.SizeBytes == 0 || s.FreeBytes >= need {
				fits = true
			}
		}
		if len(srs) > 0 && !fits {
			return fmt.Errorf("no SR of %s has %s free for the disks: %w", r.Target, progress.HumanBytes(need), errs.ErrFailedPrecondition)
		}
	}
	nets, err := x.ListNetworks(ctx)
	if err != nil {
		return fmt.Errorf("list networks of %s: %w", r.Target, err)
	}
	for i, n := range p.VM.NICs {
		m := NetworkMapping{NIC: i, Source: n.Network}
		if t, ok := r.NetworkMap[n.Network]; ok {
			m.Target = t
		}
		if m.Target == "" {
			if len(nets) == 0 {
				return fmt.Errorf("NIC %d: the pool has no network: %w", i, errs.ErrFailedPrecondition)
			}
			m.Target, m.TargetName = nets[0].ID, nets[0].Name
		} else {
			j := slices.IndexFunc(nets, func(nw core.Network) bool { return nw.ID == m.Target || nw.Name == m.Target })
			if j < 0 {
				return fmt.Errorf("NIC %d: network %q maps to %q, which the pool does not have: %w", i, n.Network, m.Target, errs.ErrNotFound)
			}
			m.Target, m.TargetName = nets[j].ID, nets[j].Name
		}
		p.Networks = append(p.Networks, m)
	}
	return nil
}
