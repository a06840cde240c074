package awslab

import (
	"context"
	"fmt"
	"golang.org/x/sync/errgroup"
	"os"
	"slices"
	"strconv"
	"strings"
)

// volumeSizes are the sizes (GiB) each volume type allows.
var volumeSizes = map[string][2]int64{
	"gp2": {1, 16384}, "gp3": {1, 16384}, "io1": {4, 16384}, "io2": {4, 16384},
	"st1": {125, 16384}, "sc1": {125, 16384}, "standard": {1, 1024},
}

func checkVolumeType(t string) error {
	if _, ok := volumeSizes[t]; !ok {
		return ec2Err("InvalidParameterValue", "Value (%s) for parameter volumeType is invalid. Valid volume types: gp2, gp3, io1, io2, st1, sc1, standard.", t)
	}
	return nil
}

func checkVolumeSize(t string, size int64) error {
	r := volumeSizes[t]
	if size < r[0] || size > r[1] {
		return ec2Err("InvalidParameterValue", "Volume of %dGiB is outside the %d to %d GiB that volume type %s allows.", size, r[0], r[1], t)
	}
	return nil
}

// newVolumeLocked records a new volume and starts filling its file: empty,
// or with a snapshot's blocks.
func (s *Server) newVolumeLocked(size int64, snapID, az, typ string) *volume {
	if typ == "" {
		typ = "gp2"
	}
	now := s.now()
	v := &volume{ID: newID("vol"), Size: size, SnapshotID: snapID, AZ: az, Type: typ, State: "creating", Until: now.Add(s.delay), Created: now}
	v.Lineage = v.ID
	if sn := s.st.Snapshots[snapID]; sn != nil {
		v.Lineage = sn.Lineage
	}
	switch typ {
	case "gp3":
		v.Iops = 3000
	case "gp2":
		v.Iops = max(100, min(16000, 3*size))
	case "io1", "io2":
		v.Iops = 100
	}
	s.st.Volumes[v.ID] = v
	s.dirty = true
	s.startVolumeFillLocked(v)
	return v
}

// startVolumeFillLocked writes a volume's file in the background: a
// sparse raw file of its size, holding its snapshot's blocks.
func (s *Server) startVolumeFillLocked(v *volume) {
	id, size, snap := v.ID, v.Size*gib, v.SnapshotID
	s.goJobLocked(id, func(ctx context.Context) error {
		var x index
		if snap != "" {
			var err error
			if x, err = s.snapIndex(snap); err != nil {
				return err
			}
		}
		return s.writeVolumeFile(ctx, id, size, x)
	}, func(err error) {
		v := s.st.Volumes[id]
		if v == nil {
			return
		}
		if err != nil {
			s.log.Error("fill volume", "volume", id, "err", err)
			v.State = "error"
			return
		}
		v.Ready = true
		if v.Attach != nil {
			if in := s.st.Instances[v.Attach.InstanceID]; in != nil {
				s.maybeBootLocked(in)
			}
		}
	})
}

// volumeWorkers is how many blocks writeVolumeFile moves at once.
const volumeWorkers = 4

