// Package awstest starts the stand-ins the AWS driver's tests run against:
// versitygw, a real S3 gateway, as a child process.
package awstest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RequireToolsEnv, when set to 1, turns a missing tool into a failure
// instead of a skip.
const RequireToolsEnv = "FERRY_REQUIRE_TOOLS"

// S3 is a running S3 server.
type S3 struct {
	Endpoint  string // http://127.0.0.1:port
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // versitygw's posix root: <Dir>/<bucket>/<key>
}

// findTool returns the path of name in $FERRY_CACHE/bin or on PATH.
func findTool(t testing.TB, name string) string {
	t.Helper()
	if c := os.Getenv("FERRY_CACHE"); c != "" {
		p := filepath.Join(c, "bin", name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv(RequireToolsEnv) == "1" {
		t.Fatalf("%s not found in $FERRY_CACHE/bin or on PATH and %s=1", name, RequireToolsEnv)
	}
	t.Skipf("%s not found in $FERRY_CACHE/bin or on PATH (see internal/provider/aws/testdata/README)", name)
	return ""
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Versitygw starts versitygw on a loopback port over a fresh directory and
// stops it when the test ends. It skips the test when the binary is
// missing (fails with FERRY_REQUIRE_TOOLS=1).
func Versitygw(t testing.TB) *S3 {
	t.Helper()
	bin := findTool(t, "versitygw")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &S3{AccessKey: "ferrytest", SecretKey: "ferrytestsecret123", Region: "us-east-1", Dir: root}
	var cmd *exec.Cmd
	for try := 0; ; try++ {
		port := freePort(t)
		s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
		cmd = exec.Command(bin, "--port", fmt.Sprintf("127.0.0.1:%d", port), "--access", s.AccessKey, "--secret", s.SecretKey,
			"--region", s.Region, "--quiet", "posix", root)
		cmd.Dir = dir
		logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start versitygw: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); logf.Close(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		if waitHTTP(t.Context(), s.Endpoint, exited) {
			return s
		}
		b, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		if try == 2 {
			t.Fatalf("versitygw did not come up:\n%s", b)
		}
	}
}

// waitHTTP polls url until it answers, the process exits or 20 s pass.
func waitHTTP(ctx context.Context, url string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(20 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		case <-ctx.Done():
			return false
		default:
		}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			return true
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-t.C:
		case <-exited:
			return false
		}
	}
	return false
}
