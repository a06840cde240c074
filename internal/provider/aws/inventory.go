package aws

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/provider"
)

// powerState maps an EC2 instance state to ferry's.
func powerState(s ec2types.InstanceStateName) core.PowerState {
	switch s {
	case ec2types.InstanceStateNameRunning:
		return core.Running
	case ec2types.InstanceStateNameStopped:
		return core.Halted
	case ec2types.InstanceStateNamePending, ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameShuttingDown:
		return core.Pending
	}
	return core.Unknown
}

// ListVMs lists the region's instances that are not terminated.
func (p *Provider) ListVMs(ctx context.Context, f provider.Filter, fn func(core.VM) error) error {
	in := &ec2.DescribeInstancesInput{}
	if len(f.IDs) > 0 {
		var ids []string
		for _, id := range f.IDs {
			if strings.HasPrefix(string(id), "i-") && !strings.ContainsAny(string(id), ", ") {
				ids = append(ids, string(id))
			}
		}
		if len(ids) == 0 {
			return nil // no instance ID among them: nothing matches
		}
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("instance-id"), Values: ids})
	}
	if f.Name != "" {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("tag:Name"), Values: []string{f.Name}})
	}
	var insts []ec2types.Instance
	pg := ec2.NewDescribeInstancesPaginator(p.ec2, in)
	for pg.HasMorePages() {
		out, err := pg.NextPage(ctx)
		if err != nil {
			return wrap(err, "list instances")
		}
		for _, r := range out.Reservations {
			for _, inst := range r.Instances {
				if inst.State == nil || inst.State.Name == ec2types.InstanceStateNameTerminated {
					continue
				}
				// The filters again, for endpoints that ignore them.
				if len(f.IDs) > 0 && !slices.Contains(f.IDs, core.VMID(aws.ToString(inst.InstanceId))) {
					continue
				}
				if f.Name != "" && tagMap(inst.Tags)["Name"] != f.Name {
					continue
				}
				if f.PowerState != "" && powerState(inst.State.Name) != f.PowerState {
					continue
				}
				insts = append(insts, inst)
			}
		}
	}
	vols, err := p.volumesOf(ctx, insts)
	if err != nil {
		return err
	}
	for _, inst := range insts {
		if err := fn(p.vmOf(ctx, inst, vols)); err != nil {
			return err
		}
	}
	return nil
}

// volumesOf describes the volumes attached to insts.
func (p *Provider) volumesOf(ctx context.Context, insts []ec2types.Instance) (map[string]ec2types.Volume, error) {
	var ids []string
	for _, inst := range insts {
		for _, m := range inst.BlockDeviceMappings {
			if m.Ebs != nil && m.Ebs.VolumeId != nil {
				ids = append(ids, *m.Ebs.VolumeId)
			}
		}
	}
	vols := map[string]ec2types.Volume{}
	for chunk := range slices.Chunk(ids, 200) {
		vs, err := p.describeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: chunk})
		if isNotFound(err) {
			// A volume went away between the two calls: one by one.
			for _, id := range chunk {
				v, err := p.describeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
				if err != nil && !isNotFound(err) {
					return nil, err
				}
				vs = append(vs, v...)
			}
		} else if err != nil {
			return nil, err
		}
		for _, v := range vs {
			vols[aws.ToString(v.VolumeId)] = v
		}
	}
	return vols, nil
}

func (p *Provider) describeVolumes(ctx context.Context, in *ec2.DescribeVolumesInput) ([]ec2types.Volume, error) {
	var out []ec2types.Volume
	pg := ec2.NewDescribeVolumesPaginator(p.ec2, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe volumes")
		}
		out = append(out, page.Volumes...)
	}
	return out, nil
}

