package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/lab/sample"
	"github.com/ferry-project/ferry/internal/service"
)

// freeAddr returns a loopback address with a port free right now.
// freeAddr returns a free loopback address below the kernel's ephemeral
// port range: the lab gives its ports up on down and takes them again on
// up, and an ephemeral port may be handed to any other connection of the
// machine (parallel test packages) in between.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 200 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		return addr
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

// labRecords returns the process records of a lab directory.
func labRecords(t *testing.T, dir string) map[string]labProc {
	t.Helper()
	out := map[string]labProc{}
	for _, part := range labParts {
		b, err := os.ReadFile(filepath.Join(dir, "run", part+".json"))
		if err != nil {
			continue
		}
		var p labProc
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		out[part] = p
	}
	return out
}

func mustRun(t *testing.T, want []string, args ...string) string {
	t.Helper()
	code, out, errs := run(t, args...)
	if code != 0 {
		t.Fatalf("ferry %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("ferry %s: stdout lacks %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
	return out
}

// TestLabUpDown starts a whole lab as child processes of this test binary
// (run as ferry through TestMain), uses it through the API, stops it,
// brings it back with the same state and purges it.
func TestLabUpDown(t *testing.T) {
	t.Setenv("FERRY_TEST_MAIN", "1") // the children are this binary, run as ferry
	tests := []struct {
		name   string
		sample bool
	}{
		{"no sample", false},
		{"sample", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.sample {
				if err := sample.Check(); err != nil {
					if os.Getenv("FERRY_REQUIRE_TOOLS") == "1" {
						t.Fatalf("%v (FERRY_REQUIRE_TOOLS=1)", err)
					}
					t.Skip(err)
				}
			}
			dir := filepath.Join(t.TempDir(), "lab")
			ctl := freeAddr(t)
			up := []string{"lab", "up", "--dir", dir, "--no-qemu", "--listen", ctl, "--xen-listen", freeAddr(t), "--aws-listen", freeAddr(t)}
			if !tt.sample {
				up = append(up, "--no-sample")
			}
			t.Cleanup(func() { run(t, "lab", "down", "--dir", dir) })

			out := mustRun(t, []string{"registered site lab-xen", "registered site lab-aws",
				"export FERRY_SERVER=http://" + ctl + " FERRY_TOKEN_FILE=" + filepath.Join(dir, "token")}, up...)
			if tt.sample && !strings.Contains(out, "imported sample-linux into lab-xen") {
				t.Errorf("no sample imported:\n%s", out)
			}
			procs := labRecords(t, dir)
			if len(procs) != 3 {
				t.Fatalf("process records: %+v", procs)
			}
			for _, f := range []string{"lab.json", "token", "run/xen.json"} {
				if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
					t.Errorf("%s: %v %v", f, st.Mode(), err)
				}
			}
			state, _ := os.ReadFile(filepath.Join(dir, "lab.json"))
			token, _ := os.ReadFile(filepath.Join(dir, "token"))
			// The lab's secrets are not on any command line (ps shows those
			// to everyone).
			var st labState
			if err := json.Unmarshal(state, &st); err != nil || st.XenPassword == "" || st.AWSSecretKey == "" {
				t.Fatalf("lab.json: %v %+v", err, st)
			}
			for part, p := range procs {
				cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(cmdline, []byte(st.XenPassword)) || bytes.Contains(cmdline, []byte(st.AWSSecretKey)) {
					t.Errorf("the %s's command line holds a lab secret: %q", part, cmdline)
				}
			}

			// Up while everything runs starts nothing.
			out = mustRun(t, []string{"control plane  running"}, up...)
			if strings.Contains(out, "starting") || strings.Contains(out, "registered") || strings.Contains(out, "imported") {
				t.Errorf("second up changed something:\n%s", out)
			}

			// The CLI through the API, configured by the environment.
			t.Setenv("FERRY_SERVER", "http://"+ctl)
			t.Setenv("FERRY_TOKEN_FILE", filepath.Join(dir, "token"))
			t.Setenv("FERRY_TOKEN", "")
			mustRun(t, []string{"lab-xen", "lab-aws", "ok"}, "site", "ls")
			var rows []service.VMRow
			if err := json.Unmarshal([]byte(mustRun(t, nil, "vm", "ls", "-o", "json")), &rows); err != nil {
				t.Fatal(err)
			}
			if !tt.sample {
				if len(rows) != 0 {
					t.Errorf("VMs without the sample: %+v", rows)
				}
			} else if len(rows) != 1 || rows[0].Name != sample.Name || rows[0].Site != labXenSite || rows[0].PowerState != "halted" ||
				rows[0].CPUs != 1 || rows[0].MemoryBytes != 256<<20 || len(rows[0].Disks) != 1 || rows[0].Disks[0].Size != sample.DiskSize {
				t.Errorf("vm ls: %+v", rows)
			}

			status := mustRun(t, []string{"xen lab", "aws lab", "control plane", "http://" + ctl, "lab-xen", "lab-aws"}, "lab", "status", "--dir", dir)
			if strings.Count(status, " running ") != 3 {
				t.Errorf("status:\n%s", status)
			}

			mustRun(t, []string{"stopped the control plane", "stopped the aws lab", "stopped the xen lab"}, "lab", "down", "--dir", dir)
			for part, p := range procs {
				if p.alive() {
					t.Errorf("the %s (pid %d) still runs after down", part, p.PID)
				}
			}
			if n := len(labRecords(t, dir)); n != 0 {
				t.Errorf("%d process records left", n)
			}
			if status := mustRun(t, nil, "lab", "status", "--dir", dir); strings.Contains(status, "running") {
				t.Errorf("status after down:\n%s", status)
			}
			mustRun(t, []string{"nothing runs"}, "lab", "down", "--dir", dir)

			// Up after down: the same credentials, token and VMs.
			out = mustRun(t, []string{"starting the xen lab"}, up...)
			if strings.Contains(out, "registered") || strings.Contains(out, "imported") || strings.Contains(out, "created an admin token") {
				t.Errorf("up after down made things anew:\n%s", out)
			}
			state2, _ := os.ReadFile(filepath.Join(dir, "lab.json"))
			token2, _ := os.ReadFile(filepath.Join(dir, "token"))
			if string(state) != string(state2) || string(token) != string(token2) {
				t.Error("up after down changed lab.json or the token")
			}
			if out := mustRun(t, nil, "vm", "ls"); tt.sample != strings.Contains(out, "sample-linux") {
				t.Errorf("vm ls after a restart:\n%s", out)
			}
			procs = labRecords(t, dir)
			mustRun(t, []string{"deleted " + dir}, "lab", "down", "--dir", dir, "--purge")
			for part, p := range procs {
				if p.alive() {
					t.Errorf("the %s (pid %d) still runs after down --purge", part, p.PID)
				}
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("lab directory after --purge: %v", err)
			}
		})
	}
}

