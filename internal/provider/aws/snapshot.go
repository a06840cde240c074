package aws

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws/ebsdirect"
)

// Snapshot snapshots every EBS volume of an instance at one point in time
// (CreateSnapshots) and waits until the snapshots are completed. The
// returned snapshot's ID is the snapshot IDs joined with ","; its disks are
// the VM's, with their snapshot IDs as IDs. On failure or cancellation the
// snapshots taken are deleted.
func (p *Provider) Snapshot(ctx context.Context, id core.VMID, o *provider.SnapshotOptions) (provider.Snapshot, error) {
	if o == nil {
		o = &provider.SnapshotOptions{}
	}
	vm, err := p.instanceVM(ctx, id)
	if err != nil {
		return provider.Snapshot{}, err
	}
	if len(vm.Disks) == 0 {
		return provider.Snapshot{}, fmt.Errorf("aws: snapshot %s: the instance has no EBS volume: %w", id, errs.ErrFailedPrecondition)
	}
	tags := ferryTags(o.Tags)
	if o.Name != "" {
		tags["Name"] = o.Name
	}
	u := undo{log: p.log}
	byVolume, err := p.CreateSnapshots(ctx, string(id), o.Name, tags)
	if errs.Is(err, errs.Unimplemented) {
		p.log.Info("aws: CreateSnapshots not served, snapshotting volume by volume", "vm_id", id)
		byVolume = map[string]string{}
		for _, d := range vm.Disks {
			sid, err2 := p.CreateSnapshot(ctx, string(d.ID), o.Name, tags)
			if err2 != nil {
				err = err2
				break
			}
			byVolume[string(d.ID)] = sid
			err = nil
		}
	}
	for _, sid := range byVolume {
		u.add("delete snapshot "+sid, func(ctx context.Context) error { return p.deleteOne(ctx, sid) })
	}
	if err != nil {
		u.run(ctx)
		return provider.Snapshot{}, err
	}
	snap := provider.Snapshot{VM: id}
	var ids []string
	for _, d := range vm.Disks {
		sid, ok := byVolume[string(d.ID)]
		if !ok {
			u.run(ctx)
			return provider.Snapshot{}, fmt.Errorf("aws: snapshot %s: no snapshot of volume %s came back: %w", id, d.ID, errs.ErrUnavailable)
		}
		ids = append(ids, sid)
		d.ID = core.DiskID(sid)
		snap.Disks = append(snap.Disks, d)
	}
	for _, sid := range ids {
		if err := ebsdirect.WaitCompleted(ctx, p.ec2, sid, p.cfg.PollEvery, p.cfg.PollMax); err != nil {
			u.run(ctx)
			return provider.Snapshot{}, fmt.Errorf("aws: snapshot %s: %w", id, err)
		}
	}
	snap.ID = core.SnapshotID(strings.Join(ids, ","))
	p.log.Info("aws: instance snapshotted", "vm_id", id, "snapshots", snap.ID)
	return snap, nil
}

// instanceVM describes instance id as a VM, its EBS volumes its disks.
func (p *Provider) instanceVM(ctx context.Context, id core.VMID) (core.VM, error) {
	inst, err := p.describeInstance(ctx, string(id))
	if err != nil {
		return core.VM{}, err
	}
	vols, err := p.volumesOf(ctx, []ec2types.Instance{inst})
	if err != nil {
		return core.VM{}, err
	}
	return p.vmOf(ctx, inst, vols), nil
}

// FindSnapshot finds the EBS snapshots of every volume of instance id that
// carry all of o.Tags (EC2 tags a snapshot as it makes it, so the name is
// not needed), the newest per volume, and waits for them to complete. A
// set missing a volume is not found. See provider.SnapshotFinder.
func (p *Provider) FindSnapshot(ctx context.Context, id core.VMID, o *provider.SnapshotOptions) (provider.Snapshot, bool, error) {
	if o == nil || len(o.Tags) == 0 {
		return provider.Snapshot{}, false, fmt.Errorf("aws: find a snapshot of %s: no tags to find it by: %w", id, errs.ErrInvalidArgument)
	}
	vm, err := p.instanceVM(ctx, id)
	if err != nil {
		return provider.Snapshot{}, false, err
	}
	if len(vm.Disks) == 0 {
		return provider.Snapshot{}, false, nil
	}
	in := &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}}
	var volIDs []string
	for _, d := range vm.Disks {
		volIDs = append(volIDs, string(d.ID))
	}
	in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("volume-id"), Values: volIDs})
	for k, v := range o.Tags {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("tag:" + k), Values: []string{v}})
	}
	found, err := p.describeSnapshots(ctx, in)
	if err != nil {
		return provider.Snapshot{}, false, err
	}
	newest := map[string]SnapshotInfo{}
	for _, s := range found {
		if s.State == string(ec2types.SnapshotStateError) {
			continue
		}
		if cur, ok := newest[s.VolumeID]; !ok || s.StartTime.After(cur.StartTime) {
			newest[s.VolumeID] = s
		}
	}
	snap := provider.Snapshot{VM: id}
	var ids []string
	for _, d := range vm.Disks {
		s, ok := newest[string(d.ID)]
		if !ok {
			return provider.Snapshot{}, false, nil
		}
		ids = append(ids, s.ID)
		d.ID = core.DiskID(s.ID)
		snap.Disks = append(snap.Disks, d)
	}
	for _, sid := range ids {
		if err := ebsdirect.WaitCompleted(ctx, p.ec2, sid, p.cfg.PollEvery, p.cfg.PollMax); err != nil {
			return provider.Snapshot{}, false, fmt.Errorf("aws: snapshot of %s found: %w", id, err)
		}
	}
	snap.ID = core.SnapshotID(strings.Join(ids, ","))
	return snap, true, nil
}

