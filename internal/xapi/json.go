package xapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// NullRef is xapi's reference to no object.
const NullRef = "OpaqueRef:NULL"

func isNullRef(s string) bool { return s == "" || s == NullRef }

// maxResponse bounds a JSON-RPC response read into memory (a
// get_all_records of a large pool is a few tens of MiB).
const maxResponse = 512 << 20

// parseJSON parses a JSON document into a generic tree (map[string]any,
// []any, string, json.Number, bool, nil). Beyond standard JSON it accepts
// the bare tokens NaN, Infinity, +Infinity and -Infinity that xapi's (and
// Python's) encoders write for non-finite floats; they become the strings
// "NaN", "Infinity", "Infinity" and "-Infinity", which float fields accept.
func parseJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(sanitize(b)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parse json: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse json: data after the value")
	}
	return v, nil
}

// sanitize quotes the non-standard float tokens outside strings. It returns
// b itself when there are none.
func sanitize(b []byte) []byte {
	var out []byte // nil until a token needs rewriting
	inStr, esc := false, false
	last := 0 // b[:last] is already in out
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		if c == '"' {
			inStr = true
			continue
		}
		var tok, repl string
		switch {
		case c == 'N' && bytes.HasPrefix(b[i:], []byte("NaN")):
			tok, repl = "NaN", `"NaN"`
		case c == 'I' && bytes.HasPrefix(b[i:], []byte("Infinity")):
			tok, repl = "Infinity", `"Infinity"`
		case c == '+' && bytes.HasPrefix(b[i:], []byte("+Infinity")):
			tok, repl = "+Infinity", `"Infinity"`
		case c == '-' && bytes.HasPrefix(b[i:], []byte("-Infinity")):
			tok, repl = "-Infinity", `"-Infinity"`
		default:
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(b)+16)
		}
		out = append(out, b[last:i]...)
		out = append(out, repl...)
		i += len(tok) - 1
		last = i + 1
	}
	if out == nil {
		return b
	}
	return append(out, b[last:]...)
}

var (
	timeType = reflect.TypeFor[time.Time]()
)

// decode assigns a parsed JSON tree to dst (a non-nil pointer), leniently:
// see the package documentation. Only a top-level mismatch (an object
// where a string is wanted, say) is an error; inside records, fields and
// map entries that do not fit are left zero.
func decode(src any, dst any) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return fmt.Errorf("decode into %T: want a non-nil pointer: %w", dst, errs.ErrInvalidArgument)
	}
	return decodeValue(src, v.Elem())
}

func mismatch(src any, t reflect.Type) error {
	return fmt.Errorf("cannot use %s as %s: %w", describe(src), t, errs.ErrCorrupt)
}

func describe(src any) string {
	switch src.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", src)
}

func decodeValue(src any, v reflect.Value) error {
	t := v.Type()
	if t == timeType {
		if src == nil {
			v.SetZero()
			return nil
		}
		tm, err := parseTime(src)
		if err != nil {
			return err
		}
		v.Set(reflect.ValueOf(tm))
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		if src == nil {
			v.SetZero()
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		return decodeValue(src, v.Elem())
	case reflect.Interface:
		if src == nil {
			v.SetZero()
			return nil
		}
		sv := reflect.ValueOf(src)
		if !sv.Type().AssignableTo(t) {
			return mismatch(src, t)
		}
		v.Set(sv)
		return nil
	}
	if src == nil {
		v.SetZero()
		return nil
	}
	switch t.Kind() {
	case reflect.String:
		switch s := src.(type) {
		case string:
			v.SetString(s)
		case json.Number:
			v.SetString(s.String())
		case bool:
			v.SetString(strconv.FormatBool(s))
		default:
			return mismatch(src, t)
		}
	case reflect.Bool:
		switch s := src.(type) {
		case bool:
			v.SetBool(s)
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return mismatch(src, t)
			}
			v.SetBool(b)
		default:
			return mismatch(src, t)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := toInt(src)
		if err != nil || v.OverflowInt(n) {
			return mismatch(src, t)
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := toInt(src)
		if err != nil || n < 0 || v.OverflowUint(uint64(n)) {
			return mismatch(src, t)
		}
		v.SetUint(uint64(n))
	case reflect.Float32, reflect.Float64:
		f, err := toFloat(src)
		if err != nil {
			return mismatch(src, t)
		}
		v.SetFloat(f)
	case reflect.Slice:
		arr, ok := src.([]any)
		if !ok {
			return mismatch(src, t)
		}
		s := reflect.MakeSlice(t, 0, len(arr))
		for _, e := range arr {
			ev := reflect.New(t.Elem()).Elem()
			if err := decodeValue(e, ev); err != nil {
				continue // lenient: drop what does not fit
			}
			s = reflect.Append(s, ev)
		}
		v.Set(s)
	case reflect.Map:
		obj, ok := src.(map[string]any)
		if !ok {
			return mismatch(src, t)
		}
		m := reflect.MakeMapWithSize(t, len(obj))
		for k, e := range obj {
			kv, err := mapKey(k, t.Key())
			if err != nil {
				continue
			}
			ev := reflect.New(t.Elem()).Elem()
			if err := decodeValue(e, ev); err != nil {
				continue
			}
			m.SetMapIndex(kv, ev)
		}
		v.Set(m)
	case reflect.Struct:
		obj, ok := src.(map[string]any)
		if !ok {
			return mismatch(src, t)
		}
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name := f.Name
			if tag, ok := f.Tag.Lookup("json"); ok {
				n, _, _ := strings.Cut(tag, ",")
				if n == "-" {
					continue
				}
				if n != "" {
					name = n
				}
			}
			e, ok := obj[name]
			if !ok {
				continue
			}
			fv := v.Field(i)
			if err := decodeValue(e, fv); err != nil {
				fv.SetZero() // lenient: a field that does not fit stays zero
			}
		}
	default:
		return mismatch(src, t)
	}
	return nil
}

func mapKey(k string, t reflect.Type) (reflect.Value, error) {
	switch t.Kind() {
	case reflect.String:
		return reflect.ValueOf(k).Convert(t), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			return reflect.Value{}, err
		}
		kv := reflect.New(t).Elem()
		if kv.OverflowInt(n) {
			return reflect.Value{}, strconv.ErrRange
		}
		kv.SetInt(n)
		return kv, nil
	}
	return reflect.Value{}, fmt.Errorf("map key type %s", t)
}

