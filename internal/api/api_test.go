package api_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/api/client"
	"github.com/ferry-project/ferry/internal/audit"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// docRoute is a route as the OpenAPI document describes it.
type docRoute struct {
	method, path string
	role         auth.Role
}

func documented(t *testing.T) []docRoute {
	t.Helper()
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var out []docRoute
	for path, ops := range doc.Paths {
		for method, op := range ops {
			role, _ := op["x-ferry-role"].(string)
			out = append(out, docRoute{strings.ToUpper(method), path, auth.Role(role)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path+out[i].method < out[j].path+out[j].method })
	return out
}

// TestOpenAPIMatchesRouter: every route is documented with its role, and
// every documented route is served.
func TestOpenAPIMatchesRouter(t *testing.T) {
	e := newEnv(t)
	doc := documented(t)
	served := map[string]auth.Role{}
	for _, r := range e.api.Routes() {
		served[r.Method+" "+r.Pattern] = r.Role
	}
	for _, d := range doc {
		role, ok := served[d.method+" "+d.path]
		if !ok {
			t.Errorf("documented but not served: %s %s", d.method, d.path)
			continue
		}
		if role != d.role {
			t.Errorf("%s %s: served with role %q, documented %q", d.method, d.path, role, d.role)
		}
		delete(served, d.method+" "+d.path)
	}
	for r := range served {
		t.Errorf("served but not documented: %s", r)
	}
	// Every $ref resolves.
	var raw map[string]any
	json.Unmarshal(api.OpenAPI(), &raw)
	schemas := raw["components"].(map[string]any)["schemas"].(map[string]any)
	for _, ref := range refs(raw) {
		if _, ok := schemas[strings.TrimPrefix(ref, "#/components/schemas/")]; !ok {
			t.Errorf("dangling $ref %s", ref)
		}
	}
	r := e.want(200, "GET", "/api/v1/openapi.json", "", nil)
	if !bytes.Equal(r.body, api.OpenAPI()) {
		t.Error("served document differs from the embedded one")
	}
}

func refs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "$ref" {
				out = append(out, s)
			}
			out = append(out, refs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, refs(x)...)
		}
	}
	return out
}

// TestRoles sends every documented route as every caller: without a token
// (401), with each role below the route's (403) and with each allowed role
// (neither). Path parameters name nothing, so allowed calls change
// nothing.
func TestRoles(t *testing.T) {
	e := newEnv(t)
	callers := append([]auth.Role{""}, auth.Roles...)
	for _, d := range documented(t) {
		path := strings.NewReplacer("{name}", "zz-none", "{site}", "zz-none", "{id}", "zz-none").Replace(d.path)
		for _, c := range callers {
			want := "allowed"
			switch {
			case d.role == "":
			case c == "":
				want = "401"
			case !c.Allows(d.role):
				want = "403"
			}
			t.Run(fmt.Sprintf("%s %s as %q", d.method, d.path, c), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				var body *strings.Reader
				if d.method == "POST" || d.method == "PUT" {
					body = strings.NewReader("{}")
				} else {
					body = strings.NewReader("")
				}
				req, _ := http.NewRequestWithContext(ctx, d.method, e.srv.URL+path, body)
				if c != "" {
					req.Header.Set("Authorization", "Bearer "+e.tokens[c])
				}
				res, err := e.srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close() // event streams end here
				got := fmt.Sprint(res.StatusCode)
				if want == "allowed" {
					if got == "401" || got == "403" {
						t.Errorf("status %s, want allowed", got)
					}
				} else if got != want {
					t.Errorf("status %s, want %s", got, want)
				}
				if got == "401" && res.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			})
		}
	}
}