// vmOf maps an instance.
func (p *Provider) vmOf(ctx context.Context, inst ec2types.Instance, vols map[string]ec2types.Volume) core.VM {
	tags := tagMap(inst.Tags)
	vm := core.VM{
		Site: p.info.Name, ID: core.VMID(aws.ToString(inst.InstanceId)), Name: tags["Name"],
		PowerState: powerState(inst.State.Name), InstanceTyp: string(inst.InstanceType), Tags: tags,
		Firmware: core.BIOS,
	}
	if inst.BootMode == ec2types.BootModeValuesUefi || inst.CurrentInstanceBootMode == ec2types.InstanceBootModeValuesUefi {
		vm.Firmware = core.UEFI
	}
	if inst.Placement != nil {
		vm.Host = aws.ToString(inst.Placement.AvailabilityZone)
	}
	if inst.CpuOptions != nil && aws.ToInt32(inst.CpuOptions.CoreCount) > 0 {
		vm.CPUs = int(aws.ToInt32(inst.CpuOptions.CoreCount) * max(1, aws.ToInt32(inst.CpuOptions.ThreadsPerCore)))
	}
	if it, ok := p.instanceType(ctx, string(inst.InstanceType)); ok {
		if vm.CPUs == 0 {
			vm.CPUs = it.vcpus
		}
		vm.MemoryBytes = it.memMiB << 20
	}
	maps := slices.Clone(inst.BlockDeviceMappings)
	slices.SortStableFunc(maps, func(a, b ec2types.InstanceBlockDeviceMapping) int {
		ra, rb := aws.ToString(a.DeviceName) == aws.ToString(inst.RootDeviceName), aws.ToString(b.DeviceName) == aws.ToString(inst.RootDeviceName)
		if ra != rb {
			if ra {
				return -1
			}
			return 1
		}
		return cmp.Compare(aws.ToString(a.DeviceName), aws.ToString(b.DeviceName))
	})
	for i, m := range maps {
		if m.Ebs == nil {
			continue
		}
		id := aws.ToString(m.Ebs.VolumeId)
		d := core.Disk{ID: core.DiskID(id), Name: aws.ToString(m.DeviceName), Position: i,
			Bootable: aws.ToString(m.DeviceName) == aws.ToString(inst.RootDeviceName)}
		if v, ok := vols[id]; ok {
			d.Size = int64(aws.ToInt32(v.Size)) << 30
			d.Storage = string(v.VolumeType)
		}
		vm.Disks = append(vm.Disks, d)
	}
	nics := slices.Clone(inst.NetworkInterfaces)
	slices.SortStableFunc(nics, func(a, b ec2types.InstanceNetworkInterface) int {
		return cmp.Compare(deviceIndex(a), deviceIndex(b))
	})
	for _, n := range nics {
		vm.NICs = append(vm.NICs, core.NIC{Name: aws.ToString(n.NetworkInterfaceId), Network: aws.ToString(n.SubnetId),
			MAC: strings.ToLower(aws.ToString(n.MacAddress)), IP: aws.ToString(n.PrivateIpAddress)})
	}
	if len(nics) == 0 && (inst.SubnetId != nil || inst.PrivateIpAddress != nil) {
		// An answer without networkInterfaceSet: the primary interface
		// from the instance's own fields.
		vm.NICs = append(vm.NICs, core.NIC{Name: "eth0", Network: aws.ToString(inst.SubnetId), IP: aws.ToString(inst.PrivateIpAddress)})
	}
	return vm
}

func deviceIndex(n ec2types.InstanceNetworkInterface) int32 {
	if n.Attachment == nil {
		return 0
	}
	return aws.ToInt32(n.Attachment.DeviceIndex)
}

// instanceType is what ferry needs of an instance type.
type instanceType struct {
	name   string
	vcpus  int
	memMiB int64
}

// knownTypes are the instance types ImportVM picks from, smallest first;
// their sizes also spare a DescribeInstanceTypes call when listing.
var knownTypes = []instanceType{
	{"t3.nano", 2, 512}, {"t3.micro", 2, 1024}, {"t3.small", 2, 2048}, {"t3.medium", 2, 4096},
	{"t3.large", 2, 8192}, {"t3.xlarge", 4, 16384}, {"t3.2xlarge", 8, 32768},
	{"m5.4xlarge", 16, 65536}, {"m5.8xlarge", 32, 131072}, {"m5.12xlarge", 48, 196608},
	{"m5.16xlarge", 64, 262144}, {"m5.24xlarge", 96, 393216},
}

// instanceType returns the vCPUs and memory of an instance type, from the
// table or DescribeInstanceTypes (cached); ok is false when neither knows.
func (p *Provider) instanceType(ctx context.Context, name string) (instanceType, bool) {
	if i := slices.IndexFunc(knownTypes, func(t instanceType) bool { return t.name == name }); i >= 0 {
		return knownTypes[i], true
	}
	p.mu.Lock()
	info, ok := p.types[name]
	p.mu.Unlock()
	if !ok {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := p.ec2.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []ec2types.InstanceType{ec2types.InstanceType(name)}})
		if err != nil || len(out.InstanceTypes) == 0 {
			p.log.Debug("aws: instance type details unavailable", "instance_type", name, "err", err)
			return instanceType{}, false
		}
		info = out.InstanceTypes[0]
		p.mu.Lock()
		p.types[name] = info
		p.mu.Unlock()
	}
	t := instanceType{name: name}
	if info.VCpuInfo != nil {
		t.vcpus = int(aws.ToInt32(info.VCpuInfo.DefaultVCpus))
	}
	if info.MemoryInfo != nil {
		t.memMiB = aws.ToInt64(info.MemoryInfo.SizeInMiB)
	}
	return t, true
}

