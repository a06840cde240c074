package aws

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
	"github.com/ferry-project/ferry/internal/provider/aws/ebsdirect"
)

// UploadOptions tune UploadDisk.
type UploadOptions struct {
	// Name is the snapshot's description and Name tag.
	Name string
	// Tags are set on the snapshot with ferry's own (ferry:job among
	// them, when the caller runs a job).
	Tags map[string]string
	// Resume and Save make the upload resumable block by block (see
	// ebsdirect.UploadOptions). With Save set, a failed upload keeps its
	// snapshot for the resume; the caller's job removes it if it gives up.
	Resume *ebsdirect.Checkpoint
	Save   func(ctx context.Context, cp ebsdirect.Checkpoint) error
	// SaveEvery is how many acknowledged blocks go between Save calls
	// (default 1).
	SaveEvery int
	// Sum receives the SHA-256 of every block sent (ebsdirect.UploadOptions.Sum).
	Sum      func(block int64, sum [32]byte)
	Progress progress.Reporter
}

// UploadDisk writes img into a new EBS snapshot with the EBS direct APIs
// and waits until it is completed. Only blocks holding data are sent.
func (p *Provider) UploadDisk(ctx context.Context, img disk.Image, o *UploadOptions) (ebsdirect.Result, error) {
	if o == nil {
		o = &UploadOptions{}
	}
	tags := ferryTags(o.Tags)
	if o.Name != "" {
		tags["Name"] = o.Name
	}
	res, err := ebsdirect.Upload(ctx, p.ebs, p.ec2, img, &ebsdirect.UploadOptions{
		Tags: tags, Description: cmp.Or(o.Name, "ferry upload"), Workers: p.cfg.Workers,
		Resume: o.Resume, Save: o.Save, SaveEvery: o.SaveEvery, Sum: o.Sum, Progress: o.Progress, Logger: p.log, Retry: p.retry,
		PollEvery: p.cfg.PollEvery, PollMax: p.cfg.PollMax,
	})
	if err != nil {
		return res, fmt.Errorf("aws: upload disk: %w", err)
	}
	return res, nil
}

// RegisterSpec describes an AMI over existing snapshots.
type RegisterSpec struct {
	Name        string
	Description string
	// Snapshots are the disks in device order; the first is the root.
	Snapshots []string
	// SizesGiB are the volume sizes, 0 for the snapshot's own.
	SizesGiB   []int64
	Firmware   core.Firmware // BIOS (legacy-bios) or UEFI
	VolumeType string        // default the configured one (gp3)
	Tags       map[string]string
}

// deviceNames returns n device names: the root device, then /dev/xvdb...
// (or /dev/sdb... under a /dev/sda1 root).
func (p *Provider) deviceNames(n int) []string {
	out := []string{p.cfg.RootDevice}
	prefix := "/dev/xvd"
	if p.cfg.RootDevice == "/dev/sda1" {
		prefix = "/dev/sd"
	}
	for i := 1; i < n; i++ {
		out = append(out, prefix+string(rune('a'+i)))
	}
	return out
}

// RegisterImage registers an x86_64 HVM AMI with ENA support whose block
// devices are the given snapshots, and returns its ID.
func (p *Provider) RegisterImage(ctx context.Context, spec RegisterSpec) (string, error) {
	if len(spec.Snapshots) == 0 || len(spec.Snapshots) > 25 {
		return "", fmt.Errorf("aws: register image %q: %d disks, want 1 to 25: %w", spec.Name, len(spec.Snapshots), errs.ErrInvalidArgument)
	}
	bootMode := ec2types.BootModeValuesLegacyBios
	if spec.Firmware == core.UEFI {
		bootMode = ec2types.BootModeValuesUefi
	}
	vt := ec2types.VolumeType(cmp.Or(spec.VolumeType, p.cfg.VolumeType))
	var maps []ec2types.BlockDeviceMapping
	for i, dev := range p.deviceNames(len(spec.Snapshots)) {
		ebsDev := &ec2types.EbsBlockDevice{SnapshotId: aws.String(spec.Snapshots[i]), DeleteOnTermination: aws.Bool(true), VolumeType: vt}
		if i < len(spec.SizesGiB) && spec.SizesGiB[i] > 0 {
			ebsDev.VolumeSize = aws.Int32(int32(spec.SizesGiB[i]))
		}
		maps = append(maps, ec2types.BlockDeviceMapping{DeviceName: aws.String(dev), Ebs: ebsDev})
	}
	tags := ferryTags(spec.Tags)
	out, err := p.ec2.RegisterImage(ctx, &ec2.RegisterImageInput{
		Name: aws.String(spec.Name), Description: aws.String(spec.Description),
		Architecture: ec2types.ArchitectureValuesX8664, VirtualizationType: aws.String("hvm"),
		EnaSupport: aws.Bool(true), BootMode: bootMode, RootDeviceName: aws.String(p.cfg.RootDevice),
		BlockDeviceMappings: maps, TagSpecifications: tagSpecs(tags, ec2types.ResourceTypeImage),
	})
	if err != nil {
		return "", wrap(err, "register image %q over %v", spec.Name, spec.Snapshots)
	}
	id := aws.ToString(out.ImageId)
	p.log.Info("aws: image registered", "ami", id, "snapshots", spec.Snapshots)
	return id, nil
}

