package awslab

import (
	"context"
	"slices"
	"strconv"
	"strings"
)

func (s *Server) imageLocked(id string) (*image, error) {
	if id == "" {
		return nil, missing("ImageId")
	}
	if err := checkID("ami", id); err != nil {
		return nil, err
	}
	im := s.st.Images[id]
	if im == nil {
		return nil, notFound("ami", id)
	}
	return im, nil
}

func (s *Server) imageNode(im *image) *node {
	var bdm []*node
	for _, m := range im.Mappings {
		if m.NoDevice {
			bdm = append(bdm, el("item", el("deviceName", m.Device), el("noDevice", "")))
			continue
		}
		bdm = append(bdm, el("item", el("deviceName", m.Device), el("ebs",
			opt("snapshotId", m.SnapshotID),
			el("volumeSize", m.VolumeSize),
			el("deleteOnTermination", m.DeleteOnTermination),
			el("volumeType", m.VolumeType),
			el("encrypted", false),
		)))
	}
	var reason *node
	if im.State == "failed" {
		reason = el("stateReason", el("code", "Client.InvalidSnapshot.NotFound"), el("message", "A snapshot of the image failed or was deleted."))
	}
	return el("item",
		el("imageId", im.ID),
		el("imageLocation", s.st.Account+"/"+im.Name),
		el("imageState", im.State),
		el("imageOwnerId", s.st.Account),
		el("creationDate", ec2Time(im.Created)),
		el("isPublic", false),
		el("architecture", im.Arch),
		el("imageType", "machine"),
		opt("platform", im.Platform),
		el("platformDetails", platformDetails(im.Platform)),
		el("usageOperation", "RunInstances"),
		el("name", im.Name),
		opt("description", im.Description),
		el("rootDeviceType", "ebs"),
		el("rootDeviceName", im.RootDevice),
		set("blockDeviceMapping", bdm),
		el("virtualizationType", im.Virt),
		tagSet(s.st.Tags[im.ID]),
		el("hypervisor", "xen"),
		el("enaSupport", im.EnaSupport),
		opt("bootMode", im.BootMode),
		reason,
	)
}

func platformDetails(p string) string {
	if p == "windows" {
		return "Windows"
	}
	return "Linux/UNIX"
}

func (s *Server) imageAttrs(im *image) attrs {
	return func(name string) ([]string, bool) {
		switch name {
		case "image-id":
			return []string{im.ID}, true
		case "name":
			return []string{im.Name}, true
		case "state":
			return []string{im.State}, true
		case "architecture":
			return []string{im.Arch}, true
		case "owner-id":
			return []string{s.st.Account}, true
		case "root-device-type":
			return []string{"ebs"}, true
		case "root-device-name":
			return []string{im.RootDevice}, true
		case "virtualization-type":
			return []string{im.Virt}, true
		case "image-type":
			return []string{"machine"}, true
		case "is-public":
			return []string{"false"}, true
		case "description":
			return []string{im.Description}, true
		case "hypervisor":
			return []string{"xen"}, true
		case "platform":
			return []string{im.Platform}, true
		case "creation-date":
			return []string{ec2Time(im.Created)}, true
		case "boot-mode":
			return []string{im.BootMode}, true
		case "block-device-mapping.snapshot-id", "block-device-mapping.device-name", "block-device-mapping.volume-size", "block-device-mapping.volume-type":
			var out []string
			for _, m := range im.Mappings {
				switch name {
				case "block-device-mapping.snapshot-id":
					out = append(out, m.SnapshotID)
				case "block-device-mapping.device-name":
					out = append(out, m.Device)
				case "block-device-mapping.volume-size":
					out = append(out, strconv.FormatInt(m.VolumeSize, 10))
				default:
					out = append(out, m.VolumeType)
				}
			}
			return out, true
		}
		return nil, false
	}
}

