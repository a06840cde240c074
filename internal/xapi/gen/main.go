// Command gen writes the typed part of package xapi from XAPI's datamodel
// (xenapi.json, as published in xapi-project/xen-api doc/data): reference
// types for every class, enum types, records for the classes ferry uses,
// and call wrappers for the messages ferry uses.
//
// Usage (from internal/xapi, see the go:generate line in xapi.go):
//
//	go run ./gen -in ../../../shared/xapi/xenapi.json -out .
//
// The datamodel is read, never copied into the repository; the generated
// files are committed so that building ferry does not need it.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/format"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"unicode"
)

// classes lists the classes whose records are generated, and for each the
// messages wrapped. Messages marked with a leading "+" also get an Async
// wrapper (Async.<class>.<message>, returning a task).
var classes = map[string][]string{
	"session": {"logout", "get_this_host", "get_record"},
	"pool":    {"get_all", "get_record", "get_all_records"},
	"host":    {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid"},
	"SR": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"get_by_name_label", "scan"},
	"VM": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"get_by_name_label", "create", "destroy",
		"+start", "+clean_shutdown", "+hard_shutdown", "+clean_reboot", "+hard_reboot",
		"+pause", "+unpause", "+suspend", "+resume",
		"set_name_label", "set_name_description", "set_other_config", "add_to_other_config",
		"remove_from_other_config", "set_tags", "add_tags", "remove_tags",
		"get_power_state", "get_snapshot_time", "set_HVM_boot_params", "set_platform",
		"+import", "get_consoles"},
	"VBD": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"create", "destroy", "+plug", "+unplug"},
	"VDI": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"create", "+destroy", "+snapshot", "+clone", "enable_cbt", "disable_cbt",
		"list_changed_blocks", "+data_destroy", "get_nbd_info", "set_name_label",
		"set_name_description", "set_other_config", "add_to_other_config", "set_tags",
		"get_virtual_size", "get_cbt_enabled", "get_type"},
	"VIF": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"create", "destroy"},
	"network": {"get_all", "get_record", "get_all_records", "get_by_uuid", "get_uuid",
		"get_by_name_label"},
	"task": {"get_all", "get_record", "get_all_records", "get_by_uuid", "create",
		"cancel", "destroy", "get_status", "get_progress", "get_result", "get_error_info"},
	"console":             {"get_record", "get_all_records"},
	"VM_metrics":          {"get_record"},
	"vdi_nbd_server_info": {},
	"PBD":                 {"get_record", "get_all_records"},
}

type datamodel []class

type class struct {
	Name     string    `json:"name"`
	Desc     string    `json:"description"`
	Fields   []field   `json:"fields"`
	Messages []message `json:"messages"`
	Enums    []enum    `json:"enums"`
}

type field struct {
	Name      string  `json:"name"`
	Desc      string  `json:"description"`
	Type      string  `json:"type"`
	Qualifier string  `json:"qualifier"`
	Default   *string `json:"default"`
}

type message struct {
	Name   string   `json:"name"`
	Desc   string   `json:"description"`
	Result []string `json:"result"`
	Params []param  `json:"params"`
	Errors []struct {
		Name string `json:"name"`
	} `json:"errors"`
}

type param struct {
	Type string `json:"type"`
	Name string `json:"name"`
	Doc  string `json:"doc"`
}

type enum struct {
	Name   string `json:"name"`
	Values []struct {
		Name string `json:"name"`
		Doc  string `json:"doc"`
	} `json:"values"`
}

func main() {
	in := flag.String("in", "../../../shared/xapi/xenapi.json", "the datamodel")
	out := flag.String("out", ".", "output directory")
	flag.Parse()
	b, err := os.ReadFile(*in)
	if err != nil {
		log.Fatal(err)
	}
	var dm datamodel
	if err := json.Unmarshal(b, &dm); err != nil {
		log.Fatalf("%s: %v", *in, err)
	}
	g := newGen(dm)
	if err := g.write(filepath.Join(*out, "records.gen.go"), g.records()); err != nil {
		log.Fatal(err)
	}
	if err := g.write(filepath.Join(*out, "calls.gen.go"), g.calls()); err != nil {
		log.Fatal(err)
	}
}

type gen struct {
	dm       datamodel
	byName   map[string]*class
	enums    map[string]enum
	used     map[string]bool // enums referenced by generated code
	refTypes map[string]bool // classes with a Ref type (all)
}

