package job_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/store"
)

func openManager(t *testing.T, loc store.Location, o job.Options) (*job.Manager, store.Store) {
	t.Helper()
	st, err := store.Open(t.Context(), loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.PollInterval == 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 600 * time.Millisecond
	}
	o.ProgressInterval = 20 * time.Millisecond
	o.RetryBackoff = 10 * time.Millisecond
	m, err := job.Open(t.Context(), loc, st, testRegistry(), &o)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Stop(t.Context())
		st.Close()
	})
	return m, st
}

func pid() string { return fmt.Sprint(os.Getpid()) }

func TestSteps(t *testing.T) {
	var bytes atomic.Int64
	var finished atomic.Int64
	m, _ := openManager(t, sqliteLoc(t), job.Options{Work: true, SingleNode: true,
		OnBytes: func(kind string, n int64) { bytes.Add(n) }, OnFinish: func(kind, state string) { finished.Add(1) }})
	dir := t.TempDir()
	p := pid()
	tests := []struct {
		name  string
		s     stepsState
		state string
		log   []string
		code  string
	}{
		{name: "all steps", s: stepsState{N: 3, BlockAt: -1, FailAt: -1, FlakyAt: -1}, state: store.JobSucceeded,
			log: []string{"0 " + p, "1 " + p, "2 " + p}},
		{name: "when skips", s: stepsState{N: 3, BlockAt: -1, FailAt: -1, FlakyAt: -1, Skip: true}, state: store.JobSucceeded,
			log: []string{"0 " + p, "2 " + p}},
		{name: "failure undoes in reverse", s: stepsState{N: 4, BlockAt: -1, FailAt: 2, FlakyAt: -1}, state: store.JobFailed,
			log: []string{"0 " + p, "1 " + p, "2 " + p, "undo1 " + p, "undo0 " + p}, code: "failed precondition"},
		{name: "transient failure retried", s: stepsState{N: 3, BlockAt: -1, FailAt: -1, FlakyAt: 1, Flaky: 2}, state: store.JobSucceeded,
			log: []string{"0 " + p, "1 " + p, "1 " + p, "1 " + p, "2 " + p}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.s.Log = filepath.Join(dir, fmt.Sprintf("log%d", i))
			j := submit(t, m, tt.s)
			if j.State != store.JobQueued || len(j.Steps) != 8 || j.CreatedBy != "test" {
				t.Errorf("submitted job = %+v", j)
			}
			j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
			if j.State != tt.state || j.ErrorCode != tt.code {
				t.Fatalf("job ended %s (%s: %s), want %s (%s)", j.State, j.ErrorCode, j.Error, tt.state, tt.code)
			}
			if got := logLines(t, tt.s.Log, j.ID); !slices.Equal(got, tt.log) {
				t.Errorf("steps ran %q, want %q", got, tt.log)
			}
			if j.State == store.JobSucceeded {
				var res stepsState
				if err := json.Unmarshal(j.Result, &res); err != nil || res.Bytes != int64(len(tt.log))*10 {
					t.Errorf("result %s: %v", j.Result, err)
				}
			}
			evs, err := m.Events(t.Context(), j.ID, 0, 0)
			if err != nil || len(evs) < 3 || evs[0].Kind != "queued" || evs[len(evs)-1].Kind != "finished" {
				t.Errorf("events %+v: %v", evs, err)
			}
		})
	}
	// OnFinish runs after the job's row says it ended: wait for the last.
	deadline := time.Now().Add(20 * time.Second)
	for finished.Load() != int64(len(tests)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling interval, not a timing assumption
	}
	if bytes.Load() == 0 || finished.Load() != int64(len(tests)) {
		t.Errorf("observers: %d bytes, %d finished", bytes.Load(), finished.Load())
	}
}

func TestSubmitValidates(t *testing.T) {
	m, _ := openManager(t, sqliteLoc(t), job.Options{Work: false})
	for _, tt := range []struct {
		kind, args string
	}{
		{"test.steps", `{"n":0}`},
		{"test.steps", `{"n":1,"log":"x","bogus":1}`},
		{"test.steps", `[1,2]`},
		{"no.such.kind", `{}`},
	} {
		if _, err := m.Submit(t.Context(), tt.kind, json.RawMessage(tt.args), nil); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("Submit(%s, %s) = %v, want invalid argument", tt.kind, tt.args, err)
		}
	}
	if _, err := m.Get(t.Context(), "j-nope"); !errs.Is(err, errs.NotFound) {
		t.Errorf("Get missing: %v", err)
	}
}

