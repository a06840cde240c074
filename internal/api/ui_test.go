package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/web"
)

// TestQueryToken: the event streams, and only they, take the token as
// ?access_token= (browsers' EventSource cannot send headers), validated
// as the header is.
func TestQueryToken(t *testing.T) {
	e := newEnv(t)
	open := func(path string) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close() // the stream stays open otherwise
		return res.StatusCode
	}
	good, bad := e.tokens[auth.Viewer], "ferry_"+strings.Repeat("0", 48)
	for _, tt := range []struct {
		path string
		code int
	}{
		{"/api/v1/events?access_token=" + good, 200},
		{"/api/v1/events?access_token=" + bad, 401},
		{"/api/v1/events?access_token=", 401},
		{"/api/v1/events", 401},
		{"/api/v1/jobs/j-none/events?access_token=" + good, 404},
		{"/api/v1/jobs/j-none/events?access_token=" + bad, 401},
		{"/api/v1/whoami?access_token=" + good, 401},
		{"/api/v1/sites?access_token=" + good, 401},
	} {
		if got := open(tt.path); got != tt.code {
			t.Errorf("GET %s: %d, want %d", strings.Replace(tt.path, good, "VIEWER", 1), got, tt.code)
		}
	}
	// A header wins over the query parameter.
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/jobs/j-none/events?access_token="+good, nil)
	req.Header.Set("Authorization", "Bearer "+bad)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 {
		t.Errorf("bad header, good query token: %d, want 401", res.StatusCode)
	}
}

// TestUIMounted: the web UI is served at / beside the API, with its
// security headers; unknown API paths stay JSON errors.
func TestUIMounted(t *testing.T) {
	e := newEnv(t)
	res, err := e.srv.Client().Get(e.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
		res.Header.Get("Content-Security-Policy") != web.CSP || res.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("GET /: %d %v", res.StatusCode, res.Header)
	}
	r := e.want(404, "GET", "/api/v1/nope", auth.Viewer, nil)
	if r.env.Type != "error" {
		t.Errorf("unknown API path: %s", r.body)
	}
	e.want(200, "GET", "/api/v1/health", "", nil)
}
