package xapi

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// fake is a scripted JSON-RPC server for unit tests: each method has a
// handler; HTTP paths other than /jsonrpc have handlers of their own.
type fake struct {
	t       testing.TB
	mu      sync.Mutex
	methods map[string]func(params []any) (any, *Error)
	paths   map[string]http.HandlerFunc
	calls   []fakeCall
	srv     *httptest.Server
}

type fakeCall struct {
	Method string
	Params []any
}

func newFake(t testing.TB) *fake {
	f := &fake{t: t, methods: map[string]func([]any) (any, *Error){}, paths: map[string]http.HandlerFunc{}}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) handle(method string, h func(params []any) (any, *Error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.methods[method] = h
}

func (f *fake) handlePath(path string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths[path] = h
}

func (f *fake) callsTo(method string) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/jsonrpc" {
		f.mu.Lock()
		h := f.paths[r.URL.Path]
		f.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
		return
	}
	var req struct {
		Method string          `json:"method"`
		Params []any           `json:"params"`
		ID     json.RawMessage `json:"id"`
	}
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &req); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{req.Method, req.Params})
	h := f.methods[req.Method]
	f.mu.Unlock()
	resp := map[string]any{"jsonrpc": "2.0", "id": req.ID}
	if h == nil {
		resp["error"] = map[string]any{"code": 1, "message": "MESSAGE_METHOD_UNKNOWN", "data": []string{req.Method}}
	} else if res, xe := h(req.Params); xe != nil {
		resp["error"] = map[string]any{"code": 1, "message": xe.Code, "data": xe.Params}
	} else {
		resp["result"] = res
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// logBuffer is a slog handler target that tests search for secrets.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// loginHandler answers session.login_with_password for user/pass with
// sessions from next, SESSION_AUTHENTICATION_FAILED otherwise.
func loginHandler(user, pass string, next func() string) func([]any) (any, *Error) {
	return func(p []any) (any, *Error) {
		if len(p) != 4 {
			return nil, &Error{Code: "MESSAGE_PARAMETER_COUNT_MISMATCH", Params: []string{"session.login_with_password", "4", "x"}}
		}
		if p[0] != user || p[1] != pass {
			return nil, &Error{Code: "SESSION_AUTHENTICATION_FAILED", Params: []string{user, "Authentication failure"}}
		}
		return next(), nil
	}
}

func seq(prefix string) func() string {
	var mu sync.Mutex
	n := 0
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return prefix + strings.Repeat("0", 3) + string(rune('0'+n%10))
	}
}
