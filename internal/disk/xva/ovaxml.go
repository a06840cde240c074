package xva

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
)

// Limits on the descriptor, so that a hostile ova.xml costs bounded work.
const (
	maxDepth  = 32      // nesting of <value>s
	maxValues = 1 << 20 // <value>s in the whole document
)

// xv is one XML-RPC value. typ is the element inside <value> ("" for a
// bare string).
type xv struct {
	typ   string
	text  string
	mem   []xmember
	items []*xv
}

type xmember struct {
	name string
	v    *xv
}

// field returns the struct member called name, or nil.
func (v *xv) field(name string) *xv {
	if v == nil {
		return nil
	}
	for _, m := range v.mem {
		if m.name == name {
			return m.v
		}
	}
	return nil
}

func (v *xv) isScalar() bool {
	return v != nil && v.typ != "struct" && v.typ != "array" && v.typ != "nil"
}

// str returns a scalar's text ("" for anything else).
func (v *xv) str() string {
	if !v.isScalar() {
		return ""
	}
	return v.text
}

// int parses an integer. xapi writes 64-bit ints as strings.
func (v *xv) int() (int64, bool) {
	if !v.isScalar() {
		return 0, false
	}
	s := strings.TrimSpace(v.text)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > -1e18 && f < 1e18 && f == float64(int64(f)) {
		return int64(f), true
	}
	return 0, false
}

func (v *xv) bool() bool {
	switch strings.TrimSpace(v.str()) {
	case "1", "true", "True", "TRUE":
		return true
	}
	return false
}

// strMap returns a struct of strings as a map.
func (v *xv) strMap() map[string]string {
	m := map[string]string{}
	if v != nil && v.typ == "struct" {
		for _, f := range v.mem {
			m[f.name] = f.v.str()
		}
	}
	return m
}

type xparser struct {
	d *xml.Decoder
	n int
}

// parseXMLRPC parses an XML-RPC <value> document.
func parseXMLRPC(b []byte) (*xv, error) {
	p := &xparser{d: xml.NewDecoder(bytes.NewReader(b))}
	for {
		tok, err := p.d.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("no <value> element")
			}
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local != "value" {
				return nil, fmt.Errorf("document element is <%s>, not <value>", t.Name.Local)
			}
			return p.value(0)
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return nil, fmt.Errorf("text before the document element")
			}
		}
	}
}

// value parses the content of a <value> whose start tag was read.
func (p *xparser) value(depth int) (*xv, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("values nested deeper than %d", maxDepth)
	}
	if p.n++; p.n > maxValues {
		return nil, fmt.Errorf("more than %d values", maxValues)
	}
	v := &xv{}
	var text []byte
	typed := false
	for {
		tok, err := p.token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if !typed {
				text = append(text, t...)
			}
		case xml.StartElement:
			if typed {
				return nil, fmt.Errorf("<value> holds more than one element")
			}
			typed = true
			v.typ = t.Name.Local
			switch v.typ {
			case "struct":
				err = p.structBody(v, depth)
			case "array":
				err = p.arrayBody(v, depth)
			case "string", "i4", "int", "i8", "boolean", "double", "dateTime.iso8601", "base64":
				v.text, err = p.textBody()
			case "nil":
				_, err = p.textBody()
			default:
				return nil, fmt.Errorf("unknown XML-RPC type <%s>", v.typ)
			}
			if err != nil {
				return nil, err
			}
		case xml.EndElement:
			if !typed {
				v.text = string(text)
			}
			return v, nil
		}
	}
}

// token returns the next token that matters, turning EOF into an error.
func (p *xparser) token() (xml.Token, error) {
	for {
		tok, err := p.d.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("document ends inside an element")
			}
			return nil, err
		}
		switch tok.(type) {
		case xml.Comment, xml.ProcInst, xml.Directive:
			continue
		}
		return tok, nil
	}
}

// textBody reads character data up to the end tag.
func (p *xparser) textBody() (string, error) {
	var b []byte
	for {
		tok, err := p.token()
		if err != nil {
			return "", err
		}
		switch t := tok.(type) {
		case xml.CharData:
			b = append(b, t...)
		case xml.StartElement:
			return "", fmt.Errorf("unexpected <%s> inside a scalar", t.Name.Local)
		case xml.EndElement:
			return string(b), nil
		}
	}
}

func (p *xparser) structBody(v *xv, depth int) error {
	for {
		tok, err := p.token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local != "member" {
				return fmt.Errorf("unexpected <%s> in <struct>", t.Name.Local)
			}
			m, err := p.member(depth)
			if err != nil {
				return err
			}
			v.mem = append(v.mem, m)
		case xml.EndElement:
			return nil
		}
	}
}