// writeVolumeFile creates a volume's raw file from a block index.
func (s *Server) writeVolumeFile(ctx context.Context, id string, size int64, x index) error {
	f, err := s.tmpFile(id + "-*.raw")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	// Blocks are read (and their hashes checked) and written by a few
	// goroutines at once: a block store read waits on the disk.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(volumeWorkers)
	for _, e := range x {
		if e.Index*blockSize >= size || gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			buf := s.blocks.buffer()
			defer s.blocks.release(buf)
			if err := s.blocks.read(e.Hash, buf); err != nil {
				return fmt.Errorf("volume %s: %w", id, err)
			}
			n := min(blockSize, size-e.Index*blockSize)
			if _, err := f.WriteAt(buf[:n], e.Index*blockSize); err != nil {
				return fmt.Errorf("volume %s: %w", id, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if err := os.Rename(tmp, s.volumePath(id)); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	ok = true
	return nil
}

func (s *Server) deleteVolumeLocked(v *volume) {
	s.cancelJobLocked(v.ID)
	delete(s.st.Volumes, v.ID)
	delete(s.st.Tags, v.ID)
	os.Remove(s.volumePath(v.ID))
	s.dirty = true
}

func (s *Server) volumeLocked(id string) (*volume, error) {
	if id == "" {
		return nil, missing("VolumeId")
	}
	if err := checkID("vol", id); err != nil {
		return nil, err
	}
	v := s.st.Volumes[id]
	if v == nil {
		return nil, notFound("vol", id)
	}
	return v, nil
}

func (s *Server) volumeNode(v *volume, name string) *node {
	var att []*node
	if a := v.Attach; a != nil {
		att = append(att, el("item",
			el("volumeId", v.ID), el("instanceId", a.InstanceID), el("device", a.Device),
			el("status", a.State), el("attachTime", ec2Time(a.Time)), el("deleteOnTermination", a.DeleteOnTermination)))
	}
	kids := []*node{
		el("volumeId", v.ID),
		el("size", v.Size),
		el("snapshotId", v.SnapshotID),
		el("availabilityZone", v.AZ),
		el("status", v.State),
		el("createTime", ec2Time(v.Created)),
		set("attachmentSet", att),
		tagSet(s.st.Tags[v.ID]),
		el("volumeType", v.Type),
		el("encrypted", false),
		el("multiAttachEnabled", false),
	}
	if v.Iops > 0 {
		kids = append(kids, el("iops", v.Iops))
	}
	if v.Type == "gp3" {
		kids = append(kids, el("throughput", 125))
	}
	return el(name, kids)
}

func (s *Server) volumeAttrs(v *volume) attrs {
	return func(name string) ([]string, bool) {
		a := v.Attach
		if a == nil {
			a = &attachment{}
		}
		switch name {
		case "volume-id":
			return []string{v.ID}, true
		case "status":
			return []string{v.State}, true
		case "size":
			return []string{strconv.FormatInt(v.Size, 10)}, true
		case "snapshot-id":
			return []string{v.SnapshotID}, true
		case "availability-zone":
			return []string{v.AZ}, true
		case "volume-type":
			return []string{v.Type}, true
		case "encrypted":
			return []string{"false"}, true
		case "create-time":
			return []string{ec2Time(v.Created)}, true
		case "attachment.instance-id":
			return []string{a.InstanceID}, true
		case "attachment.device":
			return []string{a.Device}, true
		case "attachment.status":
			return []string{a.State}, true
		case "attachment.delete-on-termination":
			return []string{strconv.FormatBool(a.DeleteOnTermination)}, true
		case "attachment.attach-time":
			return []string{ec2Time(a.Time)}, true
		}
		return nil, false
	}
}

func (s *Server) describeVolumes(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids := p.list("VolumeId")
	var list []*volume
	if len(ids) > 0 {
		if p.has("MaxResults") {
			return nil, ec2Err("InvalidParameterCombination", "The parameter volumeSet cannot be used with the parameter maxResults")
		}
		var unknown []string
		for _, id := range ids {
			if err := checkID("vol", id); err != nil {
				return nil, err
			}
			if v := s.st.Volumes[id]; v != nil {
				list = append(list, v)
			} else {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			return nil, ec2Err("InvalidVolume.NotFound", "The volume '%s' does not exist.", strings.Join(unknown, ", "))
		}
	} else {
		list = sortedValues(s.st.Volumes)
	}
	var hits []*node
	for _, v := range list {
		ok, err := matchFilters(fs, s.st.Tags[v.ID], s.volumeAttrs(v))
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, s.volumeNode(v, "item"))
		}
	}
	from, to, next, err := page(p, len(hits), 5, 500)
	if err != nil {
		return nil, err
	}
	return []*node{set("volumeSet", hits[from:to]), opt("nextToken", next)}, nil
}

func (s *Server) createVolume(_ context.Context, p params) ([]*node, error) {
	az := p.str("AvailabilityZone")
	if az == "" {
		return nil, missing("AvailabilityZone")
	}
	if !slices.Contains(s.zones(), az) {
		return nil, ec2Err("InvalidParameterValue", "Invalid availability zone: [%s]", az)
	}
	typ := p.str("VolumeType")
	if typ == "" {
		typ = "gp2"
	}
	if err := checkVolumeType(typ); err != nil {
		return nil, err
	}
	size, err := p.integer("Size", 0)
	if err != nil {
		return nil, err
	}
	snapID := p.str("SnapshotId")
	if snapID != "" {
		if err := checkID("snap", snapID); err != nil {
			return nil, err
		}
		sn := s.st.Snapshots[snapID]
		if sn == nil {
			return nil, notFound("snap", snapID)
		}
		if sn.Status != "completed" {
			return nil, ec2Err("IncorrectState", "Snapshot is in invalid state - %s", sn.Status)
		}
		if size == 0 {
			size = sn.Size
		}
		if size < sn.Size {
			return nil, ec2Err("InvalidParameterValue", "Volume of size %dGiB is smaller than snapshot '%s', expect size >= %dGiB", size, snapID, sn.Size)
		}
	} else if !p.has("Size") {
		return nil, ec2Err("MissingParameter", "The request must contain the parameter size or snapshotId")
	}
	if err := checkVolumeSize(typ, size); err != nil {
		return nil, err
	}
	tags, err := p.tagSpecs("volume")
	if err != nil {
		return nil, err
	}
	if tok := p.str("ClientToken"); tok != "" {
		for _, v := range sortedValues(s.st.Volumes) {
			if v.Token == tok {
				return s.volumeNode(v, "x").kids, nil
			}
		}
	}
	v := s.newVolumeLocked(size, snapID, az, typ)
	v.Token = p.str("ClientToken")
	if iops, _ := p.integer("Iops", 0); iops > 0 {
		v.Iops = iops
	}
	if t := tags["volume"]; len(t) > 0 {
		s.st.Tags[v.ID] = cloneTags(t)
	}
	s.log.Info("volume created", "volume", v.ID, "size_gib", size, "snapshot", snapID)
	return s.volumeNode(v, "x").kids, nil
}

func (s *Server) deleteVolume(_ context.Context, p params) ([]*node, error) {
	v, err := s.volumeLocked(p.str("VolumeId"))
	if err != nil {
		return nil, err
	}
	if v.Attach != nil {
		return nil, ec2Err("VolumeInUse", "Volume %s is currently attached to %s", v.ID, v.Attach.InstanceID)
	}
	s.deleteVolumeLocked(v)
	return []*node{el("return", true)}, nil
}

func (s *Server) attachVolume(_ context.Context, p params) ([]*node, error) {
	v, err := s.volumeLocked(p.str("VolumeId"))
	if err != nil {
		return nil, err
	}
	if p.str("InstanceId") == "" {
		return nil, missing("InstanceId")
	}
	in, err := s.instanceLocked(p.str("InstanceId"))
	if err != nil {
		return nil, err
	}
	dev := p.str("Device")
	if dev == "" {
		return nil, missing("Device")
	}
	if !strings.HasPrefix(dev, "/dev/") && !strings.HasPrefix(dev, "xvd") {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter device is invalid. %s is not a valid EBS device name.", dev, dev)
	}
	if v.Attach != nil {
		return nil, ec2Err("VolumeInUse", "%s is already attached to an instance", v.ID)
	}
	if v.State != "available" {
		return nil, ec2Err("IncorrectState", "Volume '%s' is in the '%s' state.", v.ID, v.State)
	}
	if in.State != "running" && in.State != "stopped" {
		return nil, ec2Err("IncorrectInstanceState", "Instance '%s' is not 'running' or 'stopped'.", in.ID)
	}
	if in.AZ != v.AZ {
		return nil, ec2Err("InvalidVolume.ZoneMismatch", "The volume '%s' is not in the same availability zone as instance '%s'", v.ID, in.ID)
	}
	for _, o := range s.instanceVolumesLocked(in.ID) {
		if o.Attach.Device == dev {
			return nil, ec2Err("InvalidParameterValue", "Attachment point %s is already in use", dev)
		}
	}
	now := s.now()
	v.Attach = &attachment{InstanceID: in.ID, Device: dev, State: "attaching", Time: now, Until: now.Add(s.delay)}
	v.State = "in-use"
	s.dirty = true
	if s.guests[in.ID] != nil {
		s.consoleNote(in.ID, fmt.Sprintf("volume %s attached as %s (the guest sees it after its next boot)", v.ID, dev))
	}
	a := v.Attach
	return []*node{
		el("attachTime", ec2Time(a.Time)), el("device", a.Device), el("instanceId", a.InstanceID),
		el("status", a.State), el("volumeId", v.ID), el("deleteOnTermination", false),
	}, nil
}

func (s *Server) detachVolume(_ context.Context, p params) ([]*node, error) {
	v, err := s.volumeLocked(p.str("VolumeId"))
	if err != nil {
		return nil, err
	}
	a := v.Attach
	if a == nil {
		return nil, ec2Err("IncorrectState", "Volume '%s' is in the '%s' state.", v.ID, v.State)
	}
	if id := p.str("InstanceId"); id != "" && id != a.InstanceID {
		return nil, ec2Err("InvalidAttachment.NotFound", "Volume '%s' is not attached to instance '%s'", v.ID, id)
	}
	if d := p.str("Device"); d != "" && d != a.Device {
		return nil, ec2Err("InvalidAttachment.NotFound", "Volume '%s' is not attached at '%s'", v.ID, d)
	}
	if a.State == "detaching" {
		return nil, ec2Err("IncorrectState", "Volume '%s' is already detaching.", v.ID)
	}
	if in := s.st.Instances[a.InstanceID]; in != nil && a.Device == in.RootDevice && in.State != "stopped" && in.State != "terminated" {
		return nil, ec2Err("OperationNotPermitted", "The root volume %s of instance %s cannot be detached while the instance is %s; stop it first.", v.ID, in.ID, in.State)
	}
	now := s.now()
	a.State, a.Until = "detaching", now.Add(s.delay)
	s.dirty = true
	return []*node{
		el("attachTime", ec2Time(a.Time)), el("device", a.Device), el("instanceId", a.InstanceID),
		el("status", a.State), el("volumeId", v.ID), el("deleteOnTermination", a.DeleteOnTermination),
	}, nil
}
