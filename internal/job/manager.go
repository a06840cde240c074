package job

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

// Options tune a Manager. Zero values mean the defaults.
type Options struct {
	Logger *slog.Logger
	// Owner names this process in leases (default host-pid-random).
	Owner string
	// Work makes this node run jobs (ferry serve and ferry worker); a
	// Manager without it only submits and inspects.
	Work bool
	// Workers is how many jobs this node runs at once (default 4).
	Workers int
	// LeaseTTL is how long a claim lasts without renewal (default 30 s).
	// A job whose worker died is resumed elsewhere after at most this.
	LeaseTTL time.Duration
	// SingleNode says no other process uses the database (SQLite under
	// the data directory's lock): leases held by anyone else are dead and
	// their jobs resume at once on Start.
	SingleNode bool
	// PollInterval is how often idle workers look for new jobs (default
	// 1 s; PostgreSQL also notifies at once).
	PollInterval time.Duration
	// ProgressInterval bounds how often progress is written (default 1 s).
	ProgressInterval time.Duration
	// MaxRetries is how many times a step failing with a retryable
	// (Unavailable) error is retried before the job fails (default 5).
	MaxRetries int
	// RetryBackoff is the first retry delay, doubled each time (default
	// 5 s).
	RetryBackoff time.Duration
	// UndoTimeout bounds compensation after a cancel or failure (default
	// 30 min).
	UndoTimeout time.Duration
	// OnBytes, if set, is told of progress bytes (metrics).
	OnBytes func(kind string, n int64)
	// OnFinish, if set, is told when a job reaches a final state here.
	OnFinish func(kind, state string)
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Owner == "" {
		host, _ := os.Hostname()
		o.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randHex(4))
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 30 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = time.Second
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 5
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 5 * time.Second
	}
	if o.UndoTimeout <= 0 {
		o.UndoTimeout = 30 * time.Minute
	}
}

// queue is what ferry uses of a River client, whatever its transaction
// type.
type queue interface {
	Insert(ctx context.Context, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
	JobCancel(ctx context.Context, id int64) (*rivertype.JobRow, error)
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
}

// runArgs is River's job: "run ferry job JobID, generation Generation".
type runArgs struct {
	JobID      string `json:"job_id"`
	Generation int64  `json:"gen"`
}

func (runArgs) Kind() string { return "ferry.job" }

type riverWorker struct {
	river.WorkerDefaults[runArgs]
	m *Manager
}

// Timeout: jobs run as long as they need (a disk copy can take hours);
// leases, not River, detect dead workers.
func (w *riverWorker) Timeout(*river.Job[runArgs]) time.Duration { return -1 }

func (w *riverWorker) Work(ctx context.Context, j *river.Job[runArgs]) error {
	return w.m.work(ctx, j.Args)
}

// Manager submits, runs and inspects jobs.
type Manager struct {
	st     store.Store
	reg    *Registry
	o      Options
	logger *slog.Logger
	broker *Broker
	q      queue
	close  func()

	mu      sync.Mutex
	running map[string]context.CancelCauseFunc
	stop    context.CancelFunc
	done    chan struct{}
}

// Open connects River to the database at loc (migrating River's tables),
// next to st, which must be the store at the same location.
func Open(ctx context.Context, loc store.Location, st store.Store, reg *Registry, o *Options) (*Manager, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	opts.defaults()
	m := &Manager{st: st, reg: reg, o: opts, logger: opts.Logger, broker: NewBroker(), running: map[string]context.CancelCauseFunc{}}
	workers := river.NewWorkers()
	river.AddWorker(workers, &riverWorker{m: m})
	cfg := &river.Config{
		Logger:            riverLogger(opts.Logger),
		JobTimeout:        -1,
		FetchPollInterval: opts.PollInterval,
		FetchCooldown:     min(opts.PollInterval, 100*time.Millisecond),
		Workers:           workers,
		MaxAttempts:       25,
	}
	if opts.Work {
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: opts.Workers}}
	}
	switch loc.Dialect {
	case store.SQLite:
		db, err := sql.Open("sqlite", store.SQLiteDSN(loc.Path, true))
		if err != nil {
			return nil, fmt.Errorf("jobs: %w", err)
		}
		// River on SQLite wants one connection (see riversqlite).
		db.SetMaxOpenConns(1)
		drv := riversqlite.New(db)
		if err := migrateRiver(ctx, drv, opts.Logger); err != nil {
			db.Close()
			return nil, err
		}
		c, err := river.NewClient(drv, cfg)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("jobs: %w", err)
		}
		m.q, m.close = c, func() { db.Close() }
	case store.Postgres:
		pool, err := pgxpool.New(ctx, loc.URL)
		if err != nil {
			return nil, fmt.Errorf("jobs: connect %s: %w: %w", loc.Redacted(), err, errs.ErrUnavailable)
		}
		drv := riverpgxv5.New(pool)
		if err := migrateRiverLocked(ctx, pool, drv, opts.Logger); err != nil {
			pool.Close()
			return nil, err
		}
		c, err := river.NewClient(drv, cfg)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("jobs: %w", err)
		}
		m.q, m.close = c, pool.Close
	default:
		return nil, fmt.Errorf("jobs: unknown database dialect %q: %w", loc.Dialect, errs.ErrInvalidArgument)
	}
	return m, nil
}

