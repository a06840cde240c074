package xapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		status int
		code   string
		params []string
		want   errs.Code
	}{
		{"v2 auth", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"SESSION_AUTHENTICATION_FAILED","data":["root","Authentication failure"]}}`, 200, "SESSION_AUTHENTICATION_FAILED", []string{"root", "Authentication failure"}, errs.PermissionDenied},
		{"v1 handle", `{"id":1,"result":null,"error":["HANDLE_INVALID","VM","OpaqueRef:x"]}`, 200, "HANDLE_INVALID", []string{"VM", "OpaqueRef:x"}, errs.NotFound},
		{"v2 power state", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"VM_BAD_POWER_STATE","data":["OpaqueRef:x","halted","running"]}}`, 200, "VM_BAD_POWER_STATE", []string{"OpaqueRef:x", "halted", "running"}, errs.FailedPrecondition},
		{"param count", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"MESSAGE_PARAMETER_COUNT_MISMATCH","data":["VM.start","3","2"]}}`, 200, "MESSAGE_PARAMETER_COUNT_MISMATCH", []string{"VM.start", "3", "2"}, errs.InvalidArgument},
		{"unknown method", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"MESSAGE_METHOD_UNKNOWN","data":["VM.frobnicate"]}}`, 200, "MESSAGE_METHOD_UNKNOWN", []string{"VM.frobnicate"}, errs.Unimplemented},
		{"host is slave, master unreachable", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"HOST_IS_SLAVE","data":["127.0.0.1:1"]}}`, 200, "", nil, errs.Unavailable},
		{"data scalar", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"UUID_INVALID","data":"VM"}}`, 200, "UUID_INVALID", []string{"VM"}, errs.NotFound},
		{"data numbers", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"VDI_TOO_LARGE","data":[1, 2.5, true, null]}}`, 200, "VDI_TOO_LARGE", []string{"1", "2.5", "true", ""}, errs.InvalidArgument},
		{"in use", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"VDI_IN_USE","data":[]}}`, 200, "VDI_IN_USE", nil, errs.FailedPrecondition},
		{"sr full", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"SR_FULL","data":["1","2"]}}`, 200, "SR_FULL", []string{"1", "2"}, errs.FailedPrecondition},
		{"other op", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"OTHER_OPERATION_IN_PROGRESS","data":["VM","x"]}}`, 200, "OTHER_OPERATION_IN_PROGRESS", []string{"VM", "x"}, errs.Conflict},
		{"suffix not found", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"PIF_NOT_FOUND","data":[]}}`, 200, "PIF_NOT_FOUND", nil, errs.NotFound},
		{"unclassified", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"INTERNAL_ERROR","data":["boom"]}}`, 200, "INTERNAL_ERROR", []string{"boom"}, errs.Unknown},
		{"error with 500", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"HOST_STILL_BOOTING","data":[]}}`, 500, "HOST_STILL_BOOTING", nil, errs.Unavailable},
		{"plain 503", `busy`, 503, "", nil, errs.Unavailable},
		{"plain 401", `no`, 401, "", nil, errs.PermissionDenied},
		{"plain 404", `no`, 404, "", nil, errs.NotFound},
		{"not json", `<html>`, 200, "", nil, errs.Corrupt},
		{"not an object", `[1,2]`, 200, "", nil, errs.Corrupt},
		{"no result", `{"id":1}`, 200, "", nil, errs.Corrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			defer srv.Close()
			c, err := New(srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			var r string
			err = c.Call(t.Context(), "VM.get_name_label", []any{"OpaqueRef:x"}, &r)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errs.CodeOf(err); got != tt.want {
				t.Errorf("code %v, want %v (%v)", got, tt.want, err)
			}
			var xe *Error
			if tt.code == "" {
				if errors.As(err, &xe) {
					t.Errorf("got an xapi error %v", err)
				}
				return
			}
			if !errors.As(err, &xe) || xe.Code != tt.code || !slices.Equal(xe.Params, tt.params) || xe.Method != "VM.get_name_label" {
				t.Fatalf("error %#v", err)
			}
		})
	}
}

func TestConnectionErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c, err := New("http://"+addr, &Options{User: "root", Password: "hunter2"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Login(t.Context())
	if !errs.Is(err, errs.Unavailable) {
		t.Fatalf("login to a closed port: %v (%v)", err, errs.CodeOf(err))
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("password in error: %v", err)
	}

	// A server that hangs up mid-answer.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"res"))
		conn.Close()
	}))
	defer srv.Close()
	c, _ = New(srv.URL, nil)
	if err := c.Call(t.Context(), "VM.get_all", nil, nil); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("cut answer: %v", err)
	}

	// Cancelled context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Call(ctx, "VM.get_all", nil, nil); !errs.Is(err, errs.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "https://", "https://root:pw@host", "host:443"} {
		if _, err := New(u, nil); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("%q: %v", u, err)
		} else if strings.Contains(err.Error(), "pw@") {
			t.Errorf("%q: credentials in error %v", u, err)
		}
	}
	if _, err := New("http://h", &Options{Fingerprint: "AB"}); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("fingerprint over http: %v", err)
	}
	if _, err := New("https://h", &Options{Fingerprint: strings.Repeat("ab", 32), Insecure: true}); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("fingerprint and insecure: %v", err)
	}
}

// TestSessionRelogin: a call failing with SESSION_INVALID logs in again and
// is retried once with the new session; secrets stay out of the logs.
func TestSessionRelogin(t *testing.T) {
	f := newFake(t)
	var logins atomic.Int32
	f.handle("session.login_with_password", loginHandler("root", "s3cret-pw", func() string {
		return fmt.Sprintf("OpaqueRef:sess-%d", logins.Add(1))
	}))
	expire := atomic.Bool{}
	f.handle("VM.get_all", func(p []any) (any, *Error) {
		if expire.Load() && p[0] == "OpaqueRef:sess-1" {
			return nil, &Error{Code: "SESSION_INVALID", Params: []string{p[0].(string)}}
		}
		return []string{"OpaqueRef:vm1"}, nil
	})
	f.handle("session.logout", func(p []any) (any, *Error) { return "", nil })
	var logs logBuffer
	c, err := Dial(t.Context(), f.srv.URL, &Options{User: "root", Password: "s3cret-pw", Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	vms, err := c.VM().GetAll(t.Context())
	if err != nil || len(vms) != 1 {
		t.Fatalf("%v %v", vms, err)
	}
	expire.Store(true)
	vms, err = c.VM().GetAll(t.Context())
	if err != nil || len(vms) != 1 {
		t.Fatalf("after expiry: %v %v", vms, err)
	}
	if n := logins.Load(); n != 2 {
		t.Errorf("%d logins, want 2", n)
	}
	calls := f.callsTo("VM.get_all")
	if len(calls) != 3 || calls[2].Params[0] != "OpaqueRef:sess-2" {
		t.Errorf("calls %+v", calls)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if lo := f.callsTo("session.logout"); len(lo) != 1 || lo[0].Params[0] != "OpaqueRef:sess-2" {
		t.Errorf("logout %+v", lo)
	}
	checkNoSecrets(t, logs.String(), "s3cret-pw", "OpaqueRef:sess-1", "OpaqueRef:sess-2")

	// A session that stays invalid: one retry only, then the error.
	f.handle("VM.get_all", func(p []any) (any, *Error) {
		return nil, &Error{Code: "SESSION_INVALID", Params: []string{p[0].(string)}}
	})
	c, err = Dial(t.Context(), f.srv.URL, &Options{User: "root", Password: "s3cret-pw", Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	before := len(f.callsTo("VM.get_all"))
	_, err = c.VM().GetAll(t.Context())
	if !HasCode(err, "SESSION_INVALID") || !errs.Is(err, errs.PermissionDenied) {
		t.Fatalf("stale session: %v", err)
	}
	if n := len(f.callsTo("VM.get_all")) - before; n != 2 {
		t.Errorf("%d attempts, want 2", n)
	}
	checkNoSecrets(t, err.Error(), "OpaqueRef:sess-3", "OpaqueRef:sess-4", "s3cret-pw")

	// Bad credentials.
	_, err = Dial(t.Context(), f.srv.URL, &Options{User: "root", Password: "wrong-pw", Logger: logs.logger()})
	if !HasCode(err, "SESSION_AUTHENTICATION_FAILED") || !errs.Is(err, errs.PermissionDenied) {
		t.Fatalf("bad password: %v", err)
	}
	checkNoSecrets(t, err.Error()+logs.String(), "wrong-pw")
}

func checkNoSecrets(t *testing.T, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("secret %q appears in:\n%s", s, text)
		}
	}
}

// TestHostIsSlave: a pool member answers HOST_IS_SLAVE with the master's
// address; the client moves there, keeping scheme and port when the
// address has none.
func TestHostIsSlave(t *testing.T) {
	master := newFake(t)
	master.handle("session.login_with_password", loginHandler("root", "pw", func() string { return "OpaqueRef:m" }))
	master.handle("pool.get_all", func(p []any) (any, *Error) {
		if p[0] != "OpaqueRef:m" {
			return nil, &Error{Code: "SESSION_INVALID", Params: []string{"x"}}
		}
		return []string{"OpaqueRef:pool"}, nil
	})
	mu, _ := url.Parse(master.srv.URL)
	member := newFake(t)
	member.handle("session.login_with_password", func([]any) (any, *Error) {
		return nil, &Error{Code: "HOST_IS_SLAVE", Params: []string{mu.Host}}
	})
	c, err := Dial(t.Context(), member.srv.URL, &Options{User: "root", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr() != mu.Host {
		t.Errorf("talking to %s, want %s", c.Addr(), mu.Host)
	}
	pools, err := c.Pool().GetAll(t.Context())
	if err != nil || len(pools) != 1 {
		t.Fatalf("%v %v", pools, err)
	}

	// Address without a port: the original port is kept.
	c2, _ := New("https://10.0.0.5:4443", nil)
	c2.moveTo("10.0.0.1")
	if c2.URL() != "https://10.0.0.1:4443" {
		t.Errorf("moved to %s", c2.URL())
	}
	c3, _ := New("https://pool.example", nil)
	c3.moveTo("fe80::1")
	if c3.URL() != "https://[fe80::1]" {
		t.Errorf("moved to %s", c3.URL())
	}

	// A call (not a login) answered HOST_IS_SLAVE also moves.
	member2 := newFake(t)
	member2.handle("session.login_with_password", loginHandler("root", "pw", func() string { return "OpaqueRef:s" }))
	member2.handle("pool.get_all", func([]any) (any, *Error) {
		return nil, &Error{Code: "HOST_IS_SLAVE", Params: []string{mu.Host}}
	})
	c4, err := Dial(t.Context(), member2.srv.URL, &Options{User: "root", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if pools, err := c4.Pool().GetAll(t.Context()); err != nil || len(pools) != 1 {
		t.Fatalf("%v %v", pools, err)
	}
}

// TestTLS: pinned fingerprints accept the right certificate and refuse
// others; a CA file works; the system roots refuse a self-signed one.
func TestTLS(t *testing.T) {
	f := newFake(t)
	f.handle("session.login_with_password", loginHandler("root", "pw", func() string { return "OpaqueRef:t" }))
	srv := httptest.NewUnstartedServer(f)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	cert := srv.Certificate()
	good := Fingerprint(cert.Raw)
	other := strings.Repeat("AB:", 31) + "AB"
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts Options
		want errs.Code // Unknown: success
	}{
		{"pinned", Options{Fingerprint: good}, errs.Unknown},
		{"pinned lower case without colons", Options{Fingerprint: strings.ToLower(strings.ReplaceAll(good, ":", ""))}, errs.Unknown},
		{"one of several pins", Options{Fingerprint: other + "," + good}, errs.Unknown},
		{"wrong pin", Options{Fingerprint: other}, errs.PermissionDenied},
		{"ca file", Options{CAFile: caFile}, errs.Unknown},
		{"system roots", Options{}, errs.PermissionDenied},
		{"insecure", Options{Insecure: true}, errs.Unknown},
		{"missing ca file", Options{CAFile: caFile + ".missing"}, errs.NotFound},
		{"bad pin", Options{Fingerprint: "12:34"}, errs.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.User, o.Password = "root", "pw"
			c, err := Dial(t.Context(), srv.URL, &o)
			if tt.want == errs.Unknown {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if errs.CodeOf(err) != tt.want {
				t.Fatalf("error %v (%v), want %v", err, errs.CodeOf(err), tt.want)
			}
			if c != nil {
				t.Fatal("client returned with an error")
			}
		})
	}
	if _, err := ParseFingerprint("SHA256 Fingerprint=" + good); err != nil {
		t.Errorf("openssl form: %v", err)
	}
}

// TestSecretRedaction: every way of printing a Secret hides it.
func TestSecretRedaction(t *testing.T) {
	s := Secret("hunter2")
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %s %q %x %X %#v %+v %d", s, s, s, s, s, s, s, s),
		fmt.Sprint(struct{ P Secret }{s}), fmt.Sprintf("%+v", &struct{ P Secret }{s}),
	} {
		if strings.Contains(out, "hunter2") || strings.Contains(out, fmt.Sprintf("%x", "hunter2")) {
			t.Errorf("leaked: %s", out)
		}
	}
	var logs logBuffer
	logs.logger().Info("login", "password", s, "cfg", struct{ P Secret }{s})
	checkNoSecrets(t, logs.String(), "hunter2")
	if s.Reveal() != "hunter2" || Secret("").String() != "" {
		t.Error("reveal")
	}
}

func TestLenientDecode(t *testing.T) {
	type rec struct {
		I  int64             `json:"i"`
		F  float64           `json:"f"`
		S  string            `json:"s"`
		B  bool              `json:"b"`
		T  time.Time         `json:"t"`
		M  map[string]string `json:"m"`
		L  []VMRef           `json:"l"`
		IM map[int64]float64 `json:"im"`
	}
	tests := []struct {
		in   string
		want rec
	}{
		{`{"i": 5, "f": 1.5, "s": "x", "b": true}`, rec{I: 5, F: 1.5, S: "x", B: true}},
		{`{"i": "5", "f": "NaN", "s": 7, "b": "true"}`, rec{I: 5, F: math.NaN(), S: "7", B: true}},
		{`{"f": -Infinity, "unknown": {"deep": [1,2]}}`, rec{F: math.Inf(-1)}},
		{`{"i": {"x":1}, "s": ["a"], "m": {"a": "b", "c": 3}}`, rec{M: map[string]string{"a": "b", "c": "3"}}},
		{`{"t": "20240101T10:00:00Z", "l": ["OpaqueRef:a", 5, {"x":1}]}`, rec{T: time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC), L: []VMRef{"OpaqueRef:a", "5"}}},
		{`{"t": "2024-01-01T11:00:00+01:00", "im": {"1": 2.5, "x": 3}}`, rec{T: time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC), IM: map[int64]float64{1: 2.5}}},
		{`{"t": 1704103200, "i": 1e3}`, rec{T: time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC), I: 1000}},
		{`{"t": "garbage", "i": 1.5}`, rec{}},
	}
	for _, tt := range tests {
		tree, err := parseJSON([]byte(tt.in))
		if err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		var got rec
		if err := decode(tree, &got); err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		if math.IsNaN(tt.want.F) && math.IsNaN(got.F) {
			got.F, tt.want.F = 0, 0
		}
		if !equalRec(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
	// Top-level mismatches are errors.
	tree, _ := parseJSON([]byte(`{"a":1}`))
	var s string
	if err := decode(tree, &s); !errs.Is(err, errs.Corrupt) {
		t.Errorf("object into string: %v", err)
	}
	// Strings that merely look like tokens stay strings.
	tree, _ = parseJSON([]byte(`{"s": "NaN Infinity -Infinity \" NaN"}`))
	var r rec
	decode(tree, &r)
	if r.S != `NaN Infinity -Infinity " NaN` {
		t.Errorf("string %q", r.S)
	}
}

