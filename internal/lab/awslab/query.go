package awslab

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// params is an EC2 Query request's parameters: the form's names with their
// dotted structure (Filter.1.Value.2) kept in the names. Lists are
// numbered from 1.
type params map[string]string

// maxParams bounds the parameters of one request.
const maxParams = 10000

// parseQuery decodes an EC2 Query form: name=value pairs joined by '&',
// percent-encoded, names of letters, digits, '.', '_' and '-'. A name may
// appear once.
func parseQuery(form string) (params, error) {
	p := params{}
	for part := range strings.SplitSeq(form, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("parameter name %q: %v", k, err)
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %s: value %q: %v", name, v, err)
		}
		if err := checkParamName(name); err != nil {
			return nil, err
		}
		if _, dup := p[name]; dup {
			return nil, fmt.Errorf("parameter %s given twice", name)
		}
		if len(p) >= maxParams {
			return nil, fmt.Errorf("more than %d parameters", maxParams)
		}
		p[name] = val
	}
	return p, nil
}

func checkParamName(name string) error {
	if name == "" || len(name) > 256 {
		return fmt.Errorf("parameter name %q: empty or too long", name)
	}
	for seg := range strings.SplitSeq(name, ".") {
		if seg == "" {
			return fmt.Errorf("parameter name %q: empty component", name)
		}
		for _, c := range seg {
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return fmt.Errorf("parameter name %q: character %q", name, c)
			}
		}
	}
	return nil
}

func (p params) str(k string) string { return p[k] }

func (p params) has(k string) bool { _, ok := p[k]; return ok }

// boolean reads a true/false parameter; absent is false.
func (p params) boolean(k string) (bool, error) {
	v, ok := p[k]
	if !ok {
		return false, nil
	}
	switch strings.ToLower(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, ec2Err("InvalidParameterValue", "Value (%s) for parameter %s is invalid. Expected: 'true' or 'false'.", v, k)
}

// integer reads an integer parameter; absent gives def.
func (p params) integer(k string, def int64) (int64, error) {
	v, ok := p[k]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, ec2Err("InvalidParameterValue", "Value (%s) for parameter %s is invalid. Expected a number.", v, k)
	}
	return n, nil
}

// indexes returns the list numbers used under prefix (prefix.N or
// prefix.N.x), ascending.
func (p params) indexes(prefix string) []int {
	seen := map[int]bool{}
	for k := range p {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 {
			continue
		}
		seen[n] = true
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// list returns the values of prefix.1, prefix.2, ... in order.
func (p params) list(prefix string) []string {
	var out []string
	for _, n := range p.indexes(prefix) {
		if v, ok := p[prefix+"."+strconv.Itoa(n)]; ok {
			out = append(out, v)
		}
	}
	return out
}

// sub returns the parameters under prefix, with "prefix." removed.
func (p params) sub(prefix string) params {
	out := params{}
	for k, v := range p {
		if rest, ok := strings.CutPrefix(k, prefix+"."); ok {
			out[rest] = v
		}
	}
	return out
}

// structs returns the members of a list of structures: prefix.N.* for
// each N, in order.
func (p params) structs(prefix string) []params {
	var out []params
	for _, n := range p.indexes(prefix) {
		if s := p.sub(prefix + "." + strconv.Itoa(n)); len(s) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// filter is one Filter.N of a Describe call.
type filter struct {
	Name   string
	Values []string
}

// filters reads Filter.N.Name and Filter.N.Value.M (or the plural
// "Filters" that some actions use).
func (p params) filters(prefix string) ([]filter, error) {
	var out []filter
	for _, s := range p.structs(prefix) {
		name := s.str("Name")
		if name == "" {
			return nil, ec2Err("InvalidParameterValue", "The filter name must not be empty.")
		}
		out = append(out, filter{Name: name, Values: s.list("Value")})
	}
	return out, nil
}

// tagSpecs reads TagSpecification.N.{ResourceType,Tag.M.{Key,Value}} and
// returns the tags for resourceType.
func (p params) tagSpecs(resourceTypes ...string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, spec := range p.structs("TagSpecification") {
		rt := spec.str("ResourceType")
		if !slices.Contains(resourceTypes, rt) {
			return nil, ec2Err("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
		tags, err := tagList(spec, "Tag", true)
		if err != nil {
			return nil, err
		}
		if out[rt] == nil {
			out[rt] = map[string]string{}
		}
		for k, v := range tags {
			out[rt][k] = v
		}
	}
	return out, nil
}

// tagList reads prefix.N.Key and prefix.N.Value.
func tagList(p params, prefix string, needKey bool) (map[string]string, error) {
	out := map[string]string{}
	for _, t := range p.structs(prefix) {
		k := t.str("Key")
		if k == "" && needKey {
			return nil, ec2Err("InvalidParameterValue", "Tag key must not be empty.")
		}
		if len(k) > 128 || len(t.str("Value")) > 256 {
			return nil, ec2Err("InvalidParameterValue", "Tag key or value too long.")
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return nil, ec2Err("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use.")
		}
		out[k] = t.str("Value")
	}
	return out, nil
}