// riverLogger keeps River's chatter at warnings and above.
func riverLogger(l *slog.Logger) *slog.Logger {
	return slog.New(levelFilter{l.Handler(), slog.LevelWarn}).With("component", "river")
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (h levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}
func (h levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{h.Handler.WithAttrs(a), h.min}
}
func (h levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{h.Handler.WithGroup(n), h.min}
}

func migrateRiver[TTx any](ctx context.Context, drv riverdriver.Driver[TTx], logger *slog.Logger) error {
	mig, err := rivermigrate.New(drv, &rivermigrate.Config{Logger: riverLogger(logger)})
	if err != nil {
		return fmt.Errorf("jobs: migrate: %w", err)
	}
	if _, err := mig.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("jobs: migrate queue tables: %w", err)
	}
	return nil
}

// migrateRiverLocked migrates under a PostgreSQL advisory lock, so that
// nodes starting together do not race.
func migrateRiverLocked(ctx context.Context, pool *pgxpool.Pool, drv *riverpgxv5.Driver, logger *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("jobs: connect: %w: %w", err, errs.ErrUnavailable)
	}
	defer conn.Release()
	const key = 7205759403792794
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(key)); err != nil {
		return fmt.Errorf("jobs: migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(key))
	return migrateRiver(ctx, drv, logger)
}

// Broker is where this node publishes job events.
func (m *Manager) Broker() *Broker { return m.broker }

// Registry is the manager's kind registry.
func (m *Manager) Registry() *Registry { return m.reg }

// Owner is this node's lease owner name.
func (m *Manager) Owner() string { return m.o.Owner }

// Start starts working jobs (with Options.Work) and the reaper that
// resumes jobs whose workers died.
func (m *Manager) Start(ctx context.Context) error {
	if !m.o.Work {
		return nil
	}
	if m.o.SingleNode {
		// Nobody else can hold a lease: resume what a previous process
		// left running, now.
		if err := m.reap(ctx, true); err != nil {
			return err
		}
	}
	if err := m.q.Start(ctx); err != nil {
		return fmt.Errorf("jobs: start queue: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stop, m.done = cancel, make(chan struct{})
	go m.reaper(rctx)
	return nil
}

// Stop stops working: jobs running here are interrupted (their leases
// released, so that another node or the next start resumes them from their
// checkpoints), and the database connections are closed.
func (m *Manager) Stop(ctx context.Context) error {
	var err error
	if m.o.Work {
		if m.stop != nil {
			m.stop()
			<-m.done
		}
		err = m.q.StopAndCancel(ctx)
	}
	if m.close != nil {
		m.close()
	}
	return err
}

func (m *Manager) reaper(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(max(m.o.LeaseTTL/3, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.reap(ctx, false); err != nil && ctx.Err() == nil {
				m.logger.Warn("jobs: reaper", "err", err)
			}
		}
	}
}

// reap re-queues jobs that need a worker: those whose owner stopped
// renewing its lease (or, with all, any owner but us), and those left
// without a queue entry (a failed insert, a retry whose delay passed, a
// job released at shutdown).
func (m *Manager) reap(ctx context.Context, all bool) error {
	now := time.Now()
	f := store.JobFilter{States: []string{store.JobQueued, store.JobRunning, store.JobCanceling}}
	if !all {
		f.LeaseBefore = now
	}
	var jobs []store.Job
	if err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		jobs, err = tx.Jobs(ctx, f)
		return err
	}); err != nil {
		return err
	}
	for _, j := range jobs {
		if !m.needsQueue(j, now, all) {
			continue
		}
		if err := m.requeue(ctx, j.ID, j.Generation, all); err != nil {
			m.logger.Warn("jobs: requeue", "job_id", j.ID, "err", err)
		}
	}
	return nil
}

func (m *Manager) needsQueue(j store.Job, now time.Time, all bool) bool {
	if store.JobTerminal(j.State) {
		return false
	}
	if j.LeaseOwner != "" {
		if j.LeaseOwner == m.o.Owner {
			return false
		}
		return all || j.LeaseExpires.Before(now)
	}
	return j.RiverID == 0 && j.LeaseExpires.Before(now)
}

// requeue hands job id to the queue again under a new generation, if it
// still needs it.
func (m *Manager) requeue(ctx context.Context, id string, gen int64, all bool) error {
	var next int64
	err := m.st.Update(ctx, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, id)
		if err != nil {
			return err
		}
		if j.Generation != gen || !m.needsQueue(j, time.Now(), all) {
			next = 0
			return nil
		}
		if j.LeaseOwner != "" {
			m.logger.Info("jobs: resuming job of a dead worker", "job_id", j.ID, "owner", j.LeaseOwner)
		}
		j.Generation++
		j.RiverID, j.LeaseOwner = 0, ""
		j.LeaseExpires = time.Now().Add(m.o.LeaseTTL)
		if j.CancelRequested {
			j.State = store.JobCanceling
		} else {
			j.State = store.JobQueued
		}
		j.Updated = time.Now()
		next = j.Generation
		return tx.PutJob(ctx, j)
	})
	if err != nil || next == 0 {
		return err
	}
	return m.enqueue(ctx, id, next)
}

