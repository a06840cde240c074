package awslab

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// instanceTypes are the instance types the lab knows: vCPUs and memory in
// MiB. QEMU guests get at most 1 GiB.
var instanceTypes = map[string]struct {
	CPUs int
	MiB  int64
}{
	"m1.small": {1, 1740}, "t2.nano": {1, 512}, "t2.micro": {1, 1024}, "t2.small": {1, 2048}, "t2.medium": {2, 4096},
	"t3.nano": {2, 512}, "t3.micro": {2, 1024}, "t3.small": {2, 2048}, "t3.medium": {2, 4096}, "t3.large": {2, 8192},
	"t3a.micro": {2, 1024}, "t3a.small": {2, 2048}, "t4g.micro": {2, 1024}, "m5.large": {2, 8192}, "m5.xlarge": {4, 16384},
	"m6i.large": {2, 8192}, "c5.large": {2, 4096}, "c5.xlarge": {4, 8192}, "r5.large": {2, 16384},
	"t3.xlarge": {4, 16384}, "t3.2xlarge": {8, 32768}, "m5.2xlarge": {8, 32768}, "m5.4xlarge": {16, 65536},
	"m5.8xlarge": {32, 131072}, "m5.12xlarge": {48, 196608}, "m5.16xlarge": {64, 262144}, "m5.24xlarge": {96, 393216},
}

var stateCodes = map[string]int{
	"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80,
}

func (s *Server) instanceLocked(id string) (*instance, error) {
	if err := checkID("i", id); err != nil {
		return nil, err
	}
	in := s.st.Instances[id]
	if in == nil {
		return nil, notFound("i", id)
	}
	return in, nil
}