// pickInstanceType returns the smallest known type with at least cpus
// vCPUs and mem bytes of memory, or the largest.
func pickInstanceType(cpus int, mem int64) string {
	for _, t := range knownTypes {
		if t.vcpus >= cpus && t.memMiB<<20 >= mem {
			return t.name
		}
	}
	return knownTypes[len(knownTypes)-1].name
}

// volumeTypes are the EBS volume types ListStorage offers in each zone.
var volumeTypes = []string{"gp3", "gp2", "io2", "io1", "st1", "sc1", "standard"}

// ListStorage lists EBS volume types per available zone: ID
// "<zone>/<type>". EBS reports no capacity, so sizes are 0.
func (p *Provider) ListStorage(ctx context.Context) ([]core.Storage, error) {
	zones, err := p.zones(ctx)
	if err != nil {
		return nil, err
	}
	var out []core.Storage
	for _, z := range zones {
		for _, t := range volumeTypes {
			out = append(out, core.Storage{ID: z + "/" + t, Name: t + " in " + z, Type: t})
		}
	}
	return out, nil
}

func (p *Provider) zones(ctx context.Context) ([]string, error) {
	out, err := p.ec2.DescribeAvailabilityZones(ctx, &ec2.DescribeAvailabilityZonesInput{})
	if err != nil {
		return nil, wrap(err, "list availability zones")
	}
	var zones []string
	for _, z := range out.AvailabilityZones {
		if z.State == "" || z.State == ec2types.AvailabilityZoneStateAvailable {
			zones = append(zones, aws.ToString(z.ZoneName))
		}
	}
	slices.Sort(zones)
	return zones, nil
}

// ListNetworks lists the region's subnets: ID the subnet ID, name its Name
// tag or "<cidr> in <zone>".
func (p *Provider) ListNetworks(ctx context.Context) ([]core.Network, error) {
	subs, err := p.ListSubnets(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]core.Network, 0, len(subs))
	for _, s := range subs {
		out = append(out, core.Network{ID: s.ID, Name: cmp.Or(s.Tags["Name"], s.CIDR+" in "+s.Zone)})
	}
	return out, nil
}

// Image is an AMI.
type Image struct {
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	State        string            `json:"state"`
	Architecture string            `json:"architecture"`
	BootMode     string            `json:"boot_mode,omitempty"`
	RootDevice   string            `json:"root_device"`
	Snapshots    []string          `json:"snapshots"` // in device order
	Tags         map[string]string `json:"tags,omitempty"`
}

// ListImages lists the AMIs the account owns.
func (p *Provider) ListImages(ctx context.Context) ([]Image, error) {
	return p.describeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}})
}

func (p *Provider) describeImages(ctx context.Context, in *ec2.DescribeImagesInput) ([]Image, error) {
	var out []Image
	pg := ec2.NewDescribeImagesPaginator(p.ec2, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list images")
		}
		for _, im := range page.Images {
			img := Image{ID: aws.ToString(im.ImageId), Name: aws.ToString(im.Name), State: string(im.State),
				Architecture: string(im.Architecture), BootMode: string(im.BootMode), RootDevice: aws.ToString(im.RootDeviceName), Tags: tagMap(im.Tags)}
			for _, m := range im.BlockDeviceMappings {
				if m.Ebs != nil && m.Ebs.SnapshotId != nil {
					img.Snapshots = append(img.Snapshots, *m.Ebs.SnapshotId)
				}
			}
			out = append(out, img)
		}
	}
	return out, nil
}