// WaitImage polls until the AMI is available (a new AMI is pending for a
// while); failed or deregistered is a FailedPrecondition error.
func (p *Provider) WaitImage(ctx context.Context, id string) error {
	misses := 0
	return awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		imgs, err := p.describeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		if (isNotFound(err) || (err == nil && len(imgs) == 0)) && misses < 5 {
			misses++ // eventual consistency right after RegisterImage
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if len(imgs) == 0 {
			return false, fmt.Errorf("aws: image %s: not found: %w", id, errs.ErrNotFound)
		}
		switch st := ec2types.ImageState(imgs[0].State); st {
		case ec2types.ImageStateAvailable:
			return true, nil
		case ec2types.ImageStatePending:
			return false, nil
		default:
			return false, fmt.Errorf("aws: image %s is %s, waiting for available: %w", id, st, errs.ErrFailedPrecondition)
		}
	})
}

// DeregisterImage deregisters an AMI (its snapshots stay); an unknown AMI
// is no error.
func (p *Provider) DeregisterImage(ctx context.Context, id string) error {
	_, err := p.ec2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: aws.String(id)})
	if isNotFound(err) {
		return nil
	}
	return wrap(err, "deregister image %s", id)
}

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ImportVM writes each disk into a new EBS snapshot (EBS direct APIs),
// registers an AMI over them, launches an instance that fits the spec
// (subnet from o.Networks for the first NIC, volume type from o.Storage)
// and, unless Config.StartImported, stops it once running. On failure or
// cancellation everything created is removed.
func (p *Provider) ImportVM(ctx context.Context, spec core.VMSpec, disks []disk.Image, o *provider.ImportOptions) (core.VMID, error) {
	if o == nil {
		o = &provider.ImportOptions{}
	}
	if len(disks) == 0 {
		return "", fmt.Errorf("aws: import %q: no disks: %w", spec.Name, errs.ErrInvalidArgument)
	}
	if len(spec.Disks) != 0 && len(spec.Disks) != len(disks) {
		return "", fmt.Errorf("aws: import %q: %d disk descriptions for %d disks: %w", spec.Name, len(spec.Disks), len(disks), errs.ErrInvalidArgument)
	}
	vt := p.cfg.VolumeType
	if o.Storage != "" {
		vt = o.Storage[strings.LastIndex(o.Storage, "/")+1:] // "<zone>/<type>" or "<type>"
	}
	subnet := ""
	for _, n := range spec.NICs {
		if id, ok := o.Networks[n.Network]; ok && id != "" {
			subnet = id
			break
		}
	}
	// The root disk first: the bootable one, else the first.
	order := make([]int, len(disks))
	for i := range order {
		order[i] = i
	}
	for i, d := range spec.Disks {
		if d.Bootable {
			order[0], order[i] = i, 0
			break
		}
	}
	rep := progress.Or(o.Progress)
	var total int64
	for _, img := range disks {
		total += img.Size()
	}
	rep.SetTotal(total)
	diskRep := progress.KeepTotal(rep) // each upload's SetTotal would override the sum
	u := undo{log: p.log}
	fail := func(err error) (core.VMID, error) {
		u.run(ctx)
		return "", fmt.Errorf("aws: import %q: %w", spec.Name, err)
	}
	var snaps []string
	var sizes []int64
	for k, i := range order {
		rep.Phase(fmt.Sprintf("upload disk %d of %d", k+1, len(disks)))
		name := fmt.Sprintf("%s disk %d", spec.Name, i)
		if i < len(spec.Disks) && spec.Disks[i].Name != "" {
			name = spec.Name + " " + spec.Disks[i].Name
		}
		res, err := p.UploadDisk(ctx, disks[i], &UploadOptions{Name: name, Tags: o.Tags, Progress: diskRep})
		if res.SnapshotID != "" && err == nil {
			sid := res.SnapshotID
			u.add("delete snapshot "+sid, func(ctx context.Context) error { return p.deleteOne(ctx, sid) })
		}
		if err != nil {
			return fail(err)
		}
		snaps = append(snaps, res.SnapshotID)
		sizes = append(sizes, res.VolumeGiB)
	}
	rep.Phase("register image")
	ami, err := p.RegisterImage(ctx, RegisterSpec{
		Name: fmt.Sprintf("%s-%s", strings.Map(amiNameChar, spec.Name), randomSuffix()), Description: cmp.Or(spec.Description, "imported by ferry"),
		Snapshots: snaps, SizesGiB: sizes, Firmware: spec.Firmware, VolumeType: vt, Tags: o.Tags,
	})
	if err != nil {
		return fail(err)
	}
	u.add("deregister image "+ami, func(ctx context.Context) error { return p.DeregisterImage(ctx, ami) })
	if err := p.WaitImage(ctx, ami); err != nil {
		return fail(err)
	}
	rep.Phase("launch")
	id, err := p.Launch(ctx, LaunchSpec{AMI: ami, InstanceType: pickInstanceType(spec.CPUs, spec.MemoryBytes), SubnetID: subnet, Name: spec.Name, Tags: o.Tags})
	if err != nil {
		return fail(err)
	}
	u.add("terminate instance "+id, func(ctx context.Context) error { return p.TerminateInstances(ctx, id) })
	if !p.cfg.StartImported {
		rep.Phase("stop")
		if err := p.StopInstances(ctx, false, id); err != nil {
			return fail(err)
		}
		if err := p.WaitInstance(ctx, id, ec2types.InstanceStateNameStopped); err != nil {
			return fail(err)
		}
	}
	p.log.Info("aws: vm imported", "vm_id", id, "ami", ami, "snapshots", snaps)
	return core.VMID(id), nil
}

