package job_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/store"
	"github.com/ferry-project/ferry/internal/store/storetest"
)

// node is a job node running as a subprocess of the test binary.
type node struct {
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *strings.Builder
}

func startNode(t *testing.T, env ...string) *node {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"FERRY_TEST_MAIN=jobnode"}, env...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{cmd: cmd, exited: make(chan struct{}), stderr: &strings.Builder{}}
	cmd.Stderr = n.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() { n.kill() })
	select {
	case ok := <-ready:
		if !ok {
			<-n.exited
			t.Fatalf("job node did not start: %s", n.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("job node did not start in time: %s", n.stderr)
	}
	return n
}

// kill sends SIGKILL: no shutdown code runs.
func (n *node) kill() {
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// TestResumeAfterKill starts a job node, runs a job with 5 steps that
// blocks in step 2, kills the node with SIGKILL, starts a new one and
// checks that the job finishes from its checkpoint: steps 0 and 1 ran once
// (in the first process), step 2 ran in both (interrupted, then again),
// steps 3 and 4 ran once (in the second).
func TestResumeAfterKill(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	loc, _ := store.ParseLocation(data, "")
	n1 := startNode(t, "FERRY_TEST_DATA="+data, "FERRY_TEST_OWNER=node1")
	m, _ := openManager(t, loc, job.Options{Work: false})
	s := stepsState{N: 5, Log: filepath.Join(dir, "log"), BlockAt: 2, Blocked: filepath.Join(dir, "blocked"), Release: filepath.Join(dir, "release"), FailAt: -1, FlakyAt: -1}
	j := submit(t, m, s)
	if err := waitFile(t.Context(), s.Blocked); err != nil {
		t.Fatal(err)
	}
	pid1 := fmt.Sprint(n1.cmd.Process.Pid)
	n1.kill()
	if g, _ := m.Get(t.Context(), j.ID); g.State != store.JobRunning || g.Owner != "node1" {
		t.Fatalf("after kill -9 the job is %s owned by %q", g.State, g.Owner)
	}
	if err := os.WriteFile(s.Release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, "FERRY_TEST_DATA="+data, "FERRY_TEST_OWNER=node2")
	pid2 := fmt.Sprint(n2.cmd.Process.Pid)
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("job %s: %s", j.State, j.Error)
	}
	var final stepsState
	if err := json.Unmarshal(j.Result, &final); err != nil {
		t.Fatalf("result %s: %v", j.Result, err)
	}
	if final.Mid != 2 {
		t.Errorf("step 2 saw Mid=%d at the end, want 2: the mid-step checkpoint of the killed run was lost", final.Mid)
	}
	want := []string{"0 " + pid1, "1 " + pid1, "2 " + pid1, "2 " + pid2, "3 " + pid2, "4 " + pid2}
	if got := logLines(t, s.Log, j.ID); !slices.Equal(got, want) {
		t.Errorf("steps ran %q, want %q", got, want)
	}
	evs, _ := m.Events(t.Context(), j.ID, 0, 0)
	var kinds []string
	for _, e := range evs {
		if e.Kind != "progress" && e.Kind != "step" {
			kinds = append(kinds, e.Kind)
		}
	}
	if !slices.Contains(kinds, "resumed") {
		t.Errorf("no resumed event: %v", kinds)
	}
}

// TestTwoWorkersPostgres runs two worker processes against one PostgreSQL
// database and checks that jobs are spread over both and no step runs
// twice.
func TestTwoWorkersPostgres(t *testing.T) {
	if testing.Short() && os.Getenv("FERRY_REQUIRE_TOOLS") != "1" && storetest.PostgresBinDir() == "" {
		t.Skip("PostgreSQL not installed")
	}
	url := storetest.NewDatabase(t, storetest.Postgres(t))
	loc, err := store.ParseLocation("", url)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The submitter migrates first; the workers start together.
	m, _ := openManager(t, loc, job.Options{Work: false})
	startNode(t, "FERRY_TEST_DATABASE="+url, "FERRY_TEST_OWNER=w1")
	startNode(t, "FERRY_TEST_DATABASE="+url, "FERRY_TEST_OWNER=w2")
	logf := filepath.Join(dir, "log")
	release := filepath.Join(dir, "release")
	// Two jobs that hold their worker until released: each worker has one
	// slot, so both must be busy at once.
	var ids []string
	for range 2 {
		ids = append(ids, submit(t, m, stepsState{N: 2, Log: logf, BlockAt: 0, Release: release, Blocked: filepath.Join(dir, "blocked"), FailAt: -1, FlakyAt: -1}).ID)
	}
	owners := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for len(owners) < 2 {
		clear(owners)
		for _, id := range ids {
			if g, _ := m.Get(t.Context(), id); g.State == store.JobRunning {
				owners[g.Owner] = true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("both blocking jobs not running on two workers: %v", owners)
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.WriteFile(release, nil, 0o644)
	for range 10 {
		ids = append(ids, submit(t, m, stepsState{N: 3, Log: logf, BlockAt: -1, FailAt: -1, FlakyAt: -1}).ID)
	}
	ran := map[string]int{}
	for _, id := range ids {
		j := waitJob(t, m, id, store.JobSucceeded, store.JobFailed, store.JobCanceled)
		if j.State != store.JobSucceeded {
			t.Errorf("job %s: %s %s", id, j.State, j.Error)
		}
		seen := map[string]bool{}
		for _, l := range logLines(t, logf, id) {
			step, pid, _ := strings.Cut(l, " ")
			if seen[step] {
				t.Errorf("job %s step %s ran twice", id, step)
			}
			seen[step] = true
			ran[pid]++
		}
	}
	if len(ran) != 2 {
		t.Errorf("steps ran in %d processes, want 2: %v", len(ran), ran)
	}
	t.Logf("steps per worker process: %v", ran)
}