// instanceIDs reads InstanceId.N and finds every instance; unknown IDs
// are reported together, as EC2 does.
func (s *Server) instancesLocked(p params) ([]*instance, error) {
	ids := p.list("InstanceId")
	if len(ids) == 0 {
		return nil, missing("InstanceId")
	}
	var out []*instance
	var unknown []string
	for _, id := range ids {
		if err := checkID("i", id); err != nil {
			return nil, err
		}
		in := s.st.Instances[id]
		if in == nil {
			unknown = append(unknown, id)
			continue
		}
		out = append(out, in)
	}
	if len(unknown) > 0 {
		return nil, ec2Err("InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(unknown, ", "))
	}
	return out, nil
}

func (s *Server) instanceNode(in *instance) *node {
	var bdm []*node
	for _, v := range s.instanceVolumesLocked(in.ID) {
		bdm = append(bdm, el("item",
			el("deviceName", v.Attach.Device),
			el("ebs",
				el("volumeId", v.ID),
				el("status", v.Attach.State),
				el("attachTime", ec2Time(v.Attach.Time)),
				el("deleteOnTermination", v.Attach.DeleteOnTermination),
			),
		))
	}
	var groups []*node
	for _, g := range in.Groups {
		name := ""
		if sg := s.st.Groups[g]; sg != nil {
			name = sg.Name
		}
		groups = append(groups, el("item", el("groupId", g), el("groupName", name)))
	}
	it := instanceTypes[in.Type]
	var stateReason *node
	if in.ReasonCode != "" {
		stateReason = el("stateReason", el("code", in.ReasonCode), el("message", in.ReasonMessage))
	}
	ip := in.PrivateIP
	dns := "ip-" + strings.ReplaceAll(ip, ".", "-") + "." + s.region + ".compute.internal"
	if s.region == "us-east-1" {
		dns = "ip-" + strings.ReplaceAll(ip, ".", "-") + ".ec2.internal"
	}
	if in.State == "terminated" {
		ip, dns = "", ""
	}
	return el("item",
		el("instanceId", in.ID),
		el("imageId", in.ImageID),
		el("instanceState", el("code", stateCodes[in.State]), el("name", in.State)),
		el("privateDnsName", dns),
		el("dnsName", ""),
		el("reason", in.TransitionNote),
		opt("keyName", in.KeyName),
		el("amiLaunchIndex", in.LaunchIndex),
		set("productCodes", nil),
		el("instanceType", in.Type),
		el("launchTime", ec2Time(in.Launched)),
		el("placement", el("availabilityZone", in.AZ), el("groupName", ""), el("tenancy", "default")),
		el("monitoring", el("state", "disabled")),
		opt("subnetId", in.SubnetID),
		opt("vpcId", in.VPCID),
		opt("privateIpAddress", ip),
		el("sourceDestCheck", true),
		set("groupSet", groups),
		stateReason,
		el("architecture", in.Arch),
		el("rootDeviceType", "ebs"),
		el("rootDeviceName", in.RootDevice),
		set("blockDeviceMapping", bdm),
		el("virtualizationType", "hvm"),
		opt("clientToken", in.ClientToken),
		tagSet(s.st.Tags[in.ID]),
		el("hypervisor", "xen"),
		el("ebsOptimized", false),
		el("enaSupport", true),
		el("cpuOptions", el("coreCount", it.CPUs), el("threadsPerCore", 1)),
		opt("bootMode", in.BootMode),
		el("platformDetails", "Linux/UNIX"),
		el("usageOperation", "RunInstances"),
	)
}

func (s *Server) instanceAttrs(in *instance) attrs {
	return func(name string) ([]string, bool) {
		switch name {
		case "instance-id":
			return []string{in.ID}, true
		case "instance-state-name":
			return []string{in.State}, true
		case "instance-state-code":
			return []string{strconv.Itoa(stateCodes[in.State])}, true
		case "instance-type":
			return []string{in.Type}, true
		case "image-id":
			return []string{in.ImageID}, true
		case "availability-zone":
			return []string{in.AZ}, true
		case "subnet-id":
			return []string{in.SubnetID}, true
		case "vpc-id":
			return []string{in.VPCID}, true
		case "private-ip-address":
			return []string{in.PrivateIP}, true
		case "reservation-id":
			return []string{in.Reservation}, true
		case "key-name":
			return []string{in.KeyName}, true
		case "architecture":
			return []string{in.Arch}, true
		case "root-device-type":
			return []string{"ebs"}, true
		case "root-device-name":
			return []string{in.RootDevice}, true
		case "owner-id":
			return []string{s.st.Account}, true
		case "client-token":
			return []string{in.ClientToken}, true
		case "launch-time":
			return []string{ec2Time(in.Launched)}, true
		case "instance.group-id", "group-id":
			return in.Groups, true
		case "block-device-mapping.volume-id":
			var out []string
			for _, v := range s.instanceVolumesLocked(in.ID) {
				out = append(out, v.ID)
			}
			return out, true
		case "block-device-mapping.device-name":
			var out []string
			for _, v := range s.instanceVolumesLocked(in.ID) {
				out = append(out, v.Attach.Device)
			}
			return out, true
		}
		return nil, false
	}
}

func (s *Server) describeInstances(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	var list []*instance
	if len(p.list("InstanceId")) > 0 {
		if p.has("MaxResults") {
			return nil, ec2Err("InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
		}
		if list, err = s.instancesLocked(p); err != nil {
			return nil, err
		}
	} else {
		list = sortedValues(s.st.Instances)
	}
	var hits []*instance
	for _, in := range list {
		ok, err := matchFilters(fs, s.st.Tags[in.ID], s.instanceAttrs(in))
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, in)
		}
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	// group by reservation, in order of first appearance
	var order []string
	byRes := map[string][]*node{}
	for _, in := range hits[from:to] {
		if byRes[in.Reservation] == nil {
			order = append(order, in.Reservation)
		}
		byRes[in.Reservation] = append(byRes[in.Reservation], s.instanceNode(in))
	}
	var res []*node
	for _, r := range order {
		res = append(res, el("item",
			el("reservationId", r),
			el("ownerId", s.st.Account),
			set("groupSet", nil),
			set("instancesSet", byRes[r]),
		))
	}
	return []*node{set("reservationSet", res), opt("nextToken", next)}, nil
}

// deviceLetter returns the device name for the n-th extra volume:
// /dev/sdb, /dev/sdc, ...
func nextDevice(used map[string]bool) string {
	for c := 'f'; c <= 'z'; c++ {
		d := "/dev/sd" + string(c)
		if !used[d] {
			return d
		}
	}
	return ""
}

func (s *Server) runInstances(ctx context.Context, p params) ([]*node, error) {
	imageID := p.str("ImageId")
	if imageID == "" {
		return nil, missing("ImageId")
	}
	if err := checkID("ami", imageID); err != nil {
		return nil, err
	}
	im := s.st.Images[imageID]
	if im == nil {
		return nil, notFound("ami", imageID)
	}
	if im.State != "available" {
		return nil, ec2Err("InvalidAMIID.Unavailable", "Image %s is not available (state %s).", imageID, im.State)
	}
	minCount, err := p.integer("MinCount", 0)
	if err != nil {
		return nil, err
	}
	maxCount, err := p.integer("MaxCount", 0)
	if err != nil {
		return nil, err
	}
	if !p.has("MinCount") {
		return nil, missing("MinCount")
	}
	if !p.has("MaxCount") {
		return nil, missing("MaxCount")
	}
	if minCount < 1 || maxCount < minCount || maxCount > 20 {
		return nil, ec2Err("InvalidParameterValue", "MinCount %d and MaxCount %d: want 1 <= MinCount <= MaxCount <= 20 (the lab's instance limit).", minCount, maxCount)
	}
	typ := p.str("InstanceType")
	if typ == "" {
		typ = "m1.small"
	}
	if _, ok := instanceTypes[typ]; !ok {
		return nil, ec2Err("InvalidParameterValue", "Invalid value '%s' for InstanceType.", typ)
	}
	if tok := p.str("ClientToken"); tok != "" {
		var same []*instance
		for _, in := range sortedValues(s.st.Instances) {
			if in.ClientToken == tok {
				same = append(same, in)
			}
		}
		if len(same) > 0 {
			if same[0].ImageID != imageID || same[0].Type != typ {
				return nil, ec2Err("IdempotentParameterMismatch", "The client token %s was used with different parameters.", tok)
			}
			return s.reservationNodes(same), nil
		}
	}
	tags, err := p.tagSpecs("instance", "volume", "network-interface")
	if err != nil {
		return nil, err
	}
	sn, err := s.pickSubnetLocked(p.str("SubnetId"), p.str("Placement.AvailabilityZone"))
	if err != nil {
		return nil, err
	}
	groups := p.list("SecurityGroupId")
	for _, g := range groups {
		sg := s.st.Groups[g]
		if sg == nil {
			return nil, ec2Err("InvalidGroup.NotFound", "The security group '%s' does not exist", g)
		}
		if sg.VPCID != sn.VPCID {
			return nil, ec2Err("InvalidParameter", "Security group %s and subnet %s belong to different networks.", g, sn.ID)
		}
	}
	for _, name := range p.list("SecurityGroup") {
		found := ""
		for _, sg := range sortedValues(s.st.Groups) {
			if sg.Name == name && sg.VPCID == sn.VPCID {
				found = sg.ID
			}
		}
		if found == "" {
			return nil, ec2Err("InvalidGroup.NotFound", "The security group '%s' does not exist in VPC '%s'", name, sn.VPCID)
		}
		groups = append(groups, found)
	}
	if len(groups) == 0 {
		for _, sg := range sortedValues(s.st.Groups) {
			if sg.Name == "default" && sg.VPCID == sn.VPCID {
				groups = append(groups, sg.ID)
			}
		}
	}
	mappings, err := s.launchMappingsLocked(im, p.structs("BlockDeviceMapping"))
	if err != nil {
		return nil, err
	}
	if ud := p.str("UserData"); ud != "" {
		if _, err := base64.StdEncoding.DecodeString(ud); err != nil {
			return nil, ec2Err("InvalidParameterValue", "Invalid BASE64 encoding of user data.")
		}
	}
	now := s.now()
	res := "r-0" + randHex(16)
	var made []*instance
	for i := range maxCount {
		in := &instance{
			ID: newID("i"), Reservation: res, ImageID: im.ID, Type: typ, KeyName: p.str("KeyName"),
			SubnetID: sn.ID, VPCID: sn.VPCID, AZ: sn.AZ, PrivateIP: s.nextIPLocked(sn), Groups: groups,
			Arch: im.Arch, BootMode: im.BootMode, RootDevice: im.RootDevice, UserData: p.str("UserData"),
			ClientToken: p.str("ClientToken"), LaunchIndex: int(i), State: "pending", Until: now.Add(s.delay),
			Launched: now,
		}
		s.st.Instances[in.ID] = in
		if t := tags["instance"]; len(t) > 0 {
			s.st.Tags[in.ID] = cloneTags(t)
		}
		for _, m := range mappings {
			v := s.newVolumeLocked(m.VolumeSize, m.SnapshotID, sn.AZ, m.VolumeType)
			v.Attach = &attachment{InstanceID: in.ID, Device: m.Device, State: "attached", Time: now, Until: now, DeleteOnTermination: m.DeleteOnTermination}
			v.State = "creating"
			if t := tags["volume"]; len(t) > 0 {
				s.st.Tags[v.ID] = cloneTags(t)
			}
		}
		made = append(made, in)
		s.consoleNote(in.ID, fmt.Sprintf("instance launched from %s (%s)", im.ID, typ))
		s.maybeBootLocked(in)
	}
	s.dirty = true
	s.log.Info("instances launched", "reservation", res, "count", len(made), "image", im.ID)
	return s.reservationNodes(made), nil
}

func (s *Server) reservationNodes(ins []*instance) []*node {
	var items []*node
	for _, in := range ins {
		items = append(items, s.instanceNode(in))
	}
	var groups []*node
	if len(ins) > 0 {
		for _, g := range ins[0].Groups {
			name := ""
			if sg := s.st.Groups[g]; sg != nil {
				name = sg.Name
			}
			groups = append(groups, el("item", el("groupId", g), el("groupName", name)))
		}
	}
	res := ""
	if len(ins) > 0 {
		res = ins[0].Reservation
	}
	return []*node{el("reservationId", res), el("ownerId", s.st.Account), set("groupSet", groups), set("instancesSet", items)}
}

// launchMappingsLocked combines an AMI's block device mappings with a
// RunInstances call's BlockDeviceMapping.N overrides and additions.
func (s *Server) launchMappingsLocked(im *image, reqs []params) ([]blockMapping, error) {
	ms := slices.Clone(im.Mappings)
	for _, r := range reqs {
		dev := r.str("DeviceName")
		if dev == "" {
			return nil, missing("BlockDeviceMapping.DeviceName")
		}
		k := slices.IndexFunc(ms, func(m blockMapping) bool { return m.Device == dev })
		if r.has("NoDevice") {
			if k >= 0 {
				ms = slices.Delete(ms, k, k+1)
			}
			continue
		}
		var m blockMapping
		if k >= 0 {
			m = ms[k]
		} else {
			m = blockMapping{Device: dev, VolumeType: "gp3", DeleteOnTermination: true}
		}
		if v := r.str("Ebs.SnapshotId"); v != "" {
			sn := s.st.Snapshots[v]
			if sn == nil {
				return nil, notFound("snap", v)
			}
			m.SnapshotID, m.VolumeSize = v, sn.Size
		}
		if r.has("Ebs.VolumeSize") {
			n, err := r.integer("Ebs.VolumeSize", 0)
			if err != nil {
				return nil, err
			}
			m.VolumeSize = n
		}
		if v := r.str("Ebs.VolumeType"); v != "" {
			m.VolumeType = v
		}
		if r.has("Ebs.DeleteOnTermination") {
			b, err := r.boolean("Ebs.DeleteOnTermination")
			if err != nil {
				return nil, err
			}
			m.DeleteOnTermination = b
		}
		if m.VolumeSize < 1 {
			return nil, ec2Err("InvalidParameterValue", "Volume of size 0 GiB for device %s: give Ebs.VolumeSize.", dev)
		}
		if m.SnapshotID != "" {
			if sn := s.st.Snapshots[m.SnapshotID]; sn != nil && m.VolumeSize < sn.Size {
				return nil, ec2Err("InvalidBlockDeviceMapping", "Volume of size %dGB is smaller than snapshot '%s', expect size >= %dGB", m.VolumeSize, m.SnapshotID, sn.Size)
			}
		}
		if k >= 0 {
			ms[k] = m
		} else {
			ms = append(ms, m)
		}
	}
	for _, m := range ms {
		if err := checkVolumeType(m.VolumeType); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

func (s *Server) pickSubnetLocked(id, az string) (*subnet, error) {
	if id != "" {
		sn := s.st.Subnets[id]
		if sn == nil {
			return nil, ec2Err("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
		}
		if az != "" && az != sn.AZ {
			return nil, ec2Err("InvalidParameterValue", "Subnet %s is in %s, not %s.", id, sn.AZ, az)
		}
		return sn, nil
	}
	if az != "" && !slices.Contains(s.zones(), az) {
		return nil, ec2Err("InvalidParameterValue", "Invalid availability zone: [%s]", az)
	}
	for _, sn := range sortedValues(s.st.Subnets) {
		if sn.Default && (az == "" || sn.AZ == az) && (az != "" || sn.AZ == s.zones()[0]) {
			return sn, nil
		}
	}
	return nil, ec2Err("VPCIdNotSpecified", "No default VPC for this user.")
}

// nextIPLocked hands out the subnet's next private address.
func (s *Server) nextIPLocked(sn *subnet) string {
	pfx, err := netip.ParsePrefix(sn.CIDR)
	if err != nil {
		return ""
	}
	a := pfx.Addr().As4()
	n := sn.Next
	sn.Next++
	a[2] += byte(n >> 8)
	a[3] = byte(n)
	return netip.AddrFrom4(a).String()
}

func stateChange(in *instance, prev string) *node {
	return el("item",
		el("instanceId", in.ID),
		el("currentState", el("code", stateCodes[in.State]), el("name", in.State)),
		el("previousState", el("code", stateCodes[prev]), el("name", prev)),
	)
}

func (s *Server) startInstances(_ context.Context, p params) ([]*node, error) {
	ins, err := s.instancesLocked(p)
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		switch in.State {
		case "stopped", "pending", "running":
		default:
			return nil, ec2Err("IncorrectInstanceState", "The instance '%s' is not in a state from which it can be started.", in.ID)
		}
	}
	now := s.now()
	var items []*node
	for _, in := range ins {
		prev := in.State
		if prev == "stopped" {
			in.State, in.Until, in.Launched = "pending", now.Add(s.delay), now
			in.ReasonCode, in.ReasonMessage, in.TransitionNote = "", "", ""
			s.consoleNote(in.ID, "instance starting")
			s.maybeBootLocked(in)
			s.dirty = true
		}
		items = append(items, stateChange(in, prev))
	}
	return []*node{set("instancesSet", items)}, nil
}

func (s *Server) stopInstances(_ context.Context, p params) ([]*node, error) {
	ins, err := s.instancesLocked(p)
	if err != nil {
		return nil, err
	}
	force, err := p.boolean("Force")
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		if in.State == "terminated" || in.State == "shutting-down" {
			return nil, ec2Err("IncorrectInstanceState", "This instance '%s' is not in a state from which it can be stopped.", in.ID)
		}
	}
	now := s.now()
	var items []*node
	for _, in := range ins {
		prev := in.State
		if prev == "running" || prev == "pending" {
			s.beginStopLocked(in, "stopping", force, now)
			in.ReasonCode, in.ReasonMessage = "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"
			in.TransitionNote = fmt.Sprintf("User initiated (%s)", now.UTC().Format("2006-01-02 15:04:05 MST"))
		}
		items = append(items, stateChange(in, prev))
	}
	return []*node{set("instancesSet", items)}, nil
}

func (s *Server) terminateInstances(_ context.Context, p params) ([]*node, error) {
	ins, err := s.instancesLocked(p)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var items []*node
	for _, in := range ins {
		prev := in.State
		if prev != "terminated" && prev != "shutting-down" {
			s.beginStopLocked(in, "shutting-down", true, now)
			in.ReasonCode, in.ReasonMessage = "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"
			in.TransitionNote = fmt.Sprintf("User initiated (%s)", now.UTC().Format("2006-01-02 15:04:05 MST"))
		}
		items = append(items, stateChange(in, prev))
	}
	return []*node{set("instancesSet", items)}, nil
}

func (s *Server) rebootInstances(_ context.Context, p params) ([]*node, error) {
	ins, err := s.instancesLocked(p)
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		if in.State != "running" && in.State != "pending" {
			return nil, ec2Err("IncorrectInstanceState", "The instance '%s' is not in the 'running' state.", in.ID)
		}
	}
	for _, in := range ins {
		s.rebootGuestLocked(in)
	}
	return []*node{el("return", true)}, nil
}

// maxConsole is how much console output GetConsoleOutput returns: the
// last 64 KiB, as EC2 does.
const maxConsole = 64 << 10

func (s *Server) getConsoleOutput(_ context.Context, p params) ([]*node, error) {
	id := p.str("InstanceId")
	if id == "" {
		return nil, missing("InstanceId")
	}
	in, err := s.instanceLocked(id)
	if err != nil {
		return nil, err
	}
	b, _ := os.ReadFile(s.consolePath(in.ID))
	if len(b) > maxConsole {
		b = b[len(b)-maxConsole:]
	}
	return []*node{
		el("instanceId", in.ID),
		el("timestamp", ec2Time(s.now())),
		el("output", base64.StdEncoding.EncodeToString(b)),
	}, nil
}

func cloneTags(t map[string]string) map[string]string {
	out := make(map[string]string, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

func (s *Server) describeInstanceTypes(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	names := p.list("InstanceType")
	for _, n := range names {
		if _, ok := instanceTypes[n]; !ok {
			return nil, ec2Err("InvalidInstanceType", "The following supplied instance types do not exist: [%s]", n)
		}
	}
	var hits []*node
	for _, n := range sortedKeysOf(instanceTypes) {
		if len(names) > 0 && !slices.Contains(names, n) {
			continue
		}
		it := instanceTypes[n]
		burst := strings.HasPrefix(n, "t")
		ok, err := matchFilters(fs, nil, func(name string) ([]string, bool) {
			switch name {
			case "instance-type":
				return []string{n}, true
			case "vcpu-info.default-vcpus":
				return []string{strconv.Itoa(it.CPUs)}, true
			case "memory-info.size-in-mib":
				return []string{strconv.FormatInt(it.MiB, 10)}, true
			case "current-generation":
				return []string{strconv.FormatBool(n != "m1.small")}, true
			case "burstable-performance-supported":
				return []string{strconv.FormatBool(burst)}, true
			case "processor-info.supported-architecture":
				return []string{"x86_64"}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		threads := min(it.CPUs, 2)
		hits = append(hits, el("item",
			el("instanceType", n),
			el("currentGeneration", n != "m1.small"),
			el("freeTierEligible", n == "t2.micro" || n == "t3.micro"),
			set("supportedUsageClasses", []*node{el("item", "on-demand")}),
			set("supportedRootDeviceTypes", []*node{el("item", "ebs")}),
			set("supportedVirtualizationTypes", []*node{el("item", "hvm")}),
			el("bareMetal", false),
			el("hypervisor", "nitro"),
			el("processorInfo", set("supportedArchitectures", []*node{el("item", "x86_64")})),
			el("vCpuInfo", el("defaultVCpus", it.CPUs), el("defaultCores", max(it.CPUs/threads, 1)), el("defaultThreadsPerCore", threads)),
			el("memoryInfo", el("sizeInMiB", it.MiB)),
			el("instanceStorageSupported", false),
			el("burstablePerformanceSupported", burst),
			set("supportedBootModes", []*node{el("item", "legacy-bios"), el("item", "uefi")}),
		))
	}
	from, to, next, err := page(p, len(hits), 5, 100)
	if err != nil {
		return nil, err
	}
	return []*node{set("instanceTypeSet", hits[from:to]), opt("nextToken", next)}, nil
}

func sortedKeysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