// amiNameChar keeps the characters AMI names allow.
func amiNameChar(r rune) rune {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("()[] ./-'@_", r):
		return r
	}
	return '-'
}

// DeleteVM terminates an instance and waits until it is terminated (its
// volumes go with it); when ferry registered the AMI it was launched from
// (tagged ferry:managed=true), the AMI is deregistered and its
// ferry-managed snapshots deleted.
func (p *Provider) DeleteVM(ctx context.Context, id core.VMID) error {
	inst, err := p.describeInstance(ctx, string(id))
	if err != nil {
		return err
	}
	if err := p.TerminateInstances(ctx, string(id)); err != nil {
		return err
	}
	if err := p.WaitInstance(ctx, string(id), ec2types.InstanceStateNameTerminated); err != nil && !isNotFound(err) {
		return err
	}
	ami := aws.ToString(inst.ImageId)
	if ami == "" {
		return nil
	}
	imgs, err := p.describeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{ami}})
	if isNotFound(err) || len(imgs) == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	if imgs[0].Tags[TagManaged] != "true" {
		return nil
	}
	if len(imgs[0].Snapshots) == 0 {
		return p.DeregisterImage(ctx, ami)
	}
	if err := p.DeregisterImage(ctx, ami); err != nil {
		return err
	}
	snaps, err := p.describeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: imgs[0].Snapshots})
	if err != nil && !isNotFound(err) {
		return err
	}
	for _, s := range snaps {
		if s.Tags[TagManaged] == "true" {
			if err := p.deleteOne(ctx, s.ID); err != nil && !isNotFound(err) {
				return err
			}
		}
	}
	p.log.Info("aws: vm deleted", "vm_id", id, "ami", ami)
	return nil
}