// CreateSnapshots snapshots every EBS volume of an instance at once and
// returns the snapshot IDs by volume ID. It does not wait for completion.
func (p *Provider) CreateSnapshots(ctx context.Context, instanceID, description string, tags map[string]string) (map[string]string, error) {
	out, err := p.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: aws.String(instanceID)},
		Description:           aws.String(description),
		TagSpecifications:     tagSpecs(tags, ec2types.ResourceTypeSnapshot),
	})
	if err != nil {
		return nil, wrap(err, "snapshot volumes of instance %s", instanceID)
	}
	m := map[string]string{}
	for _, s := range out.Snapshots {
		m[aws.ToString(s.VolumeId)] = aws.ToString(s.SnapshotId)
	}
	return m, nil
}

// CreateSnapshot snapshots one volume and returns the snapshot ID; it does
// not wait for completion.
func (p *Provider) CreateSnapshot(ctx context.Context, volumeID, description string, tags map[string]string) (string, error) {
	out, err := p.ec2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{
		VolumeId: aws.String(volumeID), Description: aws.String(description),
		TagSpecifications: tagSpecs(tags, ec2types.ResourceTypeSnapshot),
	})
	if err != nil {
		return "", wrap(err, "snapshot volume %s", volumeID)
	}
	return aws.ToString(out.SnapshotId), nil
}

// DeleteSnapshot deletes the snapshots of a (comma-separated) snapshot ID.
// An unknown snapshot is NotFound; a snapshot an AMI uses is
// FailedPrecondition.
func (p *Provider) DeleteSnapshot(ctx context.Context, id core.SnapshotID) error {
	ids := strings.Split(string(id), ",")
	for _, sid := range ids {
		if sid = strings.TrimSpace(sid); sid == "" {
			return fmt.Errorf("aws: delete snapshot %q: empty snapshot ID: %w", id, errs.ErrInvalidArgument)
		}
	}
	var firstErr error
	for _, sid := range ids {
		_, err := p.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(strings.TrimSpace(sid))})
		if err != nil && firstErr == nil {
			firstErr = wrap(err, "delete snapshot %s", sid)
		}
	}
	return firstErr
}

func (p *Provider) deleteOne(ctx context.Context, sid string) error {
	_, err := p.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(sid)})
	return wrap(err, "delete snapshot %s", sid)
}

// OpenDisk opens a disk as an Image through the EBS direct APIs: a
// completed EBS snapshot (snap-...), or a volume (vol-...), of which it
// takes a temporary snapshot (tagged ferry:temporary=true, crash-consistent
// if the volume is in use) that Close deletes. With a base snapshot, the
// Image's extents are the blocks that changed since it.
func (p *Provider) OpenDisk(ctx context.Context, d core.DiskID, base core.DiskID) (disk.Image, error) {
	id := string(d)
	switch {
	case strings.HasPrefix(id, "snap-"):
	case strings.HasPrefix(id, "vol-"):
	default:
		return nil, fmt.Errorf("aws: open disk %s: not an EBS snapshot or volume ID: %w", d, errs.ErrNotFound)
	}
	if base != "" && !strings.HasPrefix(string(base), "snap-") {
		if strings.HasPrefix(string(base), "vol-") {
			if _, err := p.describeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{string(base)}}); err != nil {
				return nil, fmt.Errorf("aws: open disk %s since %s: %w", d, base, err)
			}
			return nil, fmt.Errorf("aws: open disk %s since %s: a base must be a snapshot: %w", d, base, errs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("aws: open disk %s since %s: not an EBS snapshot ID: %w", d, base, errs.ErrNotFound)
	}
	var temp string
	if strings.HasPrefix(id, "vol-") {
		sid, err := p.CreateSnapshot(ctx, id, "ferry: temporary snapshot to read "+id, ferryTags(map[string]string{"ferry:temporary": "true"}))
		if err != nil {
			return nil, fmt.Errorf("aws: open disk %s: %w", d, err)
		}
		temp, id = sid, sid
		if err := ebsdirect.WaitCompleted(ctx, p.ec2, sid, p.cfg.PollEvery, p.cfg.PollMax); err != nil {
			p.dropTemp(ctx, sid)
			return nil, fmt.Errorf("aws: open disk %s: %w", d, err)
		}
	}
	img, err := ebsdirect.Open(ctx, p.ebs, id, &ebsdirect.OpenOptions{Base: string(base), EC2: p.ec2, Retry: p.retry, Logger: p.log})
	if err != nil {
		if temp != "" {
			p.dropTemp(ctx, temp)
		}
		return nil, fmt.Errorf("aws: open disk %s: %w", d, err)
	}
	if temp == "" {
		return img, nil
	}
	return &tempImage{Image: img, drop: func() { p.dropTemp(context.Background(), temp) }}, nil
}

// dropTemp deletes a temporary snapshot, whatever ctx's state.
func (p *Provider) dropTemp(ctx context.Context, sid string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := p.deleteOne(ctx, sid); err != nil && !errs.Is(err, errs.NotFound) {
		p.log.Warn("aws: delete temporary snapshot", "snapshot", sid, "err", err)
	}
}

// tempImage deletes its temporary snapshot on Close.
type tempImage struct {
	*ebsdirect.Image
	once sync.Once
	drop func()
}

func (t *tempImage) Close() error {
	err := t.Image.Close()
	t.once.Do(t.drop)
	return err
}