// enqueue inserts the River job for (id, gen) and records its ID.
func (m *Manager) enqueue(ctx context.Context, id string, gen int64) error {
	res, err := m.q.Insert(ctx, runArgs{JobID: id, Generation: gen}, nil)
	if err != nil {
		return fmt.Errorf("job %s: queue: %w: %w", id, err, errs.ErrUnavailable)
	}
	return m.st.Update(ctx, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, id)
		if err != nil || j.Generation != gen {
			return err
		}
		j.RiverID = res.Job.ID
		return tx.PutJob(ctx, j)
	})
}

// SubmitOptions tune Submit.
type SubmitOptions struct {
	// CreatedBy names who asked (a token name).
	CreatedBy string
	// Planned says the arguments are a plan the caller made (see
	// Kind.Planned).
	Planned bool
}

// Submit validates args against kind's state type and queues a new job.
func (m *Manager) Submit(ctx context.Context, kind string, args json.RawMessage, o *SubmitOptions) (Job, error) {
	r, err := m.reg.lookup(kind)
	if err != nil {
		return Job{}, fmt.Errorf("submit: %w", errs.ErrInvalidArgument) // unknown kind is the caller's mistake
	}
	if o == nil {
		o = &SubmitOptions{}
	}
	if r.planned() && !o.Planned {
		return Job{}, fmt.Errorf("submit %s: its arguments are a plan the control plane makes (for a migration: POST /api/v1/migrations, ferry migrate), not arguments a client writes: %w", kind, errs.ErrInvalidArgument)
	}
	norm, err := r.validate(args)
	if err != nil {
		return Job{}, err
	}
	now := time.Now()
	j := store.Job{ID: NewID(), Kind: kind, State: store.JobQueued, Generation: 1, Args: norm, CreatedBy: o.CreatedBy,
		Created: now, Updated: now, LeaseExpires: now.Add(m.o.LeaseTTL)}
	var ev store.Event
	if err := m.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateJob(ctx, j); err != nil {
			return err
		}
		ev = store.Event{JobID: j.ID, Time: now, Kind: "queued", Payload: mustJSON(map[string]any{"kind": kind, "created_by": o.CreatedBy})}
		ev.Seq, err = tx.AppendEvent(ctx, ev)
		return err
	}); err != nil {
		return Job{}, err
	}
	m.broker.Publish(ev)
	if err := m.enqueue(ctx, j.ID, 1); err != nil {
		// The reaper queues it once the grace period passes.
		m.logger.Warn("jobs: queue insert failed; will retry", "job_id", j.ID, "err", err)
	}
	return m.Get(ctx, j.ID)
}

// Get returns one job.
func (m *Manager) Get(ctx context.Context, id string) (Job, error) {
	var j store.Job
	err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		j, err = tx.Job(ctx, id)
		return err
	})
	if err != nil {
		return Job{}, err
	}
	return m.view(j), nil
}

// ListOptions narrow List.
type ListOptions struct {
	States []string
	Kind   string
	Limit  int
}

