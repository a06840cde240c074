// Package job runs ferry's durable jobs: long operations (migrations,
// conversions, replications) that survive a crash of the process running
// them and resume from their last checkpoint.
//
// A job kind is a typed list of steps over a state S ([Kind], [Step]). The
// state is persisted as a checkpoint after every step, so a job interrupted
// anywhere (kill -9 included) restarts at the step that was running, with
// the state the previous steps left. Steps must therefore be idempotent:
// running one again after a crash part-way must be harmless. When a job is
// cancelled, or fails with an error that is not retryable, the Undo of each
// completed step runs in reverse order (lxd's revert pattern), each undo
// checkpointed too.
//
// Queueing is River's (riversqlite on one node, riverpgxv5 on PostgreSQL
// for many). River only delivers "run job J, generation G"; ferry's own
// bookkeeping row (store.Job) is the truth:
//
//   - A worker claims the row with a lease (owner, expiry) that it renews
//     while it works; a River delivery whose generation is stale, or whose
//     job another live worker holds, does nothing. So a job never runs
//     twice at once, whatever River redelivers.
//   - A reaper on every node hands a job whose owner stopped renewing (a
//     killed process) to the queue again under a new generation; on a
//     single node (SQLite, guarded by the data directory's lock) it does so
//     at start-up without waiting for the lease to expire.
//   - Cancellation is a flag on the row: the owner sees it at once when it
//     runs in the same process, at its next lease renewal otherwise, and
//     through River's cancel notification.
//
// Progress and events are written to the store (so every node and every
// API server sees them) and published on an in-process [Broker].
package job

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// Step is one step of a job kind over state S.
type Step[S any] struct {
	Name string
	// When, if set, decides whether the step runs (an itinerary
	// predicate, evaluated on the state when the step's turn comes).
	When func(*S) bool
	// Run does the step's work and records in s what later steps (and
	// undos) need. It must be idempotent: after a crash it runs again
	// from the state saved before it. When it fails, what it recorded in
	// s is saved too (a retry can reuse a resource it made), but it is not
	// counted as done: it cleans up after itself, and its Undo is not
	// called.
	Run func(ctx context.Context, e *Env, s *S) error
	// Undo, if set, compensates a completed Run. It must be idempotent and
	// tolerate resources already gone.
	Undo func(ctx context.Context, e *Env, s *S) error
}

// Kind is a named job type: its steps over state S. The job's arguments
// are the initial S, as JSON.
type Kind[S any] struct {
	Name  string
	Steps []Step[S]
	// Validate, if set, checks (and may normalise) the initial state when
	// the job is submitted; its error should wrap errs.ErrInvalidArgument.
	Validate func(*S) error
	// Result, if set, extracts the job's result from the final state;
	// otherwise the result is the final state itself.
	Result func(*S) any
	// Planned kinds carry a plan that a service made and checked (a
	// migration's): they are submitted only with SubmitOptions.Planned,
	// never as arguments a client wrote (POST /api/v1/jobs).
	Planned bool
}

// Env is what a running step may use besides its state.
type Env struct {
	JobID    string
	Logger   *slog.Logger
	Progress progress.Reporter
	emit     func(kind string, payload any)
	save     func(ctx context.Context) error
}

// Checkpoint persists the state as the running step has left it so far,
// without marking the step done: a long step (a disk transfer) records how
// far it got, and after a crash it runs again from that state. Calls must
// not overlap with changes to the state (the step serialises them).
func (e *Env) Checkpoint(ctx context.Context) error {
	if e.save == nil {
		return nil
	}
	return e.save(ctx)
}

// Event records a job event (stored and published); payload is marshalled
// as JSON.
func (e *Env) Event(kind string, payload any) {
	if e.emit != nil {
		e.emit(kind, payload)
	}
}

// Registry holds the job kinds a node can run. Fill it in one place
// ([Register] for each kind) before opening the Manager.
type Registry struct {
	mu    sync.RWMutex
	kinds map[string]runner
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{kinds: map[string]runner{}} }

// Register adds k to r. It panics if a kind of that name exists (a
// programmer error).
func Register[S any](r *Registry, k Kind[S]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k.Name == "" {
		panic("job: kind without a name")
	}
	if _, dup := r.kinds[k.Name]; dup {
		panic("job: kind " + k.Name + " registered twice")
	}
	r.kinds[k.Name] = &kindRunner[S]{k: k}
}

// Kinds lists the registered kind names.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	for n := range r.kinds {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (r *Registry) lookup(name string) (runner, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.kinds[name]
	if !ok {
		return nil, fmt.Errorf("job kind %q: %w", name, errs.ErrNotFound)
	}
	return k, nil
}

