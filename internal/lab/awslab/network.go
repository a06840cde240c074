package awslab

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The default VPC, its subnets (one per availability zone) and its
// default security group exist from the start; the lab serves their
// descriptions, not their creation.

func (s *Server) describeVpcs(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids := p.list("VpcId")
	for _, id := range ids {
		if s.st.VPCs[id] == nil {
			return nil, ec2Err("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", id)
		}
	}
	var hits []*node
	for _, v := range sortedValues(s.st.VPCs) {
		if len(ids) > 0 && !slices.Contains(ids, v.ID) {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[v.ID], func(name string) ([]string, bool) {
			switch name {
			case "vpc-id":
				return []string{v.ID}, true
			case "cidr", "cidr-block-association.cidr-block", "cidrBlock":
				return []string{v.CIDR}, true
			case "is-default", "isDefault":
				return []string{strconv.FormatBool(v.Default)}, true
			case "state":
				return []string{"available"}, true
			case "owner-id":
				return []string{s.st.Account}, true
			case "dhcp-options-id":
				return []string{v.DHCP}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		hits = append(hits, el("item",
			el("vpcId", v.ID),
			el("ownerId", s.st.Account),
			el("state", "available"),
			el("cidrBlock", v.CIDR),
			set("cidrBlockAssociationSet", []*node{el("item",
				el("cidrBlock", v.CIDR), el("associationId", "vpc-cidr-assoc-"+strings.TrimPrefix(v.ID, "vpc-")),
				el("cidrBlockState", el("state", "associated")))}),
			el("dhcpOptionsId", v.DHCP),
			tagSet(s.st.Tags[v.ID]),
			el("instanceTenancy", "default"),
			el("isDefault", v.Default),
		))
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("vpcSet", hits[from:to]), opt("nextToken", next)}, nil
}

// freeAddresses is how many addresses of a subnet are free: AWS reserves
// five per subnet.
func (s *Server) freeAddresses(sn *subnet) int {
	pfx, err := netip.ParsePrefix(sn.CIDR)
	if err != nil {
		return 0
	}
	total := 1 << (32 - pfx.Bits())
	used := 0
	for _, in := range s.st.Instances {
		if in.SubnetID == sn.ID && in.State != "terminated" {
			used++
		}
	}
	return total - 5 - used
}

func (s *Server) describeSubnets(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids := p.list("SubnetId")
	for _, id := range ids {
		if s.st.Subnets[id] == nil {
			return nil, ec2Err("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
		}
	}
	var hits []*node
	for _, sn := range sortedValues(s.st.Subnets) {
		if len(ids) > 0 && !slices.Contains(ids, sn.ID) {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[sn.ID], func(name string) ([]string, bool) {
			switch name {
			case "subnet-id":
				return []string{sn.ID}, true
			case "vpc-id":
				return []string{sn.VPCID}, true
			case "cidr-block", "cidr", "cidrBlock":
				return []string{sn.CIDR}, true
			case "availability-zone", "availabilityZone":
				return []string{sn.AZ}, true
			case "default-for-az", "defaultForAz":
				return []string{strconv.FormatBool(sn.Default)}, true
			case "state":
				return []string{"available"}, true
			case "owner-id":
				return []string{s.st.Account}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		hits = append(hits, el("item",
			el("subnetId", sn.ID),
			el("subnetArn", "arn:aws:ec2:"+s.region+":"+s.st.Account+":subnet/"+sn.ID),
			el("state", "available"),
			el("ownerId", s.st.Account),
			el("vpcId", sn.VPCID),
			el("cidrBlock", sn.CIDR),
			el("availableIpAddressCount", s.freeAddresses(sn)),
			el("availabilityZone", sn.AZ),
			el("availabilityZoneId", s.zoneID(sn.AZ)),
			el("defaultForAz", sn.Default),
			el("mapPublicIpOnLaunch", sn.Default),
			el("assignIpv6AddressOnCreation", false),
			tagSet(s.st.Tags[sn.ID]),
		))
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("subnetSet", hits[from:to]), opt("nextToken", next)}, nil
}

func (s *Server) describeSecurityGroups(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids, names := p.list("GroupId"), p.list("GroupName")
	for _, id := range ids {
		if s.st.Groups[id] == nil {
			return nil, ec2Err("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
		}
	}
	var hits []*node
	for _, g := range sortedValues(s.st.Groups) {
		if len(ids) > 0 && !slices.Contains(ids, g.ID) || len(names) > 0 && !slices.Contains(names, g.Name) {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[g.ID], func(name string) ([]string, bool) {
			switch name {
			case "group-id":
				return []string{g.ID}, true
			case "group-name":
				return []string{g.Name}, true
			case "vpc-id":
				return []string{g.VPCID}, true
			case "description":
				return []string{g.Description}, true
			case "owner-id":
				return []string{s.st.Account}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		hits = append(hits, el("item",
			el("ownerId", s.st.Account),
			el("groupId", g.ID),
			el("groupName", g.Name),
			el("groupDescription", g.Description),
			el("vpcId", g.VPCID),
			el("securityGroupArn", "arn:aws:ec2:"+s.region+":"+s.st.Account+":security-group/"+g.ID),
			set("ipPermissions", []*node{el("item",
				el("ipProtocol", "-1"),
				set("groups", []*node{el("item", el("userId", s.st.Account), el("groupId", g.ID))}),
				set("ipRanges", nil),
			)}),
			set("ipPermissionsEgress", []*node{el("item",
				el("ipProtocol", "-1"),
				set("groups", nil),
				set("ipRanges", []*node{el("item", el("cidrIp", "0.0.0.0/0"))}),
			)}),
			tagSet(s.st.Tags[g.ID]),
		))
	}
	if len(names) > 0 && len(hits) == 0 {
		return nil, ec2Err("InvalidGroup.NotFound", "The security group '%s' does not exist in default VPC", strings.Join(names, ", "))
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("securityGroupInfo", hits[from:to]), opt("nextToken", next)}, nil
}

// zoneID is an availability zone's ID, e.g. use1-az1 for us-east-1a.
func (s *Server) zoneID(az string) string {
	dirs := map[string]string{"east": "e", "west": "w", "north": "n", "south": "s", "central": "c",
		"northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw"}
	parts := strings.Split(s.region, "-")
	short := parts[0]
	for i, p := range parts[1:] {
		switch d, ok := dirs[p]; {
		case ok:
			short += d
		case i == len(parts)-2:
			short += p
		default:
			short += p[:1]
		}
	}
	return short + "-az" + strconv.Itoa(int(az[len(az)-1]-'a')+1)
}

func (s *Server) describeAvailabilityZones(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	names, zids := p.list("ZoneName"), p.list("ZoneId")
	for _, n := range names {
		if !slices.Contains(s.zones(), n) {
			return nil, ec2Err("InvalidParameterValue", "Invalid availability zone: [%s]", n)
		}
	}
	var items []*node
	for _, az := range s.zones() {
		if len(names) > 0 && !slices.Contains(names, az) || len(zids) > 0 && !slices.Contains(zids, s.zoneID(az)) {
			continue
		}
		ok, err := matchFilters(fs, nil, func(name string) ([]string, bool) {
			switch name {
			case "zone-name":
				return []string{az}, true
			case "zone-id":
				return []string{s.zoneID(az)}, true
			case "region-name":
				return []string{s.region}, true
			case "state":
				return []string{"available"}, true
			case "zone-type":
				return []string{"availability-zone"}, true
			case "opt-in-status":
				return []string{"opt-in-not-required"}, true
			case "group-name":
				return []string{s.region}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		items = append(items, el("item",
			el("zoneName", az),
			el("zoneState", "available"),
			el("regionName", s.region),
			el("zoneId", s.zoneID(az)),
			el("zoneType", "availability-zone"),
			el("optInStatus", "opt-in-not-required"),
			el("groupName", s.region),
			el("networkBorderGroup", s.region),
			set("messageSet", nil),
		))
	}
	return []*node{set("availabilityZoneInfo", items)}, nil
}

func (s *Server) describeRegions(_ context.Context, p params) ([]*node, error) {
	for _, n := range p.list("RegionName") {
		if n != s.region {
			return nil, ec2Err("InvalidParameterValue", "Invalid region: %s (the lab serves %s)", n, s.region)
		}
	}
	return []*node{set("regionInfo", []*node{el("item",
		el("regionName", s.region), el("regionEndpoint", "ec2."+s.region+".amazonaws.com"), el("optInStatus", "opt-in-not-required"))})}, nil
}
