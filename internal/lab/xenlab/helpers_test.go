package xenlab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/vhd"
)

const (
	testUser = "root"
	testPW   = "s3cret pass"
)

// lab is a server under test with a logged-in client.
type lab struct {
	t       *testing.T
	s       *Server
	hs      *httptest.Server
	dir     string
	session string
	v1      bool
}

func newLab(t *testing.T, dir string, mod ...func(*Options)) *lab {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	o := Options{Dir: dir, Users: map[string]string{testUser: testPW}, Logger: slog.New(slog.DiscardHandler)}
	for _, m := range mod {
		m(&o)
	}
	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	l := &lab{t: t, s: s, hs: hs, dir: dir}
	t.Cleanup(func() { l.close() })
	var ref string
	l.mustCall(&ref, "session.login_with_password", testUser, testPW, "2.21", "xenlab test")
	l.session = ref
	return l
}

func (l *lab) close() {
	if l.hs != nil {
		l.hs.CloseClientConnections()
		l.hs.Close()
		l.hs = nil
	}
	if err := l.s.Close(); err != nil {
		l.t.Errorf("close lab: %v", err)
	}
}

// rpcResult is a decoded JSON-RPC response.
type rpcResult struct {
	Status int
	Raw    map[string]json.RawMessage
	Result json.RawMessage
	Code   string   // error code, v1 or v2
	Params []string // error parameters
}

// raw posts a JSON-RPC request body and decodes the response.
func (l *lab) raw(body []byte) rpcResult {
	l.t.Helper()
	resp, err := http.Post(l.hs.URL+"/jsonrpc", "application/json", bytes.NewReader(body))
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := rpcResult{Status: resp.StatusCode}
	if resp.StatusCode != 200 {
		return r
	}
	if err := json.Unmarshal(b, &r.Raw); err != nil {
		l.t.Fatalf("response %s: %v", b, err)
	}
	r.Result = r.Raw["result"]
	if e, ok := r.Raw["error"]; ok && string(e) != "null" {
		var v1 []string
		if json.Unmarshal(e, &v1) == nil && len(v1) > 0 {
			r.Code, r.Params = v1[0], v1[1:]
		} else {
			var v2 struct {
				Code    int      `json:"code"`
				Message string   `json:"message"`
				Data    []string `json:"data"`
			}
			if err := json.Unmarshal(e, &v2); err != nil {
				l.t.Fatalf("error %s: %v", e, err)
			}
			r.Code, r.Params = v2.Message, v2.Data
		}
	}
	return r
}

func (l *lab) request(method string, params ...any) rpcResult {
	l.t.Helper()
	req := map[string]any{"method": method, "params": params, "id": 7}
	if !l.v1 {
		req["jsonrpc"] = "2.0"
	}
	b, err := json.Marshal(req)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.raw(b)
}

// call calls a method with the session as first parameter.
func (l *lab) call(method string, params ...any) rpcResult {
	l.t.Helper()
	return l.request(method, append([]any{l.session}, params...)...)
}

// mustCall calls method (with the session when logged in, except for the
// login) and decodes the result into out.
func (l *lab) mustCall(out any, method string, params ...any) {
	l.t.Helper()
	var r rpcResult
	if l.session == "" || method == "session.login_with_password" {
		r = l.request(method, params...)
	} else {
		r = l.call(method, params...)
	}
	if r.Code != "" || r.Status != 200 {
		l.t.Fatalf("%s: HTTP %d error %s %v", method, r.Status, r.Code, r.Params)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result, out); err != nil {
			l.t.Fatalf("%s: result %s: %v", method, r.Result, err)
		}
	}
}

func (l *lab) wantErr(r rpcResult, code string, params ...string) {
	l.t.Helper()
	if r.Code != code {
		l.t.Fatalf("error %q %v, want %q", r.Code, r.Params, code)
	}
	if params != nil && strings.Join(r.Params, "|") != strings.Join(params, "|") {
		l.t.Fatalf("%s params %q, want %q", code, r.Params, params)
	}
}

func (l *lab) defaultSR() string {
	var pools []string
	l.mustCall(&pools, "pool.get_all")
	var sr string
	l.mustCall(&sr, "pool.get_default_SR", pools[0])
	return sr
}

func (l *lab) network() string {
	var nets []string
	l.mustCall(&nets, "network.get_all")
	return nets[0]
}

// vmRecord is a complete VM.create argument.
func vmRecord(name string) map[string]any {
	return map[string]any{
		"name_label": name, "name_description": "test VM", "user_version": 1, "is_a_template": false,
		"affinity": nullRef, "memory_static_max": 64 << 20, "memory_dynamic_max": 64 << 20,
		"memory_dynamic_min": 64 << 20, "memory_static_min": 16 << 20, "VCPUs_params": map[string]any{},
		"VCPUs_max": 1, "VCPUs_at_startup": 1, "actions_after_shutdown": "destroy",
		"actions_after_reboot": "restart", "actions_after_crash": "restart", "PV_bootloader": "",
		"PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "",
		"HVM_boot_policy": "BIOS order", "HVM_boot_params": map[string]any{"order": "c"},
		"platform": map[string]any{"acpi": "1"}, "PCI_bus": "", "other_config": map[string]any{},
		"recommendations": "",
	}
}