// SnapshotInfo is an EBS snapshot.
type SnapshotInfo struct {
	ID        string            `json:"id"`
	VolumeID  string            `json:"volume_id,omitempty"`
	State     string            `json:"state"`
	Progress  string            `json:"progress,omitempty"`
	SizeGiB   int64             `json:"size_gib"`
	StartTime time.Time         `json:"start_time,omitzero"`
	Message   string            `json:"message,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
}

// ListSnapshots lists the snapshots the account owns.
func (p *Provider) ListSnapshots(ctx context.Context) ([]SnapshotInfo, error) {
	return p.describeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
}

func (p *Provider) describeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput) ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	pg := ec2.NewDescribeSnapshotsPaginator(p.ec2, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list snapshots")
		}
		for _, s := range page.Snapshots {
			out = append(out, SnapshotInfo{ID: aws.ToString(s.SnapshotId), VolumeID: aws.ToString(s.VolumeId), State: string(s.State),
				Progress: aws.ToString(s.Progress), SizeGiB: int64(aws.ToInt32(s.VolumeSize)), StartTime: aws.ToTime(s.StartTime),
				Message: aws.ToString(s.StateMessage), Tags: tagMap(s.Tags)})
		}
	}
	return out, nil
}

// Volume is an EBS volume.
type Volume struct {
	ID          string            `json:"id"`
	SizeGiB     int64             `json:"size_gib"`
	Type        string            `json:"type"`
	Zone        string            `json:"zone"`
	State       string            `json:"state"`
	SnapshotID  string            `json:"snapshot_id,omitempty"`
	Attachments []string          `json:"attachments,omitempty"` // instance IDs
	Tags        map[string]string `json:"tags,omitempty"`
}

// ListVolumes lists the region's volumes.
func (p *Provider) ListVolumes(ctx context.Context) ([]Volume, error) {
	vs, err := p.describeVolumes(ctx, &ec2.DescribeVolumesInput{})
	if err != nil {
		return nil, err
	}
	out := make([]Volume, 0, len(vs))
	for _, v := range vs {
		vol := Volume{ID: aws.ToString(v.VolumeId), SizeGiB: int64(aws.ToInt32(v.Size)), Type: string(v.VolumeType),
			Zone: aws.ToString(v.AvailabilityZone), State: string(v.State), SnapshotID: aws.ToString(v.SnapshotId), Tags: tagMap(v.Tags)}
		for _, a := range v.Attachments {
			vol.Attachments = append(vol.Attachments, aws.ToString(a.InstanceId))
		}
		out = append(out, vol)
	}
	return out, nil
}

// Subnet is a VPC subnet.
type Subnet struct {
	ID      string            `json:"id"`
	VPC     string            `json:"vpc"`
	CIDR    string            `json:"cidr"`
	Zone    string            `json:"zone"`
	Default bool              `json:"default,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"`
}

// ListSubnets lists the region's subnets.
func (p *Provider) ListSubnets(ctx context.Context) ([]Subnet, error) {
	var out []Subnet
	pg := ec2.NewDescribeSubnetsPaginator(p.ec2, &ec2.DescribeSubnetsInput{})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list subnets")
		}
		for _, s := range page.Subnets {
			out = append(out, Subnet{ID: aws.ToString(s.SubnetId), VPC: aws.ToString(s.VpcId), CIDR: aws.ToString(s.CidrBlock),
				Zone: aws.ToString(s.AvailabilityZone), Default: aws.ToBool(s.DefaultForAz), Tags: tagMap(s.Tags)})
		}
	}
	return out, nil
}

// SecurityGroup is a VPC security group.
type SecurityGroup struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	VPC         string            `json:"vpc,omitempty"`
	Description string            `json:"description,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// ListSecurityGroups lists the region's security groups.
func (p *Provider) ListSecurityGroups(ctx context.Context) ([]SecurityGroup, error) {
	var out []SecurityGroup
	pg := ec2.NewDescribeSecurityGroupsPaginator(p.ec2, &ec2.DescribeSecurityGroupsInput{})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list security groups")
		}
		for _, g := range page.SecurityGroups {
			out = append(out, SecurityGroup{ID: aws.ToString(g.GroupId), Name: aws.ToString(g.GroupName), VPC: aws.ToString(g.VpcId),
				Description: aws.ToString(g.Description), Tags: tagMap(g.Tags)})
		}
	}
	return out, nil
}

// describeInstance returns one instance; an unknown ID is NotFound.
func (p *Provider) describeInstance(ctx context.Context, id string) (ec2types.Instance, error) {
	out, err := p.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return ec2types.Instance{}, wrap(err, "describe instance %s", id)
	}
	for _, r := range out.Reservations {
		for _, inst := range r.Instances {
			if aws.ToString(inst.InstanceId) == id {
				return inst, nil
			}
		}
	}
	return ec2types.Instance{}, fmt.Errorf("aws: describe instance %s: no such instance: %w", id, errNotFound)
}