func TestSitesAndVMs(t *testing.T) {
	e := newEnv(t)
	const pw = "s3cret-password-0815"
	r := e.want(201, "POST", "/api/v1/sites", auth.Admin, map[string]any{"name": "lab", "kind": "fake", "endpoint": "fake://lab?vms=40&seed=4",
		"credentials": map[string]string{"password": pw}})
	if r.header.Get("Location") != "/api/v1/sites/lab" || bytes.Contains(r.body, []byte(pw)) {
		t.Errorf("add: %v %s", r.header, r.body)
	}
	e.want(201, "POST", "/api/v1/sites", auth.Admin, map[string]any{"name": "cloud", "kind": "fake", "endpoint": "fake://cloud?vms=10&region=us-east-1"})
	for _, tt := range []struct {
		body any
		code int
		err  string
	}{
		{map[string]any{"name": "lab", "kind": "fake"}, 409, "already_exists"},
		{map[string]any{"name": "x y", "kind": "fake"}, 400, "invalid_argument"},
		{map[string]any{"name": "x", "kind": "vmware"}, 400, "invalid_argument"},
		{map[string]any{"name": "x", "kind": "fake", "bogus": 1}, 400, "invalid_argument"},
		{`{"name": "x", "kind": "fake"} {}`, 400, "invalid_argument"},
		{"", 400, "invalid_argument"},
		{strings.Repeat(" ", api.MaxBody+1), 413, "invalid_argument"},
	} {
		r := e.want(tt.code, "POST", "/api/v1/sites", auth.Admin, tt.body)
		if r.env.Type != "error" || r.env.Error.Code != tt.err || r.env.Error.Message == "" {
			t.Errorf("error body %s", r.body)
		}
	}
	// Migrations refused in planning, with the reason.
	for _, tt := range []struct {
		body map[string]any
		code int
		says string
	}{
		{map[string]any{"source": "lab", "vm": "vm-0001", "target": "nowhere", "dry_run": true}, 404, "target site nowhere"},
		{map[string]any{"source": "lab", "vm": "vm-0001", "target": "cloud"}, 501, "not supported"},
		{map[string]any{"source": "lab", "vm": "vm-0001"}, 400, "no target site"},
	} {
		r := e.want(tt.code, "POST", "/api/v1/migrations", auth.Operator, tt.body)
		if r.env.Type != "error" || !strings.Contains(r.env.Error.Message, tt.says) {
			t.Errorf("migration %v: %s", tt.body, r.body)
		}
	}
	// A migration job is only queued with a plan the control plane made:
	// arguments written by a client (a plan that skipped the checks) are
	// refused.
	crafted := map[string]any{"kind": "vm.migrate", "args": map[string]any{"plan": map[string]any{
		"request":     map[string]any{"source": "lab", "vm": "vm-0001", "target": "cloud"},
		"source_kind": "xen", "target_kind": "aws", "disks": []map[string]any{{"name": "d", "size": 1 << 50, "target_size": 1 << 50}},
	}}}
	if r := e.want(400, "POST", "/api/v1/jobs", auth.Operator, crafted); !strings.Contains(r.env.Error.Message, "POST /api/v1/migrations") {
		t.Errorf("crafted migration job: %s", r.body)
	}
	var test site.TestResult
	e.want(200, "POST", "/api/v1/sites/lab/test", auth.Operator, nil).into(t, &test)
	if test.Info.Kind != "fake" || test.Info.Version == "" {
		t.Errorf("test = %+v", test)
	}
	var ref site.RefreshResult
	e.want(200, "POST", "/api/v1/sites/lab/refresh", auth.Operator, nil).into(t, &ref)
	e.want(200, "POST", "/api/v1/sites/cloud/refresh", auth.Operator, nil)
	if ref.VMs != 40 {
		t.Errorf("refresh = %+v", ref)
	}
	var sites []site.View
	e.want(200, "GET", "/api/v1/sites", auth.Viewer, nil).into(t, &sites)
	if len(sites) != 2 || sites[1].Name != "lab" || !slices.Equal(sites[1].Credentials, []string{"password"}) || sites[1].Health == nil || !sites[1].Health.OK {
		t.Errorf("sites = %+v", sites)
	}
	e.want(404, "GET", "/api/v1/sites/nope", auth.Viewer, nil)

	var vms []service.VMRow
	e.want(200, "GET", "/api/v1/vms", auth.Viewer, nil).into(t, &vms)
	if len(vms) != 50 || vms[0].Site != "cloud" || vms[0].MonthlyCost == nil || vms[0].Region != "us-east-1" || vms[10].MonthlyCost == nil {
		t.Fatalf("vms: %d, first %+v", len(vms), vms[0])
	}
	for _, tt := range []struct {
		q    string
		want func(service.VMRow) bool
	}{
		{"site=lab", func(v service.VMRow) bool { return v.Site == "lab" }},
		{"power=halted", func(v service.VMRow) bool { return v.PowerState == core.Halted }},
		{"name=vm-00000%5B0-4%5D", func(v service.VMRow) bool { return v.Name >= "vm-000000" && v.Name <= "vm-000004" }},
		{"site=lab&power=running&name=vm-*", func(v service.VMRow) bool { return v.Site == "lab" && v.PowerState == core.Running }},
	} {
		var got []service.VMRow
		e.want(200, "GET", "/api/v1/vms?"+tt.q, auth.Viewer, nil).into(t, &got)
		n := 0
		for _, v := range vms {
			if tt.want(v) {
				n++
			}
		}
		if len(got) != n || n == 0 {
			t.Errorf("%s: %d VMs, want %d", tt.q, len(got), n)
		}
		for _, v := range got {
			if !tt.want(v) {
				t.Errorf("%s: %s/%s does not match", tt.q, v.Site, v.Name)
			}
		}
	}
	e.want(400, "GET", "/api/v1/vms?name=%5B", auth.Viewer, nil)

	vm := vms[10]
	var one service.VMRow
	e.want(200, "GET", "/api/v1/vms/"+string(vm.Site)+"/"+string(vm.ID), auth.Viewer, nil).into(t, &one)
	if one.ID != vm.ID || one.CPUs != vm.CPUs {
		t.Errorf("vm = %+v", one)
	}
	e.want(404, "GET", "/api/v1/vms/lab/nope", auth.Viewer, nil)
	op, want := "stop", core.Halted
	if vm.PowerState != core.Running {
		op, want = "start", core.Running
	}
	var after core.VM
	e.want(200, "POST", "/api/v1/vms/"+string(vm.Site)+"/"+string(vm.ID)+"/power", auth.Operator, map[string]string{"op": op}).into(t, &after)
	if after.PowerState != want {
		t.Errorf("after %s: %s", op, after.PowerState)
	}
	e.want(200, "GET", "/api/v1/vms/"+string(vm.Site)+"/"+string(vm.ID), auth.Viewer, nil).into(t, &one)
	if one.PowerState != want {
		t.Errorf("inventory after %s: %s", op, one.PowerState)
	}
	e.want(400, "POST", "/api/v1/vms/lab/"+string(vm.ID)+"/power", auth.Operator, map[string]string{"op": "explode"})

	e.want(200, "PUT", "/api/v1/sites/lab/credentials", auth.Admin, map[string]any{"credentials": map[string]string{"password": "new"}})
	e.want(400, "PUT", "/api/v1/sites/lab/credentials", auth.Admin, map[string]any{"credentials": map[string]string{"apikey": "x"}})
	e.want(200, "DELETE", "/api/v1/sites/lab", auth.Admin, nil)
	e.want(404, "DELETE", "/api/v1/sites/lab", auth.Admin, nil)
	e.want(200, "GET", "/api/v1/vms?site=lab", auth.Viewer, nil).into(t, &vms)
	if len(vms) != 0 {
		t.Errorf("%d VMs of a removed site", len(vms))
	}
}

