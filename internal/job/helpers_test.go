package job_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/store"
)

// stepsState is the test kind's state: N steps that each append a line
// "<job> <step> <pid>" to Log. Step BlockAt creates Blocked and waits
// until Release exists. FailAt fails permanently, FlakyAt fails with
// Unavailable the first Flaky times.
type stepsState struct {
	N       int    `json:"n"`
	Log     string `json:"log"`
	BlockAt int    `json:"block_at"`
	Blocked string `json:"blocked,omitempty"`
	Release string `json:"release,omitempty"`
	FailAt  int    `json:"fail_at"`
	FlakyAt int    `json:"flaky_at"`
	Flaky   int    `json:"flaky"`
	Tries   int    `json:"tries"`
	Bytes   int64  `json:"bytes"`
	Undone  []int  `json:"undone,omitempty"`
	Skip    bool   `json:"skip,omitempty"`
	// Mid counts the times step BlockAt was reached; it is checkpointed
	// mid-step (Env.Checkpoint), so a rerun after a crash sees it.
	Mid int `json:"mid,omitempty"`
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(line + "\n")
	return err
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// waitFile waits for path to exist or ctx to end.
func waitFile(ctx context.Context, path string) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !exists(path) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func stepsKind() job.Kind[stepsState] {
	k := job.Kind[stepsState]{Name: "test.steps", Validate: func(s *stepsState) error {
		if s.N <= 0 || s.Log == "" {
			return fmt.Errorf("n and log are required: %w", errs.ErrInvalidArgument)
		}
		return nil
	}}
	for i := range 8 {
		k.Steps = append(k.Steps, job.Step[stepsState]{
			Name: fmt.Sprintf("step%d", i),
			When: func(s *stepsState) bool { return i < s.N && !(s.Skip && i == 1) },
			Run: func(ctx context.Context, e *job.Env, s *stepsState) error {
				if err := appendLine(s.Log, fmt.Sprintf("%s %d %d", e.JobID, i, os.Getpid())); err != nil {
					return err
				}
				e.Progress.SetTotal(int64(s.N) * 10)
				e.Progress.Add(10)
				s.Bytes += 10
				if i == s.FailAt {
					return fmt.Errorf("step %d broke: %w", i, errs.ErrFailedPrecondition)
				}
				if i == s.FlakyAt && s.Tries < s.Flaky {
					s.Tries++
					return fmt.Errorf("step %d flaked: %w", i, errs.ErrUnavailable)
				}
				if i == s.BlockAt && s.Release != "" {
					s.Mid++
					if err := e.Checkpoint(ctx); err != nil {
						return err
					}
				}
				if i == s.BlockAt && s.Release != "" && !exists(s.Release) {
					if s.Blocked != "" {
						if err := appendLine(s.Blocked, e.JobID); err != nil {
							return err
						}
					}
					return waitFile(ctx, s.Release)
				}
				return nil
			},
			Undo: func(ctx context.Context, e *job.Env, s *stepsState) error {
				s.Undone = append(s.Undone, i)
				return appendLine(s.Log, fmt.Sprintf("%s undo%d %d", e.JobID, i, os.Getpid()))
			},
		})
	}
	return k
}

func testRegistry() *job.Registry {
	reg := job.NewRegistry()
	job.Register(reg, stepsKind())
	return reg
}

// TestMain doubles as a job node: FERRY_TEST_MAIN=jobnode runs a Manager
// that works jobs until SIGTERM (or SIGKILL) — the "server" the resume
// and scale-out tests start and kill.
func TestMain(m *testing.M) {
	if os.Getenv("FERRY_TEST_MAIN") == "jobnode" {
		os.Exit(jobNode())
	}
	os.Exit(m.Run())
}

func jobNode() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	loc, err := store.ParseLocation(os.Getenv("FERRY_TEST_DATA"), os.Getenv("FERRY_TEST_DATABASE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	st, err := store.Open(ctx, loc, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer st.Close()
	m, err := job.Open(ctx, loc, st, testRegistry(), &job.Options{
		Work: true, Workers: 1, Owner: os.Getenv("FERRY_TEST_OWNER"), SingleNode: loc.Dialect == store.SQLite,
		LeaseTTL: 3 * time.Second, PollInterval: 50 * time.Millisecond, ProgressInterval: 50 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := m.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// waitJob polls until job id is in one of states, or fails the test at the
// deadline.
func waitJob(t *testing.T, m *job.Manager, id string, states ...string) job.Job {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		j, err := m.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range states {
			if j.State == s {
				return j
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s (error %q), want %v", id, j.State, j.Error, states)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a timing assumption
	}
}

// logLines returns the lines of the step log for job id.
func logLines(t *testing.T, path, id string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == id {
			out = append(out, f[1]+" "+f[2])
		}
	}
	return out
}

func submit(t *testing.T, m *job.Manager, s stepsState) job.Job {
	t.Helper()
	b, _ := json.Marshal(s)
	j, err := m.Submit(t.Context(), "test.steps", b, &job.SubmitOptions{CreatedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func sqliteLoc(t *testing.T) store.Location {
	return store.Location{Dialect: store.SQLite, Path: filepath.Join(t.TempDir(), "ferry.db")}
}