func equalRec(a, b any) bool { return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b) }

func TestWireValue(t *testing.T) {
	var nilMap map[string]string
	var nilSet []VDIRef
	tests := []struct {
		in   any
		want string
	}{
		{time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), `"20240102T02:04:05Z"`},
		{nilMap, `{}`},
		{nilSet, `[]`},
		{math.Inf(1), `"Infinity"`},
		{VMRef("OpaqueRef:a"), `"OpaqueRef:a"`},
		{int64(5), `5`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(wireValue(tt.in))
		if err != nil || string(b) != tt.want {
			t.Errorf("%#v: %s %v, want %s", tt.in, b, err, tt.want)
		}
	}
	// createArgs sends every required field, even when zero.
	r := VDIRecord{SR: "OpaqueRef:sr", VirtualSize: 1 << 20, Type: VDITypeUser}
	args := r.createArgs()
	for _, k := range vdiCreateRequired {
		if _, ok := args[k]; !ok {
			t.Errorf("VDI.create args lack %s", k)
		}
	}
	for _, req := range [][]string{vmCreateRequired, vbdCreateRequired, vifCreateRequired} {
		if len(req) == 0 {
			t.Error("empty required list")
		}
	}
	if _, ok := args["name_label"]; ok {
		t.Error("empty optional field sent")
	}
}

func TestResultRefs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"<value><array><data><value>OpaqueRef:a-1</value><value>OpaqueRef:b-2</value></data></array></value>", []string{"OpaqueRef:a-1", "OpaqueRef:b-2"}},
		{"<value>OpaqueRef:NULL</value>", nil},
		{`"OpaqueRef:c"`, []string{"OpaqueRef:c"}},
		{"", nil},
	}
	for _, tt := range tests {
		if got := ResultRefs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("%q: %v", tt.in, got)
		}
	}
}

// TestTLSUploadUntilClose exercises the raw connection path (a PUT of
// unknown length) over TLS with a pinned certificate.
func TestTLSConfigClone(t *testing.T) {
	u, _ := url.Parse("https://h")
	cfg, err := tlsConfig(u, &Options{Fingerprint: strings.Repeat("ab", 32)})
	if err != nil || cfg == nil || cfg.VerifyPeerCertificate == nil {
		t.Fatalf("%v %v", cfg, err)
	}
	var _ *tls.Config = cfg.Clone()
}