func (p *xparser) member(depth int) (xmember, error) {
	var m xmember
	var haveName bool
	for {
		tok, err := p.token()
		if err != nil {
			return m, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "name":
				if m.name, err = p.textBody(); err != nil {
					return m, err
				}
				haveName = true
			case "value":
				if m.v != nil {
					return m, fmt.Errorf("<member> with two values")
				}
				if m.v, err = p.value(depth + 1); err != nil {
					return m, err
				}
			default:
				return m, fmt.Errorf("unexpected <%s> in <member>", t.Name.Local)
			}
		case xml.EndElement:
			if !haveName || m.v == nil {
				return m, fmt.Errorf("<member> without a name or a value")
			}
			return m, nil
		}
	}
}

func (p *xparser) arrayBody(v *xv, depth int) error {
	for {
		tok, err := p.token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "data": // the values follow, up to </data>
			case "value":
				it, err := p.value(depth + 1)
				if err != nil {
					return err
				}
				v.items = append(v.items, it)
			default:
				return fmt.Errorf("unexpected <%s> in <array>", t.Name.Local)
			}
		case xml.EndElement:
			if t.Name.Local == "array" {
				return nil
			}
		}
	}
}

// vdi is a VDI whose chunks the archive carries.
type vdi struct {
	ref  string // "Ref:N": the chunk names' prefix
	name string
	size int64
	disk int // index into the VM's Disks, -1 if no disk of the VM uses it
}

// label names the VDI in messages.
func (v *vdi) label() string {
	if v.disk >= 0 {
		return fmt.Sprintf("disk %d %q (%s)", v.disk, v.name, v.ref)
	}
	return fmt.Sprintf("VDI %q (%s)", v.name, v.ref)
}

// manifest is what ferry takes from ova.xml.
type manifest struct {
	vm      core.VMSpec
	vmRef   string
	version map[string]any
	// vdis are the VDIs xapi's importer streams, in the order their chunks
	// come in the archive: sorted by ref as strings (stream_vdi.ml,
	// for_each_vdi).
	vdis []*vdi
	// disks[i] is the VDI of vm.Disks[i].
	disks []*vdi
}

type object struct {
	class, id string
	rec       *xv
}

func corruptXML(format string, args ...any) error {
	return fmt.Errorf("ova.xml: "+format+": %w", append(args, errs.ErrCorrupt)...)
}