func TestJobs(t *testing.T) {
	e := newEnv(t)
	// A real long operation: image conversion as a job.
	src := filepath.Join(e.images, "src.raw")
	data := bytes.Repeat([]byte("ferry!"), 200000)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.want(202, "POST", "/api/v1/images/convert", auth.Operator, map[string]any{"src": "src.raw", "dst": "out.vhd", "dst_format": "vhd"})
	var j job.Job
	r.into(t, &j)
	if r.env.Type != "async" || r.header.Get("Location") != "/api/v1/jobs/"+j.ID || r.env.Operation != r.header.Get("Location") || j.Kind != "image.convert" || !strings.Contains(j.CreatedBy, "test-operator") {
		t.Fatalf("convert answer %s %v", r.body, r.header)
	}
	j = e.waitJob(j.ID)
	if j.State != store.JobSucceeded {
		t.Fatalf("convert job %s: %s", j.State, j.Error)
	}
	var res service.ConvertResult
	if err := json.Unmarshal(j.Result, &res); err != nil || res.DstFormat != "vhd" || res.Dst != filepath.Join(e.images, "out.vhd") {
		t.Errorf("result %s: %v", j.Result, err)
	}
	if _, err := os.Stat(filepath.Join(e.images, "out.vhd")); err != nil {
		t.Error(err)
	}
	for _, tt := range []struct {
		body map[string]any
		code int
	}{
		{map[string]any{"src": "../etc/passwd", "dst": "x", "dst_format": "raw"}, 403},
		{map[string]any{"src": "/etc/passwd", "dst": "x", "dst_format": "raw"}, 403},
		{map[string]any{"src": "src.raw", "dst": "x", "dst_format": "nosuch"}, 400},
		{map[string]any{"src": "src.raw", "dst": "x"}, 400},
	} {
		e.want(tt.code, "POST", "/api/v1/images/convert", auth.Operator, tt.body)
	}
	// Events of a finished job: the whole history, then the stream ends.
	kinds := sseKinds(t, e, "/api/v1/jobs/"+j.ID+"/events", nil)
	if kinds[0] != "queued" || kinds[len(kinds)-1] != "finished" || !slices.Contains(kinds, "started") {
		t.Errorf("events = %v", kinds)
	}

	// Cancel a running job, then retry it.
	release := filepath.Join(e.dir, "release")
	r = e.want(202, "POST", "/api/v1/jobs", auth.Operator, map[string]any{"kind": "test.block", "args": map[string]string{"release": release}})
	r.into(t, &j)
	e.want(400, "POST", "/api/v1/jobs", auth.Operator, map[string]any{"kind": "no.such"})
	e.want(400, "POST", "/api/v1/jobs", auth.Operator, map[string]any{"kind": "test.block", "args": map[string]any{"nope": 1}})
	deadline := time.Now().Add(20 * time.Second)
	for j.State != store.JobRunning {
		e.want(200, "GET", "/api/v1/jobs/"+j.ID, auth.Viewer, nil).into(t, &j)
		if time.Now().After(deadline) {
			t.Fatal("block job never ran")
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	e.want(202, "POST", "/api/v1/jobs/"+j.ID+"/cancel", auth.Operator, nil)
	if j = e.waitJob(j.ID); j.State != store.JobCanceled {
		t.Fatalf("cancelled job is %s", j.State)
	}
	e.want(409, "POST", "/api/v1/jobs/"+j.ID+"/cancel", auth.Operator, nil)
	os.WriteFile(release, nil, 0o644)
	e.want(202, "POST", "/api/v1/jobs/"+j.ID+"/retry", auth.Operator, nil)
	if j = e.waitJob(j.ID); j.State != store.JobSucceeded {
		t.Fatalf("retried job is %s", j.State)
	}
	e.want(409, "POST", "/api/v1/jobs/"+j.ID+"/retry", auth.Operator, nil)
	e.want(404, "GET", "/api/v1/jobs/j-nope", auth.Viewer, nil)
	e.want(404, "GET", "/api/v1/jobs/j-nope/events", auth.Viewer, nil)

	var list []job.Job
	e.want(200, "GET", "/api/v1/jobs?kind=test.block&state=succeeded", auth.Viewer, nil).into(t, &list)
	if len(list) != 1 || list[0].ID != j.ID {
		t.Errorf("list = %+v", list)
	}
	e.want(200, "GET", "/api/v1/jobs?limit=1", auth.Viewer, nil).into(t, &list)
	if len(list) != 1 {
		t.Errorf("limit: %d", len(list))
	}
	e.want(400, "GET", "/api/v1/jobs?limit=-1", auth.Viewer, nil)
}

// sseKinds reads an event stream until it ends (or until stop returns
// true), returning the event kinds.
func sseKinds(t *testing.T, e *env, path string, stop func(kind string) bool) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens[auth.Viewer])
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("content type %q", res.Header.Get("Content-Type"))
	}
	var kinds []string
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			kinds = append(kinds, k)
			if stop != nil && stop(k) {
				break
			}
		}
	}
	return kinds
}