// checkpoint is what is persisted after every step.
type checkpoint struct {
	Version int `json:"v"`
	// Next is the index of the next step to run.
	Next int `json:"next"`
	// Done lists the steps that ran to completion, in order.
	Done []int `json:"done,omitempty"`
	// Undoing is set once compensation started; Undone counts the
	// entries of Done already undone (from the end).
	Undoing bool   `json:"undoing,omitempty"`
	Undone  int    `json:"undone,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// State is the kind's S.
	State json.RawMessage `json:"state"`
}

// runner is a Kind with its type parameter hidden.
type runner interface {
	stepNames() []string
	planned() bool
	// validate decodes args into S, validates it, and re-encodes it.
	validate(args json.RawMessage) (json.RawMessage, error)
	// run runs the steps from cp.Next, calling save after each.
	run(ctx context.Context, e *Env, cp *checkpoint, save func(*checkpoint) error) (json.RawMessage, error)
	// undo compensates the completed steps in reverse, calling save after
	// each.
	undo(ctx context.Context, e *Env, cp *checkpoint, save func(*checkpoint) error) error
}

type kindRunner[S any] struct{ k Kind[S] }

func (r *kindRunner[S]) planned() bool { return r.k.Planned }

func (r *kindRunner[S]) stepNames() []string {
	var out []string
	for _, s := range r.k.Steps {
		out = append(out, s.Name)
	}
	return out
}

func (r *kindRunner[S]) validate(args json.RawMessage) (json.RawMessage, error) {
	var s S
	if len(args) > 0 && string(args) != "null" {
		dec := json.NewDecoder(bytes.NewReader(args))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return nil, fmt.Errorf("job %s: arguments: %v: %w", r.k.Name, err, errs.ErrInvalidArgument)
		}
	}
	if r.k.Validate != nil {
		if err := r.k.Validate(&s); err != nil {
			return nil, err
		}
	}
	return json.Marshal(&s)
}

func (r *kindRunner[S]) decode(cp *checkpoint) (*S, error) {
	s := new(S)
	if len(cp.State) > 0 && string(cp.State) != "null" {
		if err := json.Unmarshal(cp.State, s); err != nil {
			return nil, fmt.Errorf("job %s: checkpoint state: %v: %w", r.k.Name, err, errs.ErrCorrupt)
		}
	}
	return s, nil
}

func (r *kindRunner[S]) run(ctx context.Context, e *Env, cp *checkpoint, save func(*checkpoint) error) (json.RawMessage, error) {
	s, err := r.decode(cp)
	if err != nil {
		return nil, err
	}
	for i := cp.Next; i < len(r.k.Steps); i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st := r.k.Steps[i]
		if st.When != nil && !st.When(s) {
			cp.Next = i + 1
			e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "skipped"})
			if err := save(cp); err != nil {
				return nil, err
			}
			continue
		}
		e.Progress.Phase(st.Name)
		e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "started"})
		e.save = func(context.Context) error {
			b, err := json.Marshal(s)
			if err != nil {
				return fmt.Errorf("job %s: encode state: %w", r.k.Name, err)
			}
			cp.State = b
			return save(cp)
		}
		runErr := st.Run(ctx, e, s)
		e.save = nil
		// The state is kept even after a failure: a retry or an undo may
		// need what the failed step recorded.
		if cp.State, err = json.Marshal(s); err != nil {
			return nil, fmt.Errorf("job %s: encode state: %w", r.k.Name, err)
		}
		if runErr != nil {
			// Keep what the step recorded (a resource it made and will
			// reuse on retry); Next stays at this step.
			if ctx.Err() == nil {
				_ = save(cp)
			}
			return nil, fmt.Errorf("step %s: %w", st.Name, runErr)
		}
		cp.Done = append(cp.Done, i)
		cp.Next = i + 1
		if err := save(cp); err != nil {
			return nil, err
		}
		e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "done"})
	}
	var res any = s
	if r.k.Result != nil {
		res = r.k.Result(s)
	}
	return json.Marshal(res)
}

func (r *kindRunner[S]) undo(ctx context.Context, e *Env, cp *checkpoint, save func(*checkpoint) error) error {
	s, err := r.decode(cp)
	if err != nil {
		return err
	}
	cp.Undoing = true
	var failed []error
	for cp.Undone < len(cp.Done) {
		i := cp.Done[len(cp.Done)-1-cp.Undone]
		st := r.k.Steps[i]
		if st.Undo != nil {
			e.Progress.Phase("undo " + st.Name)
			e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "undoing"})
			if err := st.Undo(ctx, e, s); err != nil {
				// Keep going: leave as little behind as possible, and
				// report every undo that failed.
				e.Logger.Warn("undo failed", "job_id", e.JobID, "step", st.Name, "err", err)
				e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "undo_failed", "error": err.Error()})
				failed = append(failed, fmt.Errorf("undo %s: %w", st.Name, err))
			} else {
				e.Event("step", map[string]any{"step": st.Name, "index": i, "status": "undone"})
			}
		}
		cp.Undone++
		if cp.State, err = json.Marshal(s); err != nil {
			return err
		}
		if err := save(cp); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("job %s: %d undo step(s) failed, first: %w", r.k.Name, len(failed), failed[0])
	}
	return nil
}