// TestLabUpPortTaken: a port held by another program fails up with its
// address named, and nothing is left running.
func TestLabUpPortTaken(t *testing.T) {
	t.Setenv("FERRY_TEST_MAIN", "1")
	tests := []struct {
		name string
		flag string
	}{
		{"xen", "--xen-listen"},
		{"aws", "--aws-listen"},
		{"control", "--listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			held, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			dir := filepath.Join(t.TempDir(), "lab")
			t.Cleanup(func() { run(t, "lab", "down", "--dir", dir) })
			addrs := map[string]string{"--xen-listen": freeAddr(t), "--aws-listen": freeAddr(t), "--listen": freeAddr(t)}
			addrs[tt.flag] = held.Addr().String()
			args := []string{"lab", "up", "--dir", dir, "--no-qemu", "--no-sample"}
			for f, a := range addrs {
				args = append(args, f, a)
			}
			code, out, errs := run(t, args...)
			if code == 0 || !strings.Contains(errs, "port "+held.Addr().String()+" is taken") || !strings.Contains(errs, tt.flag) {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
			}
			if recs := labRecords(t, dir); len(recs) != 0 {
				t.Errorf("processes recorded: %+v", recs)
			}
			if strings.Contains(out, "starting") {
				t.Errorf("something was started:\n%s", out)
			}
			mustRun(t, []string{"nothing runs"}, "lab", "down", "--dir", dir)
		})
	}
}

func TestLabFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"port zero", []string{"lab", "up", "--dir", filepath.Join(dir, "a"), "--xen-listen", "127.0.0.1:0"}, "fixed port"},
		{"no port", []string{"lab", "up", "--dir", filepath.Join(dir, "b"), "--listen", "localhost"}, "HOST:PORT"},
		{"status of nothing", []string{"lab", "status", "--dir", filepath.Join(dir, "none")}, "no lab in"},
		{"purge a stranger", []string{"lab", "down", "--dir", dir, "--purge"}, "not a lab directory"},
	}
	os.WriteFile(filepath.Join(dir, "precious"), []byte("keep"), 0o600)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := run(t, tt.args...)
			if code == 0 || !strings.Contains(errs, tt.want) {
				t.Errorf("exit %d, stderr %q, want %q", code, errs, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Error("down --purge deleted a directory that is not a lab")
	}
}
