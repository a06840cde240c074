package xva

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// sharedDir finds ../shared/xapi beside the repository, or skips.
func sharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("repository root not found")
		}
		dir = parent
	}
	p := filepath.Join(dir, "..", "shared", "xapi")
	if _, err := os.Stat(p); err != nil {
		t.Skip("../shared/xapi not present")
	}
	return p
}

type modelField struct {
	Name    string  `json:"name"`
	Type    string  `json:"type"`
	Default *string `json:"default"`
}

// loadDatamodel returns the fields of the classes the writer exports.
func loadDatamodel(t testing.TB) map[string][]modelField {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedDir(t), "xenapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	var classes []struct {
		Name   string       `json:"name"`
		Fields []modelField `json:"fields"`
	}
	if err := json.Unmarshal(b, &classes); err != nil {
		t.Fatal(err)
	}
	out := map[string][]modelField{}
	for _, c := range classes {
		switch c.Name {
		case "VM", "VBD", "VDI", "VIF", "network", "SR":
			out[c.Name] = c.Fields
		}
	}
	if len(out) != 6 {
		t.Fatalf("datamodel classes: %d", len(out))
	}
	return out
}

// loadTranscriptVM returns the first full VM record of the recorded
// VM.get_all_records answer, as an XML-RPC value tree.
func loadTranscriptVM(t testing.TB) *xv {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedDir(t), "transcripts", "vm_get_all_records.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]struct {
		Expected map[string]struct {
			Result map[string]any `json:"result"`
		} `json:"expected_result"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, tc := range doc {
		recs := tc.Expected["VM.get_all_records"].Result
		keys := make([]string, 0, len(recs))
		for k := range recs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if rec, ok := recs[k].(map[string]any); ok && rec["HVM_boot_params"] != nil {
				return jsonToXV(rec)
			}
		}
	}
	t.Fatal("no full VM record in the transcript")
	return nil
}

// jsonToXV maps JSON-RPC values onto the XML-RPC shapes of ova.xml.
func jsonToXV(v any) *xv {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s := &xv{typ: "struct"}
		for _, k := range keys {
			s.mem = append(s.mem, xmember{k, jsonToXV(x[k])})
		}
		return s
	case []any:
		a := &xv{typ: "array"}
		for _, it := range x {
			a.items = append(a.items, jsonToXV(it))
		}
		return a
	case bool:
		if x {
			return &xv{typ: "boolean", text: "1"}
		}
		return &xv{typ: "boolean", text: "0"}
	case float64:
		if x == float64(int64(x)) {
			return &xv{text: fmt.Sprint(int64(x))}
		}
		return &xv{typ: "double", text: fmt.Sprint(x)}
	case string:
		return &xv{text: x}
	}
	return &xv{typ: "nil"}
}
