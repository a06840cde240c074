package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/metrics"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// env is a running API server over SQLite in a temporary directory, with a
// token per role.
type env struct {
	t      testing.TB
	dir    string
	images string
	st     store.Store
	cp     *service.ControlPlane
	srv    *httptest.Server
	api    *api.Server
	tokens map[auth.Role]string
}

// blockState is the test.block kind: one step that waits until Release
// exists (or the job is cancelled).
type blockState struct {
	Release string `json:"release"`
}

func blockKind() job.Kind[blockState] {
	return job.Kind[blockState]{Name: "test.block", Steps: []job.Step[blockState]{{
		Name: "wait",
		Run: func(ctx context.Context, e *job.Env, s *blockState) error {
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				if _, err := os.Stat(s.Release); err == nil {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-t.C:
				}
			}
		},
	}}}
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, images: filepath.Join(dir, "images"), tokens: map[auth.Role]string{}}
	os.MkdirAll(e.images, 0o755)
	loc := store.Location{Dialect: store.SQLite, Path: filepath.Join(dir, "ferry.db")}
	st, err := store.Open(ctx, loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	images := service.NewImages(formats.Registry(), formats.Archives(), nil)
	reg := job.NewRegistry()
	service.RegisterJobKinds(reg, images, e.images, nil)
	job.Register(reg, blockKind())
	m := metrics.New(metrics.Sources{Store: st})
	jm, err := job.Open(ctx, loc, st, reg, &job.Options{Work: true, SingleNode: true, PollInterval: 20 * time.Millisecond,
		LeaseTTL: time.Second, ProgressInterval: 20 * time.Millisecond, OnBytes: m.AddBytes})
	if err != nil {
		t.Fatal(err)
	}
	if err := jm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sites := site.NewManager(st, site.Kinds(), site.NewSealer(site.Key{9}), &site.Options{Prices: pricing.Default()})
	e.cp = &service.ControlPlane{Store: st, Sites: sites, Jobs: jm}
	e.api = api.New(e.cp, &api.Options{Metrics: m, Version: "test", EventPoll: 50 * time.Millisecond})
	e.srv = httptest.NewServer(e.api.Handler())
	t.Cleanup(func() {
		e.srv.CloseClientConnections()
		e.srv.Close()
		jm.Stop(context.Background())
		sites.Close()
		st.Close()
	})
	for _, r := range auth.Roles {
		c, err := e.cp.CreateToken(ctx, "test-"+string(r), r)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[r] = c.Secret
	}
	return e
}

// resp is a decoded answer.
type resp struct {
	code   int
	header http.Header
	body   []byte
	env    struct {
		Type      string          `json:"type"`
		Operation string          `json:"operation"`
		Metadata  json.RawMessage `json:"metadata"`
		Error     api.ErrorDetail `json:"error"`
	}
}

func (r *resp) into(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.env.Metadata, v); err != nil {
		t.Fatalf("decode %s: %v", r.env.Metadata, err)
	}
}

// do sends a request as role (none: "").
func (e *env) do(method, path string, role auth.Role, body any) *resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if role != "" {
		req.Header.Set("Authorization", "Bearer "+e.tokens[role])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	r := &resp{code: res.StatusCode, header: res.Header}
	r.body, _ = io.ReadAll(res.Body)
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(r.body, &r.env); err != nil {
			e.t.Fatalf("%s %s: answer is not JSON: %s", method, path, r.body)
		}
	}
	return r
}

// want checks the status and returns the answer.
func (e *env) want(code int, method, path string, role auth.Role, body any) *resp {
	e.t.Helper()
	r := e.do(method, path, role, body)
	if r.code != code {
		e.t.Fatalf("%s %s as %q: %d, want %d: %s", method, path, role, r.code, code, r.body)
	}
	return r
}

// waitJob polls a job until it is in a final state.
func (e *env) waitJob(id string) job.Job {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var j job.Job
		e.want(200, "GET", "/api/v1/jobs/"+id, auth.Viewer, nil).into(e.t, &j)
		if store.JobTerminal(j.State) {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s still %s", id, j.State)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// addFakeSites registers n fake sites of per VMs each and refreshes them.
func (e *env) addFakeSites(n, per int, extra string) {
	e.t.Helper()
	for i := range n {
		name := fmt.Sprintf("site%02d", i)
		e.want(201, "POST", "/api/v1/sites", auth.Admin, map[string]any{"name": name, "kind": "fake",
			"endpoint": fmt.Sprintf("fake://%s?vms=%d&seed=%d%s", name, per, i+1, extra)})
		e.want(200, "POST", "/api/v1/sites/"+name+"/refresh", auth.Operator, nil)
	}
}