// parseManifest reads ova.xml: the VM, its disks and NICs, and the VDIs
// whose chunks follow.
func parseManifest(b []byte) (*manifest, error) {
	root, err := parseXMLRPC(b)
	if err != nil {
		return nil, corruptXML("%v", err)
	}
	if root.typ != "struct" {
		return nil, corruptXML("top-level value is not a struct")
	}
	ver := root.field("version")
	if ver == nil || ver.typ != "struct" {
		return nil, corruptXML("no version struct")
	}
	objs := root.field("objects")
	if objs == nil || objs.typ != "array" {
		return nil, corruptXML("no objects array")
	}
	m := &manifest{version: map[string]any{}}
	for _, f := range ver.mem {
		n, isInt := f.v.int()
		switch {
		case isInt && (f.name == "xapi_major" || f.name == "xapi_minor" || f.name == "export_vsn"):
			m.version[f.name] = n
		case f.v.isScalar():
			m.version[f.name] = f.v.str()
		}
	}

	byID := map[string]*object{}
	var all []*object
	for i, it := range objs.items {
		if it.typ != "struct" {
			return nil, corruptXML("object %d is not a struct", i)
		}
		o := &object{class: it.field("class").str(), id: it.field("id").str(), rec: it.field("snapshot")}
		if o.class == "" || o.id == "" || o.rec == nil || o.rec.typ != "struct" {
			return nil, corruptXML("object %d lacks a class, an id or a snapshot struct", i)
		}
		if _, dup := byID[o.id]; dup {
			return nil, corruptXML("two objects with id %s", o.id)
		}
		byID[o.id] = o
		all = append(all, o)
	}
	ofClass := func(c string) []*object {
		var out []*object
		for _, o := range all {
			if o.class == c {
				out = append(out, o)
			}
		}
		return out
	}

	// The VM: the only one, or the only one that is not a snapshot.
	vms := ofClass("VM")
	if len(vms) > 1 {
		vms = slices.DeleteFunc(slices.Clone(vms), func(o *object) bool { return o.rec.field("is_a_snapshot").bool() })
	}
	switch {
	case len(ofClass("VM")) == 0:
		return nil, corruptXML("no VM object")
	case len(vms) != 1:
		return nil, fmt.Errorf("ova.xml describes %d VMs; ferry reads single-VM exports: %w", len(ofClass("VM")), errs.ErrUnimplemented)
	}
	vmo := vms[0]
	m.vmRef = vmo.id
	if err := m.readVM(vmo.rec); err != nil {
		return nil, err
	}

	// Which VDIs the importer streams: those of non-CD VBDs (of any VM)
	// whose SR is not an ISO library, and suspend images.
	streamed := map[string]bool{}
	for _, o := range ofClass("VBD") {
		if o.rec.field("type").str() == "CD" {
			continue
		}
		ref := o.rec.field("VDI").str()
		vo := byID[ref]
		if vo == nil || vo.class != "VDI" {
			return nil, corruptXML("VBD %s names VDI %q, which is not in the export", o.id, ref)
		}
		if sr := byID[vo.rec.field("SR").str()]; sr != nil && sr.rec.field("content_type").str() == "iso" {
			continue
		}
		streamed[ref] = true
	}
	vdiOf := map[string]*vdi{}
	for _, o := range ofClass("VDI") {
		if !streamed[o.id] && o.rec.field("type").str() != "suspend" {
			continue
		}
		size, ok := o.rec.field("virtual_size").int()
		if !ok {
			return nil, corruptXML("VDI %s has no integer virtual_size", o.id)
		}
		if size < 0 || size > maxVirtualSize {
			return nil, corruptXML("VDI %s claims a virtual size of %d bytes (limit %d)", o.id, size, int64(maxVirtualSize))
		}
		if strings.ContainsAny(o.id, "/\x00") {
			return nil, corruptXML("VDI id %q cannot name chunks", o.id)
		}
		v := &vdi{ref: o.id, name: o.rec.field("name_label").str(), size: size, disk: -1}
		vdiOf[o.id] = v
		m.vdis = append(m.vdis, v)
	}
	slices.SortStableFunc(m.vdis, func(a, b *vdi) int { return strings.Compare(a.ref, b.ref) })

	// The VM's disks, in userdevice order.
	type vbd struct {
		pos      int
		bootable bool
		v        *vdi
	}
	var vbds []vbd
	for _, o := range ofClass("VBD") {
		r := o.rec
		if r.field("VM").str() != vmo.id || r.field("type").str() == "CD" {
			continue
		}
		v := vdiOf[r.field("VDI").str()]
		if v == nil || slices.ContainsFunc(vbds, func(b vbd) bool { return b.v == v }) {
			continue // an ISO-library VDI (not streamed) or a second VBD of a VDI
		}
		pos := -1
		if n, err := strconv.Atoi(strings.TrimSpace(r.field("userdevice").str())); err == nil && n >= 0 {
			pos = n
		}
		vbds = append(vbds, vbd{pos: pos, bootable: r.field("bootable").bool(), v: v})
	}
	slices.SortStableFunc(vbds, func(a, b vbd) int {
		switch {
		case a.pos == b.pos:
			return 0
		case a.pos < 0:
			return 1
		case b.pos < 0:
			return -1
		}
		return a.pos - b.pos
	})
	for i, b := range vbds {
		b.v.disk = i
		m.disks = append(m.disks, b.v)
		m.vm.Disks = append(m.vm.Disks, core.DiskSpec{Name: b.v.name, Size: b.v.size, Bootable: b.bootable, Position: b.pos})
	}

	// NICs, in device order.
	type vif struct {
		dev int
		nic core.NICSpec
	}
	var vifs []vif
	for _, o := range ofClass("VIF") {
		r := o.rec
		if r.field("VM").str() != vmo.id {
			continue
		}
		dev, err := strconv.Atoi(strings.TrimSpace(r.field("device").str()))
		if err != nil || dev < 0 {
			dev = 1 << 30
		}
		nic := core.NICSpec{MAC: r.field("MAC").str()}
		if n := byID[r.field("network").str()]; n != nil && n.class == "network" {
			nic.Network = n.rec.field("name_label").str()
		}
		vifs = append(vifs, vif{dev, nic})
	}
	slices.SortStableFunc(vifs, func(a, b vif) int { return a.dev - b.dev })
	for _, v := range vifs {
		m.vm.NICs = append(m.vm.NICs, v.nic)
	}
	return m, nil
}

// readVM fills the VM's own fields.
func (m *manifest) readVM(r *xv) error {
	vm := &m.vm
	vm.Name = r.field("name_label").str()
	vm.Description = r.field("name_description").str()
	cpus, ok := r.field("VCPUs_max").int()
	if !ok {
		cpus, _ = r.field("VCPUs_at_startup").int()
	}
	if cpus < 0 || cpus > 1<<16 {
		return corruptXML("VM %s claims %d VCPUs", m.vmRef, cpus)
	}
	vm.CPUs = int(cpus)
	mem, _ := r.field("memory_static_max").int()
	if mem < 0 || mem > 1<<50 {
		return corruptXML("VM %s claims %d bytes of memory", m.vmRef, mem)
	}
	vm.MemoryBytes = mem
	switch {
	case r.field("HVM_boot_params").strMap()["firmware"] == "uefi":
		vm.Firmware = core.UEFI
	case r.field("HVM_boot_policy").str() != "":
		vm.Firmware = core.BIOS
	}
	oc := r.field("other_config").strMap()
	vm.OSType = oc[osTypeKey]
	if vm.OSType == "" {
		vm.OSType = oc["base_template_name"]
	}
	return nil
}

// osTypeKey is the VM other_config key where ferry keeps VMSpec.OSType.
const osTypeKey = "ferry_os_type"