func toInt(src any) (int64, error) {
	var s string
	switch x := src.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = strings.TrimSpace(x)
	default:
		return 0, fmt.Errorf("not a number")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<63 {
		return 0, fmt.Errorf("not an integer")
	}
	return int64(f), nil
}

func toFloat(src any) (float64, error) {
	var s string
	switch x := src.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = strings.TrimSpace(x)
	default:
		return 0, fmt.Errorf("not a number")
	}
	switch strings.ToLower(s) {
	case "infinity", "+infinity", "inf", "+inf":
		return math.Inf(1), nil
	case "-infinity", "-inf":
		return math.Inf(-1), nil
	case "nan", "+nan", "-nan":
		return math.NaN(), nil
	}
	return strconv.ParseFloat(s, 64)
}

// timeLayouts are the datetime forms xapi has sent: its own
// 20240101T00:00:00Z (with or without the zone), ISO-8601 with dashes, with
// fractional seconds.
var timeLayouts = []string{
	"20060102T15:04:05Z07:00",
	"20060102T15:04:05Z0700",
	"20060102T15:04:05",
	"20060102T15:04:05.999999999Z07:00",
	"20060102T15:04:05.999999999",
	"20060102T150405Z07:00",
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05",
}

// parseTime parses an xapi datetime. Forms without a zone are UTC; a bare
// number (or numeric string, "1627478400.") is seconds since the epoch.
func parseTime(src any) (time.Time, error) {
	var s string
	switch x := src.(type) {
	case string:
		s = strings.TrimSpace(x)
	case json.Number:
		s = x.String()
	default:
		return time.Time{}, mismatch(src, timeType)
	}
	if s == "" {
		return time.Time{}, nil
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) && math.Abs(f) < 1e12 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("datetime %q: unknown form: %w", s, errs.ErrCorrupt)
}

// FormatTime writes t as xapi's datetime (UTC, 20240101T00:00:00Z).
func FormatTime(t time.Time) string { return t.UTC().Format("20060102T15:04:05Z") }

// wireValue prepares a call parameter for encoding: datetimes in xapi's
// form, nil sets and maps as empty ones (xapi refuses null), non-finite
// floats as xapi writes them.
func wireValue(v any) any {
	switch x := v.(type) {
	case nil:
		return v
	case time.Time:
		return FormatTime(x)
	case float64:
		switch {
		case math.IsNaN(x):
			return "NaN"
		case math.IsInf(x, 1):
			return "Infinity"
		case math.IsInf(x, -1):
			return "-Infinity"
		}
		return x
	case string, bool, int64, int:
		return v
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice:
		if rv.IsNil() {
			return reflect.MakeSlice(rv.Type(), 0, 0).Interface()
		}
		if rv.Type().Elem() == timeType {
			out := make([]string, rv.Len())
			for i := range out {
				out[i] = FormatTime(rv.Index(i).Interface().(time.Time))
			}
			return out
		}
	case reflect.Map:
		if rv.IsNil() {
			return reflect.MakeMap(rv.Type()).Interface()
		}
	}
	return v
}

// isZero reports whether v is its type's zero value (nil and empty maps
// and sets count as zero).
func isZero(v any) bool {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return true
	}
	switch rv.Kind() {
	case reflect.Map, reflect.Slice:
		return rv.Len() == 0
	}
	return rv.IsZero()
}