func newGen(dm datamodel) *gen {
	g := &gen{dm: dm, byName: map[string]*class{}, enums: map[string]enum{}, used: map[string]bool{}, refTypes: map[string]bool{}}
	for i := range dm {
		c := &dm[i]
		g.byName[c.Name] = c
		g.refTypes[c.Name] = true
		for _, e := range c.Enums {
			g.enums[e.Name] = e
		}
	}
	for name := range classes {
		if g.byName[name] == nil {
			log.Fatalf("class %s is not in the datamodel", name)
		}
	}
	return g
}

func (g *gen) write(path string, src []byte) error {
	out, err := format.Source(src)
	if err != nil {
		os.WriteFile(path+".broken", src, 0o644)
		return fmt.Errorf("format %s: %w", path, err)
	}
	return os.WriteFile(path, out, 0o644)
}

func sortedClasses() []string {
	var names []string
	for n := range classes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

const header = "// Code generated by internal/xapi/gen from XAPI's datamodel (xenapi.json); DO NOT EDIT.\n\n"

// records writes ref types, enums and records.
func (g *gen) records() []byte {
	var b bytes.Buffer
	b.WriteString(header)
	b.WriteString("package xapi\n\nimport \"time\"\n\nvar _ = time.Time{}\n\n")

	// Ref types for every class.
	var all []string
	for _, c := range g.dm {
		all = append(all, c.Name)
	}
	sort.Strings(all)
	b.WriteString("// References to objects, one type per class. The zero value and NullRef\n// (\"OpaqueRef:NULL\") both mean no object.\ntype (\n")
	for _, n := range all {
		fmt.Fprintf(&b, "\t%sRef string\n", goName(n))
	}
	b.WriteString(")\n\n")
	for _, n := range all {
		fmt.Fprintf(&b, "// IsNull reports whether r names no object.\nfunc (r %sRef) IsNull() bool { return isNullRef(string(r)) }\n\n", goName(n))
	}

	var recs bytes.Buffer
	for _, name := range sortedClasses() {
		c := g.byName[name]
		gn := goName(name)
		fmt.Fprintf(&recs, "// %sRecord is a %s record: %s.\ntype %sRecord struct {\n", gn, name, oneLine(c.Desc), gn)
		for _, f := range c.Fields {
			t := g.goType(f.Type)
			fmt.Fprintf(&recs, "\t// %s\n\t%s %s `json:\"%s\"`\n", oneLine(f.Desc), goName(f.Name), t, f.Name)
		}
		recs.WriteString("}\n\n")
		g.constructor(&recs, c)
	}

	// Enums used.
	var en []string
	for n := range g.used {
		en = append(en, n)
	}
	sort.Strings(en)
	for _, n := range en {
		e, ok := g.enums[n]
		if !ok {
			log.Fatalf("enum %s not defined", n)
		}
		tn := goName(n)
		fmt.Fprintf(&b, "// %s is the enum %s.\ntype %s string\n\nconst (\n", tn, n, tn)
		seen := map[string]bool{}
		for _, v := range e.Values {
			cn := tn + goName(v.Name)
			if seen[cn] {
				continue
			}
			seen[cn] = true
			fmt.Fprintf(&b, "\t// %s\n\t%s %s = %q\n", oneLine(v.Doc), cn, tn, v.Name)
		}
		b.WriteString(")\n\n")
	}
	b.Write(recs.Bytes())
	return b.Bytes()
}

// constructor writes the createArgs method of classes with a create
// message: the RW and RO/constructor fields as the create call takes them.
// Required fields (no default in the datamodel) are always sent; the others
// only when not zero, so that the server applies its defaults.
func (g *gen) constructor(b *bytes.Buffer, c *class) {
	if !slices.ContainsFunc(c.Messages, func(m message) bool { return m.Name == "create" }) || !slices.Contains(classes[c.Name], "create") {
		return
	}
	gn := goName(c.Name)
	var req []string
	fmt.Fprintf(b, "// createArgs returns the fields %s.create takes.\nfunc (r *%sRecord) createArgs() map[string]any {\n\tm := map[string]any{}\n", c.Name, gn)
	for _, f := range c.Fields {
		if f.Qualifier != "RW" && f.Qualifier != "RO/constructor" {
			continue
		}
		fn := goName(f.Name)
		if f.Default == nil {
			req = append(req, f.Name)
			fmt.Fprintf(b, "\tm[%q] = wireValue(r.%s)\n", f.Name, fn)
			continue
		}
		fmt.Fprintf(b, "\tif !isZero(r.%s) {\n\t\tm[%q] = wireValue(r.%s)\n\t}\n", fn, f.Name, fn)
	}
	b.WriteString("\treturn m\n}\n\n")
	fmt.Fprintf(b, "// %sCreateRequired lists the fields %s.create requires (those without a\n// default in the datamodel).\nvar %sCreateRequired = []string{", lowerFirst(gn), c.Name, lowerFirst(gn))
	for i, r := range req {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(b, "%q", r)
	}
	b.WriteString("}\n\n")
}

// calls writes the class accessors and call wrappers.
func (g *gen) calls() []byte {
	var b bytes.Buffer
	b.WriteString(header)
	b.WriteString("package xapi\n\nimport (\n\t\"context\"\n\t\"time\"\n)\n\nvar _ = time.Time{}\n\n")
	for _, name := range sortedClasses() {
		c := g.byName[name]
		gn := goName(name)
		fmt.Fprintf(&b, "// %sClass holds the calls of class %s.\ntype %sClass struct{ c *Client }\n\n", gn, name, gn)
		fmt.Fprintf(&b, "// %s returns the calls of class %s.\nfunc (c *Client) %s() %sClass { return %sClass{c} }\n\n", gn, name, gn, gn, gn)
		for _, want := range classes[name] {
			async := strings.HasPrefix(want, "+")
			want = strings.TrimPrefix(want, "+")
			i := slices.IndexFunc(c.Messages, func(m message) bool { return m.Name == want })
			if i < 0 {
				log.Fatalf("message %s.%s is not in the datamodel", name, want)
			}
			m := c.Messages[i]
			g.call(&b, c, m, false)
			if async {
				g.call(&b, c, m, true)
			}
		}
	}
	return b.Bytes()
}

var keywords = map[string]string{"type": "typ", "func": "fn", "range": "rng", "map": "m", "default": "def", "var": "v", "import": "imp"}

func (g *gen) call(b *bytes.Buffer, c *class, m message, async bool) {
	gn := goName(c.Name)
	method := c.Name + "." + m.Name
	fname := goName(m.Name)
	if async {
		method = "Async." + method
		fname = "Async" + fname
	}
	var params, args []string
	var docs []string
	for _, p := range m.Params {
		if p.Type == "session ref" {
			continue
		}
		pn := lowerFirst(goName(p.Name))
		if k, ok := keywords[pn]; ok {
			pn = k
		}
		if strings.HasSuffix(p.Type, " record") && p.Name == "args" {
			rt := strings.TrimSuffix(p.Type, " record")
			params = append(params, pn+" "+goName(rt)+"Record")
			args = append(args, pn+".createArgs()")
			continue
		}
		params = append(params, pn+" "+g.goType(p.Type))
		args = append(args, "wireValue("+pn+")")
		if p.Doc != "" {
			docs = append(docs, fmt.Sprintf("%s: %s", pn, oneLine(p.Doc)))
		}
	}
	result := "void"
	if len(m.Result) > 0 {
		result = m.Result[0]
	}
	rt := ""
	if async {
		rt = "TaskRef"
	} else if result != "void" {
		rt = g.goType(result)
	}
	desc := oneLine(m.Desc)
	if async {
		desc = "starts " + method[len("Async."):] + " and returns its task. " + desc
	}
	fmt.Fprintf(b, "// %s calls %s: %s\n", fname, method, desc)
	for _, d := range docs {
		fmt.Fprintf(b, "//   - %s\n", d)
	}
	if len(m.Errors) > 0 && !async {
		var names []string
		for _, e := range m.Errors {
			names = append(names, e.Name)
		}
		fmt.Fprintf(b, "//\n// Documented errors: %s.\n", strings.Join(names, ", "))
	}
	sig := strings.Join(append([]string{"ctx context.Context"}, params...), ", ")
	argList := "nil"
	if len(args) > 0 {
		argList = "[]any{" + strings.Join(args, ", ") + "}"
	}
	if rt == "" {
		fmt.Fprintf(b, "func (x %sClass) %s(%s) error {\n\treturn x.c.Call(ctx, %q, %s, nil)\n}\n\n", gn, fname, sig, method, argList)
		return
	}
	fmt.Fprintf(b, "func (x %sClass) %s(%s) (%s, error) {\n\tvar r %s\n\terr := x.c.Call(ctx, %q, %s, &r)\n\treturn r, err\n}\n\n", gn, fname, sig, rt, rt, method, argList)
}

// goType maps a datamodel type to Go.
func (g *gen) goType(t string) string {
	t = strings.TrimSpace(t)
	switch t {
	case "string", "string option":
		return "string"
	case "int":
		return "int64"
	case "float":
		return "float64"
	case "bool":
		return "bool"
	case "datetime":
		return "time.Time"
	case "<class> record", "an event batch":
		return "any"
	}
	if strings.HasPrefix(t, "(") && strings.HasSuffix(t, ") map") {
		inner := t[1 : len(t)-len(") map")]
		k, v, ok := strings.Cut(inner, " -> ")
		if !ok {
			log.Fatalf("bad map type %q", t)
		}
		return "map[" + g.goType(k) + "]" + g.goType(v)
	}
	if s, ok := strings.CutSuffix(t, " set"); ok {
		return "[]" + g.goType(s)
	}
	if s, ok := strings.CutSuffix(t, " option"); ok {
		return g.goType(s)
	}
	if s, ok := strings.CutPrefix(t, "enum "); ok {
		g.used[s] = true
		return goName(s)
	}
	if s, ok := strings.CutSuffix(t, " ref"); ok {
		if !g.refTypes[s] {
			log.Fatalf("ref to unknown class %q", s)
		}
		return goName(s) + "Ref"
	}
	if s, ok := strings.CutSuffix(t, " record"); ok {
		if _, ok := classes[s]; ok {
			return goName(s) + "Record"
		}
		return "map[string]any"
	}
	log.Fatalf("unknown type %q", t)
	return ""
}

// initialisms are written in upper case in Go names.
var initialisms = map[string]string{
	"uuid": "UUID", "id": "ID", "ip": "IP", "url": "URL", "mac": "MAC", "mtu": "MTU",
	"cpu": "CPU", "cpus": "CPUs", "api": "API", "sr": "SR", "vm": "VM", "vdi": "VDI", "vbd": "VBD",
	"vif": "VIF", "pci": "PCI", "hvm": "HVM", "pv": "PV", "nbd": "NBD", "cbt": "CBT",
	"ha": "HA", "os": "OS", "pif": "PIF", "pbd": "PBD", "vcpus": "VCPUs", "dr": "DR",
	"sm": "SM", "vlan": "VLAN", "pgpu": "PGPU", "vgpu": "VGPU", "gpu": "GPU", "usb": "USB",
	"pusb": "PUSB", "vusb": "VUSB", "vtpm": "VTPM", "vmpp": "VMPP", "vmss": "VMSS", "pvs": "PVS",
	"sdn": "SDN", "ssl": "SSL", "tls": "TLS", "uefi": "UEFI", "iscsi": "ISCSI", "iqn": "IQN",
	"numa": "NUMA", "rrd": "RRD", "rw": "RW", "ro": "RO", "cd": "CD", "ipv4": "IPv4", "ipv6": "IPv6",
	"wlb": "WLB", "psr": "PSR", "lvhd": "LVHD", "igmp": "IGMP", "nvram": "NVRAM",
}

// goName turns a datamodel name (snake case, with mixed-case initialisms
// such as VCPUs) into an exported Go name.
func goName(s string) string {
	var out strings.Builder
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == '_' || r == '-' || r == ' ' || r == '.' }) {
		if up, ok := initialisms[strings.ToLower(part)]; ok && (part == strings.ToLower(part) || part == strings.ToUpper(part) || strings.EqualFold(part, up)) {
			out.WriteString(up)
			continue
		}
		r := []rune(part)
		r[0] = unicode.ToUpper(r[0])
		out.WriteString(string(r))
	}
	n := out.String()
	if n == "" || !unicode.IsLetter([]rune(n)[0]) {
		n = "X" + n
	}
	return n
}

func lowerFirst(s string) string {
	// Lower a leading initialism whole: VDI -> vdi, VCPUsMax -> vcpusMax.
	for _, up := range []string{"VCPUs", "UUID", "VDI", "VBD", "VIF", "VM", "SR", "API", "HVM", "PV", "PCI", "MAC", "MTU", "ID", "IP", "URL", "NBD", "CBT", "HA", "PBD", "PIF", "SM", "RW", "RO", "CD"} {
		if strings.HasPrefix(s, up) && (len(s) == len(up) || unicode.IsUpper([]rune(s[len(up):])[0])) {
			return strings.ToLower(up) + s[len(up):]
		}
	}
	r := []rune(s)
	r[0] = unicode.ToLower(r[0])
	return string(r)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "(no description)"
	}
	return s
}