func TestEventStream(t *testing.T) {
	e := newEnv(t)
	got := make(chan []string, 1)
	ready := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/api/v1/events", nil)
		req.Header.Set("Authorization", "Bearer "+e.tokens[auth.Viewer])
		res, err := e.srv.Client().Do(req)
		close(ready)
		if err != nil {
			got <- nil
			return
		}
		defer res.Body.Close()
		var kinds []string
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if k, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				kinds = append(kinds, k)
				if k == "finished" {
					break
				}
			}
		}
		got <- kinds
	}()
	<-ready
	release := filepath.Join(e.dir, "go")
	os.WriteFile(release, nil, 0o644)
	e.want(202, "POST", "/api/v1/jobs", auth.Operator, map[string]any{"kind": "test.block", "args": map[string]string{"release": release}})
	kinds := <-got
	if len(kinds) == 0 || kinds[0] != "queued" || kinds[len(kinds)-1] != "finished" {
		t.Errorf("global stream = %v", kinds)
	}
}

func TestTokensAndAudit(t *testing.T) {
	e := newEnv(t)
	var c auth.Created
	r := e.want(201, "POST", "/api/v1/tokens", auth.Admin, map[string]string{"name": "ci", "role": "viewer"})
	r.into(t, &c)
	if !strings.HasPrefix(c.Secret, "ferry_") || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("created %s", r.body)
	}
	e.want(400, "POST", "/api/v1/tokens", auth.Admin, map[string]string{"name": "x", "role": "root"})
	r = e.want(200, "GET", "/api/v1/tokens", auth.Admin, nil)
	if bytes.Contains(r.body, []byte(c.Secret)) || bytes.Contains(r.body, []byte(auth.Hash(c.Secret))) {
		t.Error("token list shows a secret or hash")
	}
	var toks []store.Token
	r.into(t, &toks)
	if len(toks) != 4 {
		t.Errorf("%d tokens", len(toks))
	}
	// The new token works, until revoked.
	cl, _ := client.New(e.srv.URL, &client.Options{Token: c.Secret})
	if p, err := cl.WhoAmI(t.Context()); err != nil || p.Name != "ci" || p.Role != auth.Viewer {
		t.Errorf("whoami = %+v %v", p, err)
	}
	if _, err := cl.CreateToken(t.Context(), "x", auth.Admin); !errs.Is(err, errs.PermissionDenied) {
		t.Errorf("viewer creating a token: %v", err)
	}
	e.want(200, "DELETE", "/api/v1/tokens/"+c.ID, auth.Admin, nil)
	e.want(409, "DELETE", "/api/v1/tokens/"+c.ID, auth.Admin, nil)
	if _, err := cl.WhoAmI(t.Context()); err == nil {
		t.Error("revoked token still works")
	}
	e.want(401, "POST", "/api/v1/sites", "", map[string]string{"name": "x"})

	// Audit: every mutating call, allowed or refused, in order.
	var entries []audit.Entry
	e.want(200, "GET", "/api/v1/audit", auth.Viewer, nil).into(t, &entries)
	var actions []string
	for _, a := range entries {
		actions = append(actions, a.Action+" "+a.Outcome)
	}
	want := []string{
		"POST /api/v1/tokens 201", "POST /api/v1/tokens 400 invalid_argument", "POST /api/v1/tokens 403 permission_denied",
		"DELETE /api/v1/tokens/{id} 200", "DELETE /api/v1/tokens/{id} 409 failed_precondition", "POST /api/v1/sites 401 unauthenticated",
	}
	if !slices.Equal(actions, want) {
		t.Errorf("audit actions\n%q\nwant\n%q", actions, want)
	}
	if entries[0].Actor != "test-admin ("+strings.Split(entries[0].Actor, "(")[1] || entries[5].Actor != "anonymous" || entries[3].Target != "/api/v1/tokens/"+c.ID {
		t.Errorf("audit entries %+v", entries)
	}
	e.want(200, "GET", "/api/v1/audit?after=5", auth.Viewer, nil).into(t, &entries)
	if len(entries) != 1 || entries[0].Seq != 6 {
		t.Errorf("after=5: %+v", entries)
	}
	var rep audit.Report
	e.want(200, "GET", "/api/v1/audit/verify", auth.Viewer, nil).into(t, &rep)
	if !rep.OK || rep.Rows != 6 {
		t.Errorf("verify = %+v", rep)
	}
	db, err := sql.Open("sqlite", store.SQLiteDSN(filepath.Join(e.dir, "ferry.db"), true))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE audit SET outcome = '200' WHERE seq = 3`); err != nil {
		t.Fatal(err)
	}
	e.want(200, "GET", "/api/v1/audit/verify", auth.Viewer, nil).into(t, &rep)
	if rep.OK || rep.FirstBad != 3 {
		t.Errorf("verify after tampering = %+v", rep)
	}
}

func TestMetaAndErrors(t *testing.T) {
	e := newEnv(t)
	var h api.Health
	e.want(200, "GET", "/api/v1/health", "", nil).into(t, &h)
	if h.Status != "ok" || h.Database != "sqlite" || !slices.Contains(h.JobKinds, "image.convert") || !slices.Contains(h.SiteKinds, "fake") {
		t.Errorf("health = %+v", h)
	}
	r := e.want(404, "GET", "/api/v1/nothing", auth.Viewer, nil)
	if r.env.Error.Code != "not_found" {
		t.Errorf("unknown route: %s", r.body)
	}
	var p auth.Principal
	e.want(200, "GET", "/api/v1/whoami", auth.Operator, nil).into(t, &p)
	if p.Role != auth.Operator {
		t.Errorf("whoami = %+v", p)
	}
	m := e.want(200, "GET", "/metrics", "", nil)
	if s := `ferry_api_request_duration_seconds_bucket{code="200",method="GET",route="/api/v1/whoami"`; !bytes.Contains(m.body, []byte(s)) {
		t.Errorf("metrics lack %s", s)
	}
	for _, tt := range []struct {
		err  error
		code int
	}{
		{errs.ErrNotFound, 404}, {errs.ErrAlreadyExists, 409}, {errs.ErrInvalidArgument, 400}, {errs.ErrFailedPrecondition, 409},
		{errs.ErrUnavailable, 503}, {errs.ErrPermissionDenied, 403}, {errs.ErrUnimplemented, 501}, {auth.ErrUnauthenticated, 401},
		{fmt.Errorf("x"), 500}, {context.Canceled, 503},
	} {
		if got := api.Status(fmt.Errorf("wrapped: %w", tt.err)); got != tt.code {
			t.Errorf("Status(%v) = %d, want %d", tt.err, got, tt.code)
		}
	}
}

// TestClient drives the API through the Go client the CLI uses.
func TestClient(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	c, err := client.New(e.srv.URL, &client.Options{Token: e.tokens[auth.Admin]})
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.AddSite(ctx, api.AddSiteRequest{Name: "lab", Kind: "fake", Endpoint: "fake://lab?vms=5", Secrets: map[string]site.Secret{"password": "pw"}})
	if err != nil || v.Name != "lab" || !slices.Equal(v.Credentials, []string{"password"}) {
		t.Fatalf("add = %+v %v", v, err)
	}
	if cfg, _ := e.cp.Sites.Config(ctx, "lab"); cfg.Secret("password") != "pw" {
		t.Error("password did not arrive")
	}
	if _, err := c.AddSite(ctx, api.AddSiteRequest{Name: "lab", Kind: "fake"}); !errs.Is(err, errs.AlreadyExists) {
		t.Errorf("duplicate through the client: %v", err)
	}
	if _, err := c.RefreshSite(ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	vms, err := c.VMs(ctx, service.VMQuery{Site: "lab"})
	if err != nil || len(vms) != 5 {
		t.Fatalf("vms %d %v", len(vms), err)
	}
	release := filepath.Join(e.dir, "r")
	os.WriteFile(release, nil, 0o644)
	args, _ := json.Marshal(blockState{Release: release})
	j, err := c.Submit(ctx, api.SubmitJobRequest{Kind: "test.block", Args: args})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	if err := c.JobEvents(ctx, j.ID, 0, func(ev client.Event) error { kinds = append(kinds, ev.Kind); return nil }); err != nil {
		t.Fatal(err)
	}
	if kinds[len(kinds)-1] != "finished" {
		t.Errorf("events %v", kinds)
	}
	if rep, err := c.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Errorf("verify %+v %v", rep, err)
	}
	if _, err := client.New("ftp://x", nil); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("bad server URL: %v", err)
	}
	if _, err := client.New("https://x", &client.Options{Fingerprint: "zz"}); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("bad fingerprint: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","kind":"fake","endpoint":"fake://a","settings":{"user":"u"},"credentials":{"password":"p"}}`,
		`{"credentials":{"password":"x"}}`, `{"op":"start"}`, `{"kind":"image.convert","args":{"src":"a"}}`,
		`{"src":"a","dst":"b","dst_format":"raw","options":{"k":"v"}}`, `{"name":"ci","role":"viewer"}`, `{}`, `[]`, `null`, `{"a":1}{}`, "\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[api.AddSiteRequest](t, b)
		roundTrip[api.CredentialsRequest](t, b)
		roundTrip[api.PowerRequest](t, b)
		roundTrip[api.SubmitJobRequest](t, b)
		roundTrip[api.ConvertRequest](t, b)
		roundTrip[api.TokenRequest](t, b)
	})
}

