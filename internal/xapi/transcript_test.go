package xapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// sharedXAPI returns ../shared/xapi (the datamodel and the SDK's
// transcripts), or skips the test when it is not there.
func sharedXAPI(t testing.TB) string {
	t.Helper()
	for _, d := range []string{filepath.Join("..", "..", "..", "shared", "xapi"), "/work/shared/xapi"} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
	}
	t.Skip("../shared/xapi not present")
	return ""
}

// transcript is one recorded SDK component test.
type transcript struct {
	id       string
	methods  []string
	params   map[string]any    // method -> recorded params (parsed)
	expected map[string][]byte // method -> raw {"result":…} / {"error":…} as recorded
}

func loadTranscript(t testing.TB, path string) transcript {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := parseJSON(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	top := tree.(map[string]any)
	if len(top) != 1 {
		t.Fatalf("%s: want one test, got %d", path, len(top))
	}
	var tr transcript
	for id, v := range top {
		tr.id = id
		body := v.(map[string]any)
		for _, m := range body["method"].([]any) {
			tr.methods = append(tr.methods, m.(string))
		}
		tr.params = body["params"].(map[string]any)
	}
	// The results are kept as the raw recorded bytes, so that what the
	// client decodes is exactly what was recorded (bare Infinity included).
	test, ok := member(b, tr.id)
	if !ok {
		t.Fatalf("%s: no %s", path, tr.id)
	}
	exp, ok := member(test, "expected_result")
	if !ok {
		t.Fatalf("%s: no expected_result", path)
	}
	tr.expected = map[string][]byte{}
	for _, m := range tr.methods {
		if raw, ok := member(exp, m); ok {
			tr.expected[m] = raw
		}
	}
	return tr
}

// member returns the raw bytes of key's value in the JSON object b (which
// may hold non-standard tokens such as Infinity).
func member(b []byte, key string) ([]byte, bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	i++
	for {
		i = skipWS(b, i)
		if i >= len(b) || b[i] == '}' {
			return nil, false
		}
		ke := skipValue(b, i)
		var k string
		if err := json.Unmarshal(b[i:ke], &k); err != nil {
			return nil, false
		}
		i = skipWS(b, ke)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		vs := skipWS(b, i+1)
		ve := skipValue(b, vs)
		if k == key {
			return b[vs:ve], true
		}
		i = skipWS(b, ve)
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && strings.IndexByte(" \t\r\n", b[i]) >= 0 {
		i++
	}
	return i
}

// skipValue returns the end of the value starting at i.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1
			}
		}
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipValue(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && strings.IndexByte(",}] \t\r\n", b[j]) < 0 {
		j++
	}
	return j
}

// replay serves a transcript: each request must be one of its methods
// with the recorded parameters; the answer is the recorded one.
type replay struct {
	t    testing.TB
	tr   transcript
	mu   sync.Mutex
	seen []string
	bad  []string
}

func (r *replay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/jsonrpc" || req.Method != http.MethodPost {
		http.NotFound(w, req)
		return
	}
	if ct := req.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		r.fail("content type %q", ct)
	}
	b, _ := io.ReadAll(req.Body)
	var call struct {
		JSONRPC string          `json:"jsonrpc"`
		Method  string          `json:"method"`
		Params  json.RawMessage `json:"params"`
		ID      json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(b, &call); err != nil {
		r.fail("request is not JSON: %v", err)
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if call.JSONRPC != "2.0" || len(call.ID) == 0 || string(call.ID) == "null" {
		r.fail("request %s: jsonrpc %q id %s", call.Method, call.JSONRPC, call.ID)
	}
	r.mu.Lock()
	r.seen = append(r.seen, call.Method)
	r.mu.Unlock()
	raw, ok := r.tr.expected[call.Method]
	if !slices.Contains(r.tr.methods, call.Method) || !ok {
		r.fail("unexpected method %s", call.Method)
		http.Error(w, "unexpected method", http.StatusBadRequest)
		return
	}
	got, _ := parseJSON(call.Params)
	if !sameJSON(got, r.tr.params[call.Method]) {
		r.fail("%s: params %s, recorded %v", call.Method, call.Params, r.tr.params[call.Method])
	}
	// {"result": …} as recorded, with jsonrpc and id added.
	inner := bytes.TrimSpace(raw)
	inner = bytes.TrimSpace(inner[1 : len(inner)-1])
	out := fmt.Sprintf(`{"jsonrpc": "2.0", "id": %s`, call.ID)
	if len(inner) > 0 {
		out += ", " + string(inner)
	}
	out += "}"
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, out)
}

