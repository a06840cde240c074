package cli

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

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestLabXenCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb lockedBuffer
	g := &Globals{Stdout: &out, Stderr: &errb}
	cmd := newLabXenCommand(g)
	cmd.SetArgs([]string{"--data", t.TempDir(), "--listen", "127.0.0.1:0", "--no-qemu"})
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	addrRE := regexp.MustCompile(`serving XAPI on http://(\S+) `)
	pwRE := regexp.MustCompile(`generated user root with password (\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	var addr, pw string
	for addr == "" || pw == "" {
		if time.Now().After(deadline) {
			t.Fatalf("command did not start: %q %q", out.String(), errb.String())
		}
		select {
		case err := <-done:
			t.Fatalf("command ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if m := addrRE.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
		if m := pwRE.FindStringSubmatch(out.String()); m != nil {
			pw = m[1]
		}
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "session.login_with_password", "params": []any{"root", pw, "1.0", "cli test"}, "id": 1})
	resp, err := http.Post("http://"+addr+"/jsonrpc", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if s, _ := r["result"].(string); !strings.HasPrefix(s, "OpaqueRef:") {
		t.Fatalf("login: %v", r)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("command: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("command did not stop on cancel")
	}
}

func TestLabXenCommandFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no data", []string{"--listen", "127.0.0.1:0"}, `"data" not set`},
		{"bad user", []string{"--data", t.TempDir(), "--user", "nopassword"}, `want NAME:PASSWORD`},
		{"bad hosts", []string{"--data", t.TempDir(), "--hosts", "3", "--listen", "127.0.0.1:0"}, "1 or 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newLabXenCommand(&Globals{Stdout: &out, Stderr: &out})
			cmd.SetArgs(tt.args)
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			err := cmd.ExecuteContext(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}
