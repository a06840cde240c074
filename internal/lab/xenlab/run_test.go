package xenlab

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, RunOptions{Options: Options{Dir: t.TempDir()}, Listen: "127.0.0.1:0", Stdout: &out, Ready: func(a string) { ready <- a }})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	m := regexp.MustCompile(`generated user root with password (\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no generated user in %q", out.String())
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "session.login_with_password", "params": []any{"root", m[1]}, "id": 1})
	resp, err := http.Post("http://"+addr+"/jsonrpc", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	sess, _ := r["result"].(string)
	if !strings.HasPrefix(sess, "OpaqueRef:") {
		t.Fatalf("login with the generated password: %v", r)
	}
	// a long poll in flight does not hold up the stop
	go func() {
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "event.from", "params": []any{sess, []any{"vm"}, "", 0.0}, "id": 2})
		resp, err := http.Post("http://"+addr+"/jsonrpc", "application/json", bytes.NewReader(b))
		if err == nil {
			resp.Body.Close()
		}
	}()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop on cancel")
	}
	if strings.Count(out.String(), "password") != 1 {
		t.Errorf("password printed more than once: %q", out.String())
	}
}
