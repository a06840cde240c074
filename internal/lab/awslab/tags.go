package awslab

import (
	"context"
	"slices"
	"sort"
	"strings"
)

// maxTags is EC2's limit of tags per resource.
const maxTags = 50

// idPrefixes maps ID prefixes to EC2 resource types, longest first.
var idPrefixes = []struct{ prefix, typ string }{
	{"import-snap-", "import-snapshot-task"},
	{"import-ami-", "import-image-task"},
	{"export-ami-", "export-image-task"},
	{"export-i-", "export-instance-task"},
	{"subnet-", "subnet"},
	{"snap-", "snapshot"},
	{"dopt-", "dhcp-options"},
	{"ami-", "image"},
	{"vol-", "volume"},
	{"vpc-", "vpc"},
	{"sg-", "security-group"},
	{"i-", "instance"},
}

func resourceType(id string) string {
	for _, p := range idPrefixes {
		if strings.HasPrefix(id, p.prefix) {
			return p.typ
		}
	}
	return ""
}

// resourceExistsLocked reports whether id names a resource of the region.
func (s *Server) resourceExistsLocked(id string) bool {
	switch resourceType(id) {
	case "instance":
		return s.st.Instances[id] != nil
	case "image":
		return s.st.Images[id] != nil
	case "snapshot":
		return s.st.Snapshots[id] != nil
	case "volume":
		return s.st.Volumes[id] != nil
	case "vpc":
		return s.st.VPCs[id] != nil
	case "subnet":
		return s.st.Subnets[id] != nil
	case "security-group":
		return s.st.Groups[id] != nil
	case "import-snapshot-task", "import-image-task":
		return s.st.Imports[id] != nil
	case "export-image-task", "export-instance-task":
		return s.st.Exports[id] != nil
	}
	return false
}

// taggableLocked checks the ResourceId.N of a tagging call.
func (s *Server) taggableLocked(ids []string) error {
	if len(ids) == 0 {
		return missing("ResourceId")
	}
	for _, id := range ids {
		if s.resourceExistsLocked(id) {
			continue
		}
		prefix, _, _ := strings.Cut(id, "-")
		switch rt := resourceType(id); rt {
		case "":
			return ec2Err("InvalidID", "The ID '%s' is not valid", id)
		case "import-snapshot-task", "import-image-task", "export-image-task", "export-instance-task":
			return ec2Err("InvalidParameterValue", "The resource '%s' does not exist", id)
		default:
			return notFound(prefix, id)
		}
	}
	return nil
}

func (s *Server) createTags(_ context.Context, p params) ([]*node, error) {
	ids := p.list("ResourceId")
	if err := s.taggableLocked(ids); err != nil {
		return nil, err
	}
	tags, err := tagList(p, "Tag", true)
	if err != nil {
		return nil, err
	}
	if len(tags) == 0 {
		return nil, missing("Tag")
	}
	for _, id := range ids {
		n := len(s.st.Tags[id])
		for k := range tags {
			if _, ok := s.st.Tags[id][k]; !ok {
				n++
			}
		}
		if n > maxTags {
			return nil, ec2Err("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")
		}
	}
	for _, id := range ids {
		if s.st.Tags[id] == nil {
			s.st.Tags[id] = map[string]string{}
		}
		for k, v := range tags {
			s.st.Tags[id][k] = v
		}
	}
	s.dirty = true
	return []*node{el("return", true)}, nil
}

func (s *Server) deleteTags(_ context.Context, p params) ([]*node, error) {
	ids := p.list("ResourceId")
	if err := s.taggableLocked(ids); err != nil {
		return nil, err
	}
	specs := p.structs("Tag")
	for _, id := range ids {
		t := s.st.Tags[id]
		if len(specs) == 0 {
			delete(s.st.Tags, id)
			continue
		}
		for _, sp := range specs {
			k := sp.str("Key")
			if sp.has("Value") && t[k] != sp.str("Value") {
				continue
			}
			delete(t, k)
		}
		if len(t) == 0 {
			delete(s.st.Tags, id)
		}
	}
	s.dirty = true
	return []*node{el("return", true)}, nil
}

func (s *Server) describeTags(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	type row struct{ id, typ, k, v string }
	var rows []row
	for id, t := range s.st.Tags {
		for k, v := range t {
			rows = append(rows, row{id, resourceType(id), k, v})
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].id != rows[j].id {
			return rows[i].id < rows[j].id
		}
		return rows[i].k < rows[j].k
	})
	var hits []*node
	for _, r := range rows {
		ok, err := matchFilters(fs, nil, func(name string) ([]string, bool) {
			switch name {
			case "key":
				return []string{r.k}, true
			case "value":
				return []string{r.v}, true
			case "resource-id":
				return []string{r.id}, true
			case "resource-type":
				return []string{r.typ}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, el("item", el("resourceId", r.id), el("resourceType", r.typ), el("key", r.k), el("value", r.v)))
		}
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("tagSet", hits[from:to]), opt("nextToken", next)}, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
