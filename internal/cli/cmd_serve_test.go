package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/store/storetest"
)

// controlPlaneCommands are the constructors of the control-plane commands,
// added to the root here until root.go registers them.
var controlPlaneCommands = []func(*Globals) *cobra.Command{
	newServeCommand, newWorkerCommand, newSiteCommand, newVMCommand, newJobCommand, newTokenCommand, newAuditCommand,
}

// cpExecute is Execute with the control-plane commands present.
func cpExecute(ctx context.Context, args []string, stdout, stderr interface {
	Write([]byte) (int, error)
}) int {
	g := &Globals{Stdout: stdout, Stderr: stderr, Stdin: strings.NewReader("")}
	root := newRootCommand(g)
	for _, c := range controlPlaneCommands {
		cmd := c(g)
		if found, _, err := root.Find([]string{cmd.Name()}); err != nil || found == root {
			root.AddCommand(cmd)
		}
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "ferry: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "ferry: %v\n", err)
	return 1
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
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

// server is ferry serve running in this process.
type server struct {
	url, token, fingerprint string
	stop                    func()
	out                     *syncBuffer
}

func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errb := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- cpExecute(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), out, errb)
	}()
	s := &server{out: out}
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("serve exited %d: %s", code, errb)
			}
		})
	}
	t.Cleanup(s.stop)
	re := regexp.MustCompile(`serving (https?://\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			s.url = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s%s", code, out, errb)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start: %s%s", out, errb)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	if m := regexp.MustCompile(`admin token \(shown only now\): (ferry_\w+)`).FindStringSubmatch(out.String()); m != nil {
		s.token = m[1]
	}
	if m := regexp.MustCompile(`fingerprint: ([0-9A-F:]+)`).FindStringSubmatch(out.String()); m != nil {
		s.fingerprint = m[1]
	}
	return s
}

func cp(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cpExecute(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestServeEndToEnd runs ferry serve with a self-signed certificate and
// drives it with the CLI.
func TestServeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	t.Setenv("FERRY_SECRET_KEY", "")
	s := startServe(t, "--data", data, "--tls-self-signed", "--refresh", "1h")
	if s.token == "" || s.fingerprint == "" || !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("serve said:\n%s", s.out)
	}
	if !strings.Contains(s.out.String(), "generated a new secret key") {
		t.Errorf("no word about the generated key:\n%s", s.out)
	}
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600)
	remote := []string{"--server", s.url, "--token-file", tokenFile, "--fingerprint", s.fingerprint}
	const pw = "pw-that-must-never-be-stored-in-clear"
	t.Setenv("FERRY_TEST_PW", pw)
	src := filepath.Join(data, "images", "in.raw")
	os.WriteFile(src, bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18), 0o644)
	viewerFile := filepath.Join(dir, "viewer")

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"site add", []string{"site", "add", "lab", "--kind", "fake", "--url", "fake://lab?vms=30&seed=5", "--password-env", "FERRY_TEST_PW"}, 0, []string{"site lab (fake) added; credentials stored encrypted: password"}, nil},
		{"site add cloud", []string{"site", "add", "cloud", "--kind", "fake", "--url", "fake://cloud?vms=4&region=us-east-1"}, 0, nil, nil},
		{"site add duplicate", []string{"site", "add", "lab", "--kind", "fake"}, 1, nil, []string{"already exists"}},
		{"site add unset env", []string{"site", "add", "x", "--kind", "fake", "--password-env", "FERRY_NOPE_UNSET"}, 1, nil, []string{"FERRY_NOPE_UNSET is not set"}},
		{"site test", []string{"site", "test", "lab"}, 0, []string{"site lab: connected", "version:  fake-1", "can:      events"}, nil},
		{"site refresh", []string{"site", "refresh", "lab"}, 0, []string{"site lab: 30 VMs"}, nil},
		{"site refresh cloud", []string{"site", "refresh", "cloud"}, 0, nil, nil},
		{"site ls", []string{"site", "ls"}, 0, []string{"NAME", "lab", "fake", "30", "ok"}, nil},
		{"vm ls", []string{"vm", "ls"}, 0, []string{"SITE", "EST. MONTHLY COST", "lab", "vm-000029", "GiB", "$", "34 VMs"}, nil},
		{"vm ls filtered", []string{"vm", "ls", "--site", "cloud", "--name", "vm-00000[01]"}, 0, []string{"2 VMs"}, nil},
		{"vm ls json", []string{"vm", "ls", "-o", "json", "--site", "cloud"}, 0, []string{`"instance_type"`, `"monthly_cost"`, `"region": "us-east-1"`}, nil},
		{"vm power", []string{"vm", "power", "lab", "lab-vm-000000", "stop"}, 0, []string{"lab/lab-vm-000000 (vm-000000): halted"}, nil},
		{"vm show", []string{"vm", "show", "lab", "lab-vm-000000"}, 0, []string{`"power_state": "halted"`}, nil},
		{"job convert", []string{"job", "submit", "image.convert", "--args", `{"src":"in.raw","dst":"out.vhd","dst_format":"vhd"}`, "--watch"}, 0, []string{"started", "finished", "succeeded"}, nil},
		{"job ls", []string{"job", "ls"}, 0, []string{"image.convert", "succeeded"}, nil},
		{"job bad args", []string{"job", "submit", "image.convert", "--args", `{"src":"../x","dst":"y","dst_format":"raw"}`}, 1, nil, []string{"outside the images directory"}},
		{"token create", []string{"token", "create", "ci", "--role", "viewer"}, 0, []string{"ferry_"}, []string{"shown only now"}},
		{"token ls", []string{"token", "ls"}, 0, []string{"admin", "ci", "viewer"}, nil},
		{"audit ls", []string{"audit", "ls"}, 0, []string{"POST /api/v1/sites", "409 already_exists", "POST /api/v1/tokens"}, nil},
		{"audit verify", []string{"audit", "verify"}, 0, []string{"audit log intact"}, nil},
		{"bad fingerprint", []string{"site", "ls", "--fingerprint", strings.Repeat("00", 32)}, 1, nil, []string{"does not match the pinned"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The case's own flags come last and win (the bad
			// fingerprint overrides the pinned one).
			args := append([]string{tt.args[0]}, remote...)
			args = append(args, tt.args[1:]...)
			code, out, errs := cp(t, args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			if tt.name == "token create" {
				os.WriteFile(viewerFile, []byte(strings.TrimSpace(out)), 0o600)
			}
		})
	}
	// The certificate can also be trusted as a CA file.
	if code, _, errs := cp(t, "site", "ls", "--server", s.url, "--token-file", tokenFile, "--ca-file", filepath.Join(data, "tls", "cert.pem")); code != 0 {
		t.Errorf("--ca-file: %d %s", code, errs)
	}
	if code, _, errs := cp(t, "site", "ls", "--server", s.url, "--token-file", tokenFile); code != 1 || !strings.Contains(errs, "certificate") {
		t.Errorf("unverified TLS accepted: %d %s", code, errs)
	}
	// A viewer may read but not change.
	viewer := []string{"--server", s.url, "--token-file", viewerFile, "--fingerprint", s.fingerprint}
	if code, _, _ := cp(t, append([]string{"vm", "ls"}, viewer...)...); code != 0 {
		t.Error("viewer cannot list VMs")
	}
	if code, _, errs := cp(t, append([]string{"site", "rm", "lab"}, viewer...)...); code != 1 || !strings.Contains(errs, "needs role admin") {
		t.Errorf("viewer removing a site: %d %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(data, "images", "out.vhd")); err != nil {
		t.Error(err)
	}

	s.stop()
	// Offline: the audit chain and a bootstrap token, straight from the
	// data directory; credentials never in clear on disk.
	if code, out, errs := cp(t, "audit", "verify", "--data", data); code != 0 || !strings.Contains(out, "intact") {
		t.Errorf("offline verify: %d %s %s", code, out, errs)
	}
	if code, out, _ := cp(t, "token", "create", "rescue", "--bootstrap", "--data", data); code != 0 || !strings.HasPrefix(out, "ferry_") {
		t.Errorf("bootstrap: %d %s", code, out)
	}
	files, _ := filepath.Glob(filepath.Join(data, "*"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte(pw)) {
			t.Errorf("password in clear in %s", f)
		}
	}
	// A second start finds everything in place and prints no new token.
	s2 := startServe(t, "--data", data, "--tls-self-signed")
	if s2.token != "" || s2.fingerprint != s.fingerprint || strings.Contains(s2.out.String(), "generated") {
		t.Errorf("second start said:\n%s", s2.out)
	}
}

// TestServeAndWorkerPostgres runs ferry serve without workers and a ferry
// worker on one PostgreSQL database: the job submitted to the server runs
// on the worker.
func TestServeAndWorkerPostgres(t *testing.T) {
	url := storetest.NewDatabase(t, storetest.Postgres(t))
	dir := t.TempDir()
	t.Setenv("FERRY_SECRET_KEY", strings.Repeat("ab", 32))
	s := startServe(t, "--data", filepath.Join(dir, "data"), "--database", url, "--no-work", "--images-dir", filepath.Join(dir, "images"))
	if s.token == "" {
		t.Fatalf("serve said:\n%s", s.out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wout, werr := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- cpExecute(ctx, []string{"worker", "--database", url, "--lease", "2s"}, wout, werr) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("worker exited %d: %s", code, werr)
		}
	})
	os.MkdirAll(filepath.Join(dir, "images"), 0o755)
	os.WriteFile(filepath.Join(dir, "images", "a.raw"), bytes.Repeat([]byte{7}, 1<<20), 0o644)
	t.Setenv("FERRY_TOKEN", s.token)
	t.Setenv("FERRY_SERVER", s.url)
	code, out, errs := cp(t, "job", "submit", "image.convert", "--args", `{"src":"a.raw","dst":"b.raw","dst_format":"raw"}`, "--watch")
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("job: %d\n%s\n%s\nworker: %s%s", code, out, errs, wout, werr)
	}
	code, out, _ = cp(t, "job", "ls", "-o", "json")
	if code != 0 || !strings.Contains(out, `"state": "succeeded"`) {
		t.Errorf("job ls: %s", out)
	}
	if !strings.Contains(wout.String(), "taking jobs from postgres://") {
		t.Errorf("worker said: %s", wout)
	}
	if code, _, errs := cp(t, "worker", "--database", ""); code != 1 || !strings.Contains(errs, "needs --database postgres") {
		t.Errorf("worker without PostgreSQL: %d %s", code, errs)
	}
}