// List returns jobs, newest first.
func (m *Manager) List(ctx context.Context, o ListOptions) ([]Job, error) {
	var js []store.Job
	err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		js, err = tx.Jobs(ctx, store.JobFilter{States: o.States, Kind: o.Kind, Limit: o.Limit})
		return err
	})
	out := make([]Job, 0, len(js))
	for _, j := range js {
		out = append(out, m.view(j))
	}
	return out, err
}

// Events returns a job's events after seq (all jobs' with id "").
func (m *Manager) Events(ctx context.Context, id string, after int64, limit int) ([]store.Event, error) {
	var evs []store.Event
	err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		evs, err = tx.Events(ctx, store.EventFilter{JobID: id, After: after, Limit: limit})
		return err
	})
	return evs, err
}

// Cancel asks for a job to stop; its completed steps are undone. A job
// that never started is cancelled at once.
func (m *Manager) Cancel(ctx context.Context, id string, by string) (Job, error) {
	var riverID int64
	var local context.CancelCauseFunc
	var evs []store.Event
	err := m.st.Update(ctx, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, id)
		if err != nil {
			return err
		}
		if store.JobTerminal(j.State) {
			return fmt.Errorf("job %s is already %s: %w", id, j.State, errs.ErrFailedPrecondition)
		}
		if j.CancelRequested {
			return nil
		}
		now := time.Now()
		j.CancelRequested, j.Updated = true, now
		evs = append(evs, store.Event{JobID: id, Time: now, Kind: "cancel_requested", Payload: mustJSON(map[string]any{"by": by})})
		switch {
		case j.LeaseOwner == "" && len(j.Checkpoint) == 0:
			// Never started: nothing to undo; drop its queue entry.
			riverID = j.RiverID
			j.State, j.Error, j.ErrorCode, j.RiverID = store.JobCanceled, "canceled before it started", errs.Canceled.String(), 0
			evs = append(evs, store.Event{JobID: id, Time: now, Kind: "finished", Payload: mustJSON(map[string]any{"state": store.JobCanceled})})
		case j.LeaseOwner != "":
			// Running: tell its worker through River too.
			riverID = j.RiverID
			j.State = store.JobCanceling
		default:
			// Waiting to resume: its queue entry must run, to undo.
			j.State = store.JobCanceling
		}
		for i := range evs {
			if evs[i].Seq, err = tx.AppendEvent(ctx, evs[i]); err != nil {
				return err
			}
		}
		return tx.PutJob(ctx, j)
	})
	if err != nil {
		return Job{}, err
	}
	for _, e := range evs {
		m.broker.Publish(e)
	}
	m.mu.Lock()
	local = m.running[id]
	m.mu.Unlock()
	if local != nil {
		local(errCanceled)
	} else if riverID != 0 {
		// Tell whichever node runs it (River's control channel); its
		// lease renewal notices the flag in any case.
		if _, err := m.q.JobCancel(ctx, riverID); err != nil && !errors.Is(err, rivertype.ErrNotFound) {
			m.logger.Warn("jobs: river cancel", "job_id", id, "err", err)
		}
	}
	return m.Get(ctx, id)
}

// Retry runs a failed or cancelled job again from the start, with its
// original arguments.
func (m *Manager) Retry(ctx context.Context, id string, by string) (Job, error) {
	var gen int64
	var ev store.Event
	err := m.st.Update(ctx, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, id)
		if err != nil {
			return err
		}
		if j.State != store.JobFailed && j.State != store.JobCanceled {
			return fmt.Errorf("job %s is %s; only failed or canceled jobs can be retried: %w", id, j.State, errs.ErrFailedPrecondition)
		}
		now := time.Now()
		j.State, j.Generation = store.JobQueued, j.Generation+1
		j.RiverID, j.Checkpoint, j.Progress, j.Result, j.Error, j.ErrorCode = 0, nil, nil, nil, "", ""
		j.Attempt, j.CancelRequested, j.LeaseOwner, j.LeaseExpires, j.Updated = 0, false, "", now.Add(m.o.LeaseTTL), now
		gen = j.Generation
		ev = store.Event{JobID: id, Time: now, Kind: "queued", Payload: mustJSON(map[string]any{"retry_by": by})}
		if ev.Seq, err = tx.AppendEvent(ctx, ev); err != nil {
			return err
		}
		return tx.PutJob(ctx, j)
	})
	if err != nil {
		return Job{}, err
	}
	m.broker.Publish(ev)
	if err := m.enqueue(ctx, id, gen); err != nil {
		m.logger.Warn("jobs: queue insert failed; will retry", "job_id", id, "err", err)
	}
	return m.Get(ctx, id)
}

// NewID returns a new job ID.
func NewID() string { return "j-" + randHex(10) }

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with plain maps
	}
	return b
}