func (l *lab) mkVM(name string) string {
	var ref string
	l.mustCall(&ref, "VM.create", vmRecord(name))
	return ref
}

func (l *lab) mkVDI(name string, size int64) string {
	var ref string
	l.mustCall(&ref, "VDI.create", map[string]any{
		"name_label": name, "name_description": "", "SR": l.defaultSR(), "virtual_size": size,
		"type": "user", "sharable": false, "read_only": false, "other_config": map[string]any{},
	})
	return ref
}

func (l *lab) attach(vm, vdi, userdevice string, bootable bool) string {
	var ref string
	l.mustCall(&ref, "VBD.create", map[string]any{
		"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": bootable, "mode": "RW", "type": "Disk",
		"empty": false, "other_config": map[string]any{}, "qos_algorithm_type": "", "qos_algorithm_params": map[string]any{},
	})
	return ref
}

func (l *lab) field(class, ref, field string, out any) {
	l.mustCall(out, class+".get_"+field, ref)
}

// httpURL builds a transfer URL with the session.
func (l *lab) httpURL(path string, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	if q.Get("session_id") == "" {
		q.Set("session_id", l.session)
	}
	return l.hs.URL + path + "?" + q.Encode()
}

func (l *lab) put(path string, q url.Values, body []byte) (*http.Response, []byte) {
	l.t.Helper()
	req, err := http.NewRequestWithContext(l.t.Context(), http.MethodPut, l.httpURL(path, q), bytes.NewReader(body))
	if err != nil {
		l.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (l *lab) get(path string, q url.Values) (*http.Response, []byte) {
	l.t.Helper()
	req, err := http.NewRequestWithContext(l.t.Context(), http.MethodGet, l.httpURL(path, q), nil)
	if err != nil {
		l.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		l.t.Fatalf("GET %s: %v", path, err)
	}
	return resp, b
}

func (l *lab) importRaw(vdi string, data []byte) {
	l.t.Helper()
	resp, b := l.put("/import_raw_vdi", url.Values{"vdi": {vdi}, "format": {"raw"}}, data)
	if resp.StatusCode != 200 {
		l.t.Fatalf("import_raw_vdi: %s %s", resp.Status, b)
	}
}

func (l *lab) exportRaw(vdi string) []byte {
	l.t.Helper()
	resp, b := l.get("/export_raw_vdi", url.Values{"vdi": {vdi}, "format": {"raw"}})
	if resp.StatusCode != 200 {
		l.t.Fatalf("export_raw_vdi: %s %s", resp.Status, b)
	}
	return b
}

// waitTask polls a task until it leaves pending.
func (l *lab) waitTask(task string) map[string]any {
	l.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var rec map[string]any
		l.mustCall(&rec, "task.get_record", task)
		if rec["status"] != "pending" && rec["status"] != "cancelling" {
			return rec
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("task %s still %v", task, rec["status"])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// srFiles lists the files of the SR directory.
func (l *lab) srFiles() []string {
	l.t.Helper()
	var uuid string
	l.field("SR", l.defaultSR(), "uuid", &uuid)
	ents, err := os.ReadDir(filepath.Join(l.dir, "sr", uuid))
	if err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func (l *lab) vdiFile(vdi string) string {
	var uuid, sr, sruuid string
	l.field("VDI", vdi, "uuid", &uuid)
	l.field("VDI", vdi, "SR", &sr)
	l.field("SR", sr, "uuid", &sruuid)
	return filepath.Join(l.dir, "sr", sruuid, uuid+".vhd")
}

// pattern returns deterministic test data with some zero blocks.
func pattern(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		blk := i / (64 << 10)
		if blk%3 == 1 {
			continue
		}
		b[i] = byte(i*7+int(seed)*13+blk) | 1
	}
	return b
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

func newSchemaRegistry() *disk.Registry { return disk.NewRegistry(vhd.Format(), raw.Format()) }

// sameFile reports whether two VDIs are one file (one shared by the other).
func (l *lab) sameFile(a, b string) bool {
	l.t.Helper()
	l.s.mu.Lock()
	pa, pb := l.s.vdiPathLocked(l.s.db.objs[a]), l.s.vdiPathLocked(l.s.db.objs[b])
	l.s.mu.Unlock()
	sa, err := os.Stat(pa)
	if err != nil {
		l.t.Fatal(err)
	}
	sb, err := os.Stat(pb)
	if err != nil {
		l.t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}