func (s *Server) describeImages(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	if owners := p.list("Owner"); len(owners) > 0 && !slices.Contains(owners, "self") && !slices.Contains(owners, s.st.Account) {
		return []*node{set("imagesSet", nil)}, nil
	}
	ids := p.list("ImageId")
	var list []*image
	if len(ids) > 0 {
		var unknown []string
		for _, id := range ids {
			if err := checkID("ami", id); err != nil {
				return nil, err
			}
			if im := s.st.Images[id]; im != nil {
				list = append(list, im)
			} else {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			return nil, ec2Err("InvalidAMIID.NotFound", "The image id '[%s]' does not exist", strings.Join(unknown, ", "))
		}
	} else {
		list = sortedValues(s.st.Images)
	}
	var hits []*node
	for _, im := range list {
		ok, err := matchFilters(fs, s.st.Tags[im.ID], s.imageAttrs(im))
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, s.imageNode(im))
		}
	}
	from, to, next, err := page(p, len(hits), 1, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("imagesSet", hits[from:to]), opt("nextToken", next)}, nil
}

func validImageName(n string) bool {
	if len(n) < 3 || len(n) > 128 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("()[] ./-'@_", c)) {
			return false
		}
	}
	return true
}

// imageSpec is what RegisterImage (or an import) registers.
type imageSpec struct {
	Name, Description, Arch, Virt, BootMode, RootDevice, Platform string
	EnaSupport                                                    bool
	Mappings                                                      []blockMapping
}

func (s *Server) registerImage(_ context.Context, p params) ([]*node, error) {
	if p.str("ImageLocation") != "" {
		return nil, ec2Err("InvalidParameter", "The lab registers EBS-backed images from snapshots only; ImageLocation (an S3 manifest) is not supported.")
	}
	spec := imageSpec{
		Name: p.str("Name"), Description: p.str("Description"), Arch: p.str("Architecture"),
		Virt: p.str("VirtualizationType"), BootMode: p.str("BootMode"), RootDevice: p.str("RootDeviceName"),
	}
	ena, err := p.boolean("EnaSupport")
	if err != nil {
		return nil, err
	}
	spec.EnaSupport = ena
	for _, r := range p.structs("BlockDeviceMapping") {
		m := blockMapping{Device: r.str("DeviceName"), SnapshotID: r.str("Ebs.SnapshotId"), VolumeType: r.str("Ebs.VolumeType"), DeleteOnTermination: true}
		if m.Device == "" {
			return nil, missing("BlockDeviceMapping.DeviceName")
		}
		if r.has("NoDevice") {
			m.NoDevice = true
			spec.Mappings = append(spec.Mappings, m)
			continue
		}
		if r.has("VirtualName") {
			continue // instance store: nothing to keep
		}
		if m.VolumeSize, err = r.integer("Ebs.VolumeSize", 0); err != nil {
			return nil, err
		}
		if r.has("Ebs.DeleteOnTermination") {
			if m.DeleteOnTermination, err = r.boolean("Ebs.DeleteOnTermination"); err != nil {
				return nil, err
			}
		}
		spec.Mappings = append(spec.Mappings, m)
	}
	tags, err := p.tagSpecs("image", "snapshot")
	if err != nil {
		return nil, err
	}
	im, err := s.registerImageLocked(spec)
	if err != nil {
		return nil, err
	}
	if t := tags["image"]; len(t) > 0 {
		s.st.Tags[im.ID] = cloneTags(t)
	}
	if t := tags["snapshot"]; len(t) > 0 {
		for _, m := range im.Mappings {
			if m.SnapshotID != "" {
				s.st.Tags[m.SnapshotID] = cloneTags(t)
			}
		}
	}
	return []*node{el("imageId", im.ID)}, nil
}