func (r *replay) fail(format string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bad = append(r.bad, fmt.Sprintf(format, a...))
}

// sameJSON compares parsed JSON trees, numbers by value.
func sameJSON(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		fa, err1 := toFloat(x)
		fb, err2 := toFloat(b)
		return err1 == nil && err2 == nil && fa == fb
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if !sameJSON(v, y[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// TestTranscripts replays every recorded SDK test: the client must send
// the recorded method and parameters and decode the recorded answer.
func TestTranscripts(t *testing.T) {
	dir := filepath.Join(sharedXAPI(t), "transcripts")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in %s", dir)
	}
	ref := "OpaqueRef:6ef08bce-0bf0-30ff-804f-5f0ee4bbdd13"
	checks := map[string]func(t *testing.T, ctx context.Context, c *Client){
		"session_login.json": func(t *testing.T, ctx context.Context, c *Client) {
			if err := c.Login(ctx); err != nil {
				t.Fatal(err)
			}
			pools, err := c.Pool().GetAll(ctx)
			if err != nil || len(pools) != 1 {
				t.Fatalf("pool.get_all: %v %v", pools, err)
			}
			p, err := c.Pool().GetRecord(ctx, pools[0])
			if err != nil {
				t.Fatal(err)
			}
			h, err := c.Host().GetRecord(ctx, p.Master)
			if err != nil {
				t.Fatal(err)
			}
			if h.NameLabel != "host0" || h.SoftwareVersion["xapi"] != "24.11" || h.APIVersionMajor != 2 || h.APIVersionMinor != 21 {
				t.Errorf("host record %+v", h)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		},
		"vm_get_all_records.json": func(t *testing.T, ctx context.Context, c *Client) {
			vms, err := c.VM().GetAllRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			vm, ok := vms[VMRef(ref)]
			if !ok || len(vms) != 2 {
				t.Fatalf("records %v", vms)
			}
			if vm.HVMBootParams["firmware"] != "uefi" || vm.VCPUsMax != 2 || vm.HVMShadowMultiplier != 1 ||
				len(vm.VBDs) != 3 || len(vm.VIFs) != 1 || vm.NameLabel == "" || vm.PowerState == "" {
				t.Errorf("record %+v", vm)
			}
		},
		"vm_special_value.json": func(t *testing.T, ctx context.Context, c *Client) {
			vms, err := c.VM().GetAllRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]struct {
				mult float64
				at   time.Time
			}{
				"OpaqueRef:vmref009-7e0e-411f-1b6c-4308fd33b164": {math.Inf(1), time.Date(2021, 7, 28, 13, 20, 0, 0, time.UTC)},
				"OpaqueRef:vmref010-7e0e-411f-1b6c-4308fd33b164": {math.Inf(1), time.Date(2024, 4, 20, 12, 0, 0, 0, time.UTC)},
				"OpaqueRef:vmref011-7e0e-411f-1b6c-4308fd33b164": {math.Inf(-1), time.Date(2024, 4, 20, 12, 0, 0, 0, time.UTC)},
				"OpaqueRef:vmref012-7e0e-411f-1b6c-4308fd33b164": {math.Inf(-1), time.Date(2024, 4, 20, 12, 0, 0, 0, time.UTC)},
			}
			if len(vms) != len(want) {
				t.Fatalf("%d records", len(vms))
			}
			for r, w := range want {
				vm := vms[VMRef(r)]
				if vm.HVMShadowMultiplier != w.mult || !vm.SnapshotTime.Equal(w.at) || vm.SnapshotTime.Location() != time.UTC {
					t.Errorf("%s: multiplier %v snapshot_time %v", r, vm.HVMShadowMultiplier, vm.SnapshotTime)
				}
			}
		},
		"http_error.json": func(t *testing.T, ctx context.Context, c *Client) {
			rec, err := c.VM().GetRecord(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(rec, VMRecord{}) {
				t.Errorf("record %+v", rec)
			}
		},
		"rpc_error.json": func(t *testing.T, ctx context.Context, c *Client) {
			_, err := c.VM().GetRecord(ctx, VMRef(ref))
			var xe *Error
			if !errors.As(err, &xe) || xe.Code != "123456" || !slices.Equal(xe.Params, []string{"2.0"}) {
				t.Fatalf("error %#v", err)
			}
		},
		"xapi_error.json": func(t *testing.T, ctx context.Context, c *Client) {
			_, err := c.VM().GetRecord(ctx, VMRef(ref))
			var xe *Error
			if !errors.As(err, &xe) || xe.Code != "HANDLE_INVALID" || !slices.Equal(xe.Params, []string{ref}) || xe.RPCCode != 1 {
				t.Fatalf("error %#v", err)
			}
			if !errs.Is(err, errs.NotFound) || !strings.Contains(err.Error(), "VM.get_record") {
				t.Errorf("error %v: code %v", err, errs.CodeOf(err))
			}
		},
		"event_from.json": func(t *testing.T, ctx context.Context, c *Client) {
			b, err := c.EventFrom(ctx, []string{"vm"}, "token0", 600*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if b.Token != "token0" || len(b.Events) != 1 || b.ValidRefCounts["OpaqueRef:5event01-7b62-f571-d38b-754341a973e5"] != 6 {
				t.Fatalf("batch %+v", b)
			}
			ev := b.Events[0]
			if ev.ID != 10 || ev.Class != "vm" || ev.Operation != "add" || ev.ObjUUID != "cevnet08-3e97-53bb-4f97-bd039ca8c217" ||
				!ev.Timestamp.Equal(time.Date(2024, 1, 1, 13, 20, 11, 0, time.UTC)) {
				t.Errorf("event %+v", ev)
			}
			var snap map[string]string
			if err := ev.Decode(&snap); err != nil || snap["NameLabel"] != "snapshot0" {
				t.Errorf("snapshot %v %v", snap, err)
			}
		},
		"async_vm_import.json": func(t *testing.T, ctx context.Context, c *Client) {
			task, err := c.VM().AsyncImport(ctx, "http://vm_import_url", "OpaqueRef:5ec2d621-7b62-f571-d38b-754341a973e5", false, false)
			if err != nil || task != "OpaqueRef:5task621-7b62-f571-d38b-754341a973e5" {
				t.Fatalf("task %q %v", task, err)
			}
		},
		"vm_import.json": func(t *testing.T, ctx context.Context, c *Client) {
			vms, err := c.VM().Import(ctx, "http://vm_import_url", "OpaqueRef:5ec2d621-7b62-f571-s38r-754341a973e5", false, false)
			if err != nil || !slices.Equal(vms, []VMRef{"OpaqueRef:5ec2d621-7b62-f571-v38m-754341a973e5"}) {
				t.Fatalf("vms %v %v", vms, err)
			}
		},
		"vm_get_snapshot_time.json": func(t *testing.T, ctx context.Context, c *Client) {
			at, err := c.VM().GetSnapshotTime(ctx, VMRef(ref))
			if err != nil || !at.Equal(time.Date(2024, 4, 20, 12, 0, 0, 0, time.UTC)) {
				t.Fatalf("time %v %v", at, err)
			}
		},
		"vm_query_data_source.json": func(t *testing.T, ctx context.Context, c *Client) {
			var f float64
			if err := c.Call(ctx, "VM.query_data_source", []any{ref, "CPU0 usage"}, &f); err != nil || !math.IsNaN(f) {
				t.Fatalf("value %v %v", f, err)
			}
		},
		"vm_get_data_sources.json": func(t *testing.T, ctx context.Context, c *Client) {
			var ds []struct {
				Enabled   bool    `json:"enabled"`
				Max       float64 `json:"max"`
				NameLabel string  `json:"name_label"`
				Units     string  `json:"units"`
			}
			if err := c.Call(ctx, "VM.get_data_sources", []any{ref}, &ds); err != nil {
				t.Fatal(err)
			}
			if len(ds) != 1 || !ds[0].Enabled || ds[0].Max != 2.6 || ds[0].NameLabel != "memory" || ds[0].Units != "B" {
				t.Errorf("data sources %+v", ds)
			}
		},
		"vm_retrieve_wlb_recommendations.json": func(t *testing.T, ctx context.Context, c *Client) {
			var rec map[HostRef][]string
			if err := c.Call(ctx, "VM.retrieve_wlb_recommendations", []any{"OpaqueRef:5ec2d621-7b62-f571-v38m-754341a973e5"}, &rec); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rec["OpaqueRef:4a0fde9c-5709-4f66-9968-64fb6162bd97"], []string{"host0"}) {
				t.Errorf("recommendations %v", rec)
			}
		},
		"vm_migrate_send.json": func(t *testing.T, ctx context.Context, c *Client) {
			var vm VMRef
			err := c.Call(ctx, "VM.migrate_send", []any{
				VMRef("OpaqueRef:5vm2d621-7b62-f571-vm00-754341a973e5"),
				map[string]string{"name_label": "host1"},
				true,
				map[VDIRef]SRRef{"OpaqueRef:5vdid621-7b62-f571-vdi8-754341a973e5": "OpaqueRef:5sr2d621-7b62-f571-s38r-754341a973e5"},
				map[VIFRef]NetworkRef{"OpaqueRef:9vifb8a9-f6a3-69d2-vifb-7a7b7c81c49e": "OpaqueRef:9network-f6a3-69d2-netw-7a7b7c81c49e"},
				map[string]string(nil),
				map[VGPURef]GPUGroupRef{"OpaqueRef:9vgpu8a9-f6a3-69d2-vgpu-7a7b7c81c49e": "OpaqueRef:9gpugroup-f6a3-69d2-grou-7a7b7c81c49e"},
				map[VDIRef]string{"OpaqueRef:5vdid621-7b62-f571-vdi8-754341a973e5": "vhd"},
			}, &vm)
			if err != nil || vm != "OpaqueRef:5vm2d621-7b62-f571-vm01-754341a973e5" {
				t.Fatalf("vm %q %v", vm, err)
			}
		},
	}
	seen := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		seen[name] = true
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			check, ok := checks[name]
			if !ok {
				t.Fatalf("no check for transcript %s: add one", name)
			}
			tr := loadTranscript(t, path)
			rp := &replay{t: t, tr: tr}
			srv := httptest.NewServer(rp)
			defer srv.Close()
			var opts Options
			if p, ok := tr.params["session.login_with_password"].([]any); ok {
				opts = Options{User: p[0].(string), Password: Secret(p[1].(string)), Version: p[2].(string), Originator: p[3].(string)}
			}
			c, err := New(srv.URL, &opts)
			if err != nil {
				t.Fatal(err)
			}
			check(t, t.Context(), c)
			rp.mu.Lock()
			defer rp.mu.Unlock()
			for _, b := range rp.bad {
				t.Error(b)
			}
			for _, m := range tr.methods {
				if _, ok := tr.expected[m]; ok && !slices.Contains(rp.seen, m) {
					t.Errorf("recorded method %s was not called", m)
				}
			}
		})
	}
	for name := range checks {
		if !seen[name] {
			t.Errorf("check for %s, which is not among the transcripts", name)
		}
	}
}
