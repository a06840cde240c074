package xenlab

//go:generate go run gen_schema.go -in ../../../../shared/xapi/xenapi.json -out schema.gen.go

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// fieldDef is one field of a class, as the datamodel defines it. Default is
// the JSON literal of the value a new record gets.
type fieldDef struct {
	Name, Type, Qual, Default string
}

// paramDef is one parameter of a message.
type paramDef struct {
	Name, Type string
}

// messageDef is one message of a class. Params leaves out the session.
type messageDef struct {
	Name     string
	Session  bool
	Implicit bool
	Result   string
	Params   []paramDef
}

// classDef is one class of the datamodel. Ctor lists the constructor
// arguments of its create message, required ones marked with "*".
type classDef struct {
	Name     string
	Fields   []fieldDef
	Messages []messageDef
	Ctor     []string
}

// schema indexes the generated datamodel tables.
type schema struct {
	classes map[string]*classInfo
	lower   map[string]*classInfo // by lower-case name, for event classes
}

type classInfo struct {
	def      *classDef
	fields   map[string]*fieldDef
	messages map[string]*messageDef
	ctor     map[string]bool // constructor argument -> required
}

func newSchema() *schema {
	s := &schema{classes: map[string]*classInfo{}, lower: map[string]*classInfo{}}
	for i := range schemaClasses {
		d := &schemaClasses[i]
		ci := &classInfo{def: d, fields: map[string]*fieldDef{}, messages: map[string]*messageDef{}, ctor: map[string]bool{}}
		for j := range d.Fields {
			ci.fields[d.Fields[j].Name] = &d.Fields[j]
		}
		for j := range d.Messages {
			ci.messages[d.Messages[j].Name] = &d.Messages[j]
		}
		for _, a := range d.Ctor {
			name, req := strings.CutSuffix(a, "*")
			ci.ctor[name] = req
		}
		s.classes[d.Name] = ci
		s.lower[strings.ToLower(d.Name)] = ci
	}
	return s
}

// optionalParams is how many trailing parameters of a message have default
// values in XAPI's datamodel (the JSON export does not carry them), so that
// shorter calls are accepted as xapi accepts them.
func optionalParams(class, msg string) int {
	switch class + "." + msg {
	case "session.login_with_password":
		return 2 // version, originator
	case "VM.snapshot":
		return 1 // ignore_vdis
	case "VM.migrate_send":
		return 1 // vgpu_map
	}
	return 0
}

// extraParams is how many trailing parameters newer xapi versions added to
// a message after this datamodel; they are accepted and ignored.
func extraParams(class, msg string) int {
	if class == "VM" && msg == "migrate_send" {
		return 1 // vdi_format_map
	}
	return 0
}

// newRecord returns a record with every field at its default.
func (c *classInfo) newRecord() map[string]any {
	rec := make(map[string]any, len(c.def.Fields))
	for _, f := range c.def.Fields {
		if f.Type == "<class> record" {
			continue
		}
		v, err := decodeLiteral(f.Type, f.Default)
		if err != nil {
			panic(fmt.Sprintf("xenlab: default of %s.%s: %v", c.def.Name, f.Name, err))
		}
		rec[f.Name] = v
	}
	return rec
}

func decodeLiteral(typ, lit string) (any, error) {
	d := json.NewDecoder(strings.NewReader(lit))
	d.UseNumber()
	var raw any
	if err := d.Decode(&raw); err != nil {
		return nil, err
	}
	v, err := convert(typ, raw)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// convert checks a decoded JSON value (numbers as json.Number, as requests
// are decoded) against a datamodel type and returns it in the lab's
// canonical form: string, int64, float64, bool, []any, map[string]any.
func convert(typ string, v any) (any, error) {
	switch {
	case strings.HasSuffix(typ, " set"):
		arr, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("want an array for %s, got %s", typ, jsonKind(v))
		}
		elem := strings.TrimSuffix(typ, " set")
		out := make([]any, 0, len(arr))
		for _, e := range arr {
			c, err := convert(elem, e)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	case strings.HasSuffix(typ, " map") && strings.HasPrefix(typ, "("):
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("want an object for %s, got %s", typ, jsonKind(v))
		}
		inner := strings.TrimSuffix(strings.TrimPrefix(typ, "("), ") map")
		_, vt, ok := strings.Cut(inner, " -> ")
		if !ok {
			return nil, fmt.Errorf("bad map type %s", typ)
		}
		out := make(map[string]any, len(m))
		for k, e := range m {
			c, err := convert(vt, e)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case typ == "string", typ == "datetime", strings.HasSuffix(typ, " ref"):
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a string for %s, got %s", typ, jsonKind(v))
		}
		return s, nil
	case strings.HasPrefix(typ, "enum "):
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a string for %s, got %s", typ, jsonKind(v))
		}
		vals := schemaEnums[strings.TrimPrefix(typ, "enum ")]
		for _, e := range vals {
			if strings.EqualFold(e, s) {
				return e, nil
			}
		}
		return nil, fmt.Errorf("%q is not a value of %s", s, typ)
	case typ == "int":
		switch x := v.(type) {
		case json.Number:
			n, err := strconv.ParseInt(x.String(), 10, 64)
			if err != nil {
				f, ferr := strconv.ParseFloat(x.String(), 64)
				if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<62 {
					return nil, fmt.Errorf("%s is not an int", x)
				}
				n = int64(f)
			}
			return n, nil
		case string: // xapi's JSON also accepts ints as decimal strings
			n, err := strconv.ParseInt(x, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not an int", x)
			}
			return n, nil
		case int64:
			return x, nil
		case float64:
			if x != math.Trunc(x) {
				return nil, fmt.Errorf("%v is not an int", x)
			}
			return int64(x), nil
		}
		return nil, fmt.Errorf("want a number for int, got %s", jsonKind(v))
	case typ == "float":
		switch x := v.(type) {
		case json.Number:
			f, err := strconv.ParseFloat(x.String(), 64)
			if err != nil {
				return nil, fmt.Errorf("%s is not a float", x)
			}
			return f, nil
		case string:
			f, err := strconv.ParseFloat(x, 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a float", x)
			}
			return f, nil
		case float64:
			return x, nil
		case int64:
			return float64(x), nil
		}
		return nil, fmt.Errorf("want a number for float, got %s", jsonKind(v))
	case typ == "bool":
		switch x := v.(type) {
		case bool:
			return x, nil
		case string:
			switch strings.ToLower(x) {
			case "true":
				return true, nil
			case "false":
				return false, nil
			}
		}
		return nil, fmt.Errorf("want a boolean, got %s", jsonKind(v))
	case strings.HasSuffix(typ, " record"):
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("want an object for %s, got %s", typ, jsonKind(v))
		}
		return m, nil
	}
	return nil, fmt.Errorf("unsupported type %s", typ)
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64, int64:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// deepCopy copies a canonical value so that it can be encoded after the
// lock is released.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = deepCopy(e)
		}
		return a
	}
	return v
}