// roundTrip decodes b as T; what decodes must encode and decode again to
// the same value.
func roundTrip[T any](t *testing.T, b []byte) {
	v, err := api.Decode[T](bytes.NewReader(b))
	if err != nil {
		if errs.CodeOf(err) != errs.InvalidArgument {
			t.Fatalf("decode error without InvalidArgument: %v", err)
		}
		return
	}
	enc, err := json.Marshal(revealed(v))
	if err != nil {
		t.Fatalf("re-encode %T: %v", v, err)
	}
	v2, err := api.Decode[T](bytes.NewReader(enc))
	if err != nil {
		t.Fatalf("decode of re-encoded %s: %v", enc, err)
	}
	enc2, _ := json.Marshal(revealed(v2))
	if !bytes.Equal(enc, enc2) {
		t.Fatalf("round trip changed %s to %s", enc, enc2)
	}
}

// revealed shows secrets (which marshal as redactions) for comparison.
func revealed(v any) any {
	switch x := v.(type) {
	case api.AddSiteRequest:
		m := map[string]string{}
		for k, s := range x.Secrets {
			m[k] = s.Reveal()
		}
		return struct {
			api.AddSiteRequest
			Credentials map[string]string `json:"credentials,omitempty"`
		}{x, m}
	case api.CredentialsRequest:
		m := map[string]string{}
		for k, s := range x.Credentials {
			m[k] = s.Reveal()
		}
		return map[string]any{"credentials": m}
	}
	return v
}