func TestCancel(t *testing.T) {
	m, _ := openManager(t, sqliteLoc(t), job.Options{Work: true, SingleNode: true})
	dir := t.TempDir()
	s := stepsState{N: 4, Log: filepath.Join(dir, "log"), BlockAt: 2, Blocked: filepath.Join(dir, "blocked"), Release: filepath.Join(dir, "never"), FailAt: -1, FlakyAt: -1}
	j := submit(t, m, s)
	if err := waitFile(t.Context(), s.Blocked); err != nil {
		t.Fatal(err)
	}
	c, err := m.Cancel(t.Context(), j.ID, "tester")
	if err != nil || !c.CancelRequested {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	j = waitJob(t, m, j.ID, store.JobCanceled, store.JobFailed, store.JobSucceeded)
	if j.State != store.JobCanceled || j.ErrorCode != "canceled" {
		t.Fatalf("job = %s %s %s", j.State, j.ErrorCode, j.Error)
	}
	p := pid()
	if got, want := logLines(t, s.Log, j.ID), []string{"0 " + p, "1 " + p, "2 " + p, "undo1 " + p, "undo0 " + p}; !slices.Equal(got, want) {
		t.Errorf("log %q, want %q", got, want)
	}
	if _, err := m.Cancel(t.Context(), j.ID, "tester"); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("second cancel: %v", err)
	}
	// Retry runs it again from scratch; this time let it through.
	os.WriteFile(s.Release, nil, 0o644)
	r, err := m.Retry(t.Context(), j.ID, "tester")
	if err != nil || r.State != store.JobQueued {
		t.Fatalf("retry: %+v %v", r, err)
	}
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed)
	if j.State != store.JobSucceeded || j.Attempt != 1 {
		t.Errorf("retried job = %+v", j)
	}
	if _, err := m.Retry(t.Context(), j.ID, "tester"); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("retry of a succeeded job: %v", err)
	}
}

func TestCancelQueued(t *testing.T) {
	m, _ := openManager(t, sqliteLoc(t), job.Options{Work: false})
	j := submit(t, m, stepsState{N: 1, Log: filepath.Join(t.TempDir(), "log")})
	c, err := m.Cancel(t.Context(), j.ID, "tester")
	if err != nil || c.State != store.JobCanceled || c.MayCancel {
		t.Fatalf("cancel queued: %+v %v", c, err)
	}
}

func TestBrokerAndProgress(t *testing.T) {
	m, _ := openManager(t, sqliteLoc(t), job.Options{Work: true, SingleNode: true})
	ch, stop := m.Broker().Subscribe("")
	defer stop()
	dir := t.TempDir()
	s := stepsState{N: 2, Log: filepath.Join(dir, "log"), BlockAt: 1, Release: filepath.Join(dir, "go"), Blocked: filepath.Join(dir, "blocked"), FailAt: -1, FlakyAt: -1}
	j := submit(t, m, s)
	if err := waitFile(t.Context(), s.Blocked); err != nil {
		t.Fatal(err)
	}
	// Progress is flushed, and published, while the step blocks (a
	// mid-step checkpoint may store it before the flusher runs: wait for
	// the event itself).
	kinds := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for !kinds["progress"] {
		select {
		case e := <-ch:
			if e.JobID == j.ID {
				kinds[e.Kind] = true
			}
		case <-timeout:
			t.Fatalf("no progress event while the step blocks; saw %v", kinds)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		g, _ := m.Get(t.Context(), j.ID)
		if g.Progress != nil && g.Progress.Done == 20 && g.Progress.Total == 20 && g.Progress.Phase == "step1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress = %+v", g.Progress)
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.WriteFile(s.Release, nil, 0o644)
	for !kinds["finished"] {
		select {
		case e := <-ch:
			if e.JobID == j.ID {
				kinds[e.Kind] = true
			}
		case <-timeout:
			t.Fatalf("no finished event; saw %v", kinds)
		}
	}
	for _, k := range []string{"queued", "started", "step", "progress", "finished"} {
		if !kinds[k] {
			t.Errorf("no %q event published (saw %v)", k, kinds)
		}
	}
	list, err := m.List(t.Context(), job.ListOptions{Kind: "test.steps"})
	if err != nil || len(list) != 1 || list[0].ID != j.ID {
		t.Errorf("list = %+v %v", list, err)
	}
	if s := strings.Join(m.Registry().Kinds(), ","); s != "test.steps" {
		t.Errorf("kinds = %s", s)
	}
}

// TestCancelWhileInterrupted cancels a job that a stopped node left
// half-done: the next node must still undo its completed steps.
func TestCancelWhileInterrupted(t *testing.T) {
	loc := sqliteLoc(t)
	st, err := store.Open(t.Context(), loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m1, err := job.Open(t.Context(), loc, st, testRegistry(), &job.Options{Work: true, SingleNode: true, PollInterval: 20 * time.Millisecond, LeaseTTL: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m1.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := stepsState{N: 4, Log: filepath.Join(dir, "log"), BlockAt: 2, Blocked: filepath.Join(dir, "blocked"), Release: filepath.Join(dir, "never"), FailAt: -1, FlakyAt: -1}
	j := submit(t, m1, s)
	if err := waitFile(t.Context(), s.Blocked); err != nil {
		t.Fatal(err)
	}
	if err := m1.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	m2, _ := openManager(t, loc, job.Options{Work: false})
	if g, _ := m2.Get(t.Context(), j.ID); g.State != store.JobQueued || g.Owner != "" {
		t.Fatalf("after a graceful stop the job is %s owned by %q", g.State, g.Owner)
	}
	if c, err := m2.Cancel(t.Context(), j.ID, "tester"); err != nil || c.State != store.JobCanceling {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	m3, _ := openManager(t, loc, job.Options{Work: true, SingleNode: true})
	j = waitJob(t, m3, j.ID, store.JobCanceled, store.JobFailed, store.JobSucceeded)
	p := pid()
	if got, want := logLines(t, s.Log, j.ID), []string{"0 " + p, "1 " + p, "2 " + p, "undo1 " + p, "undo0 " + p}; j.State != store.JobCanceled || !slices.Equal(got, want) {
		t.Errorf("job %s, log %q, want canceled and %q", j.State, got, want)
	}
}