// registerImageLocked checks an image spec and records a pending image.
func (s *Server) registerImageLocked(spec imageSpec) (*image, error) {
	if spec.Name == "" {
		return nil, missing("Name")
	}
	if !validImageName(spec.Name) {
		return nil, ec2Err("InvalidAMIName.Malformed", "AMI names must be between 3 and 128 characters long, and may contain letters, numbers, '(', ')', '.', '-', '/' and '_'")
	}
	for _, o := range s.st.Images {
		if o.Name == spec.Name {
			return nil, ec2Err("InvalidAMIName.Duplicate", "AMI name %s is already in use by AMI %s", spec.Name, o.ID)
		}
	}
	if spec.Arch == "" {
		spec.Arch = "x86_64"
	}
	if !slices.Contains([]string{"i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac"}, spec.Arch) {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter architecture is invalid.", spec.Arch)
	}
	if spec.Virt == "" {
		spec.Virt = "hvm"
	}
	if spec.Virt != "hvm" && spec.Virt != "paravirtual" {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter virtualizationType is invalid.", spec.Virt)
	}
	if spec.BootMode != "" && !slices.Contains([]string{"legacy-bios", "uefi", "uefi-preferred"}, spec.BootMode) {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter bootMode is invalid.", spec.BootMode)
	}
	if spec.RootDevice == "" {
		return nil, missing("RootDeviceName")
	}
	if len(spec.Mappings) == 0 {
		return nil, ec2Err("InvalidBlockDeviceMapping", "An EBS-backed image needs a block device mapping with a snapshot for its root device %s.", spec.RootDevice)
	}
	rootFound := false
	seen := map[string]bool{}
	for i := range spec.Mappings {
		m := &spec.Mappings[i]
		if seen[m.Device] {
			return nil, ec2Err("InvalidBlockDeviceMapping", "The device '%s' is used more than once.", m.Device)
		}
		seen[m.Device] = true
		if m.NoDevice {
			continue
		}
		if m.VolumeType == "" {
			m.VolumeType = "gp2"
		}
		if err := checkVolumeType(m.VolumeType); err != nil {
			return nil, err
		}
		if m.SnapshotID != "" {
			if err := checkID("snap", m.SnapshotID); err != nil {
				return nil, err
			}
			sn := s.st.Snapshots[m.SnapshotID]
			if sn == nil {
				return nil, notFound("snap", m.SnapshotID)
			}
			if sn.Status == "error" {
				return nil, ec2Err("IncorrectState", "Snapshot %s is in the error state.", sn.ID)
			}
			if m.VolumeSize == 0 {
				m.VolumeSize = sn.Size
			}
			if m.VolumeSize < sn.Size {
				return nil, ec2Err("InvalidBlockDeviceMapping", "Volume of size %dGB is smaller than snapshot '%s', expect size >= %dGB", m.VolumeSize, sn.ID, sn.Size)
			}
		} else if m.VolumeSize < 1 {
			return nil, ec2Err("InvalidBlockDeviceMapping", "The device '%s' needs a snapshot or a volume size.", m.Device)
		}
		if err := checkVolumeSize(m.VolumeType, m.VolumeSize); err != nil {
			return nil, err
		}
		if m.Device == spec.RootDevice {
			if m.SnapshotID == "" {
				return nil, ec2Err("InvalidBlockDeviceMapping", "The root device %s has no snapshot.", m.Device)
			}
			rootFound = true
		}
	}
	if !rootFound {
		return nil, ec2Err("InvalidBlockDeviceMapping", "No block device mapping for the root device %s.", spec.RootDevice)
	}
	now := s.now()
	im := &image{
		ID: newID("ami"), Name: spec.Name, Description: spec.Description, Arch: spec.Arch, Virt: spec.Virt,
		BootMode: spec.BootMode, EnaSupport: spec.EnaSupport, RootDevice: spec.RootDevice, Mappings: spec.Mappings,
		State: "pending", Until: now.Add(s.delay), Created: now, Platform: spec.Platform,
	}
	s.st.Images[im.ID] = im
	s.dirty = true
	s.log.Info("image registered", "image", im.ID, "name", im.Name)
	return im, nil
}

func (s *Server) deregisterImage(_ context.Context, p params) ([]*node, error) {
	im, err := s.imageLocked(p.str("ImageId"))
	if err != nil {
		return nil, err
	}
	delSnaps, err := p.boolean("DeleteAssociatedSnapshots")
	if err != nil {
		return nil, err
	}
	delete(s.st.Images, im.ID)
	delete(s.st.Tags, im.ID)
	s.dirty = true
	out := []*node{el("return", true)}
	if delSnaps {
		var res []*node
		for _, m := range im.Mappings {
			sn := s.st.Snapshots[m.SnapshotID]
			if sn == nil {
				continue
			}
			code := "success"
			for _, o := range s.st.Images {
				for _, om := range o.Mappings {
					if om.SnapshotID == sn.ID {
						code = "error"
					}
				}
			}
			if code == "success" {
				s.deleteSnapshotLocked(sn)
			}
			res = append(res, el("item", el("snapshotId", sn.ID), el("returnCode", code)))
		}
		out = append(out, set("deleteSnapshotResultSet", res))
	}
	s.log.Info("image deregistered", "image", im.ID)
	return out, nil
}
