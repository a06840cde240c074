package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/store"
)

var (
	errCanceled  = errors.New("job canceled")
	errLeaseLost = errors.New("job lease lost to another worker")
	errStale     = errors.New("stale queue entry")
)

// work runs one delivery of (job, generation).
func (m *Manager) work(ctx context.Context, a runArgs) error {
	j, err := m.claim(ctx, a)
	if errors.Is(err, errStale) {
		return nil
	}
	if err != nil {
		return err
	}
	r, err := m.reg.lookup(j.Kind)
	bg := context.WithoutCancel(ctx)
	if err != nil {
		return m.finish(bg, j, store.JobFailed, nil, fmt.Errorf("this node cannot run it: %w", err))
	}
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	m.mu.Lock()
	m.running[j.ID] = cancel
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.running, j.ID)
		m.mu.Unlock()
	}()

	pr := &jobProgress{kind: j.Kind, onBytes: m.o.OnBytes}
	if len(r.stepNames()) > 0 {
		pr.steps = len(r.stepNames())
	}
	leaseCtx, stopLease := context.WithCancel(bg)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.keepLease(leaseCtx, cancel, j.ID, j.Generation) }()
	go func() { defer wg.Done(); m.flushProgress(leaseCtx, j.ID, j.Generation, pr) }()
	defer func() { stopLease(); wg.Wait() }()

	env := &Env{JobID: j.ID, Logger: m.logger.With("job_id", j.ID, "kind", j.Kind), Progress: pr}
	env.emit = func(kind string, payload any) { m.event(bg, j.ID, kind, payload) }

	cp := &checkpoint{Version: 1, State: j.Args}
	if len(j.Checkpoint) > 0 {
		if err := json.Unmarshal(j.Checkpoint, cp); err != nil {
			return m.finish(bg, j, store.JobFailed, nil, fmt.Errorf("checkpoint: %v: %w", err, errs.ErrCorrupt))
		}
	}
	save := func(cp *checkpoint) error {
		pr.step.Store(int64(cp.Next))
		return m.saveCheckpoint(bg, j.ID, j.Generation, cp, pr)
	}

	if j.CancelRequested || cp.Undoing {
		return m.compensate(bg, env, r, j, cp, save, store.JobCanceled, nil)
	}
	res, runErr := r.run(jctx, env, cp, save)
	if runErr == nil {
		pr.Phase("done")
		return m.finish(bg, j, store.JobSucceeded, res, nil)
	}
	cause := context.Cause(jctx)
	if errors.Is(cause, errLeaseLost) {
		m.logger.Warn("jobs: lost lease; leaving the job to its new owner", "job_id", j.ID)
		return nil
	}
	canceled := errors.Is(cause, errCanceled)
	if !canceled && jctx.Err() != nil {
		// Cancelled from outside: a user's cancel through River, or
		// this node shutting down. The row says which.
		if canceled, err = m.cancelRequested(bg, j.ID); err != nil {
			return err
		}
		if !canceled {
			return m.release(bg, j, 0, "interrupted", runErr)
		}
	}
	if canceled {
		return m.compensate(bg, env, r, j, cp, save, store.JobCanceled, nil)
	}
	if errs.Is(runErr, errs.Unavailable) && j.Attempt <= int64(m.o.MaxRetries) {
		delay := m.o.RetryBackoff << min(j.Attempt-1, 10)
		env.Logger.Warn("jobs: step failed with a transient error; retrying", "err", runErr, "delay", delay)
		return m.release(bg, j, delay, "retrying", runErr)
	}
	return m.compensate(bg, env, r, j, cp, save, store.JobFailed, runErr)
}

// compensate undoes the completed steps and finishes the job in state.
func (m *Manager) compensate(ctx context.Context, env *Env, r runner, j store.Job, cp *checkpoint, save func(*checkpoint) error, state string, cause error) error {
	uctx, cancel := context.WithTimeout(ctx, m.o.UndoTimeout)
	defer cancel()
	if !cp.Undoing {
		cp.Reason = state
		if cause != nil {
			cp.Reason = cause.Error()
		}
	}
	err := r.undo(uctx, env, cp, save)
	if cause == nil && state == store.JobCanceled {
		cause = fmt.Errorf("canceled: %w", context.Canceled)
	}
	if err != nil {
		cause = errors.Join(cause, err)
	}
	return m.finish(ctx, j, state, nil, cause)
}

// claim takes the job's lease for this node.
func (m *Manager) claim(ctx context.Context, a runArgs) (store.Job, error) {
	var out store.Job
	var ev store.Event
	err := m.st.Update(ctx, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, a.JobID)
		if errs.Is(err, errs.NotFound) {
			return errStale
		}
		if err != nil {
			return err
		}
		now := time.Now()
		if j.Generation != a.Generation || store.JobTerminal(j.State) {
			return errStale
		}
		if j.LeaseOwner != "" && j.LeaseOwner != m.o.Owner && j.LeaseExpires.After(now) {
			return river.JobSnooze(m.o.LeaseTTL)
		}
		kind := "started"
		if len(j.Checkpoint) > 0 {
			kind = "resumed"
		}
		j.LeaseOwner, j.LeaseExpires = m.o.Owner, now.Add(m.o.LeaseTTL)
		j.Attempt++
		j.Updated = now
		if j.CancelRequested {
			j.State = store.JobCanceling
		} else {
			j.State = store.JobRunning
		}
		ev = store.Event{JobID: j.ID, Time: now, Kind: kind, Payload: mustJSON(map[string]any{"owner": m.o.Owner, "attempt": j.Attempt})}
		if ev.Seq, err = tx.AppendEvent(ctx, ev); err != nil {
			return err
		}
		out = j
		return tx.PutJob(ctx, j)
	})
	if err == nil {
		m.broker.Publish(ev)
	}
	return out, err
}

// owned locks job id and checks that this node still holds it.
func (m *Manager) owned(ctx context.Context, tx store.Tx, id string, gen int64) (store.Job, error) {
	j, err := tx.LockJob(ctx, id)
	if err != nil {
		return j, err
	}
	if j.Generation != gen || j.LeaseOwner != m.o.Owner {
		return j, fmt.Errorf("job %s: %w", id, errLeaseLost)
	}
	return j, nil
}

func (m *Manager) keepLease(ctx context.Context, cancel context.CancelCauseFunc, id string, gen int64) {
	t := time.NewTicker(max(m.o.LeaseTTL/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var cancelReq bool
		err := m.st.Update(ctx, func(tx store.Tx) error {
			j, err := m.owned(ctx, tx, id, gen)
			if err != nil {
				return err
			}
			cancelReq = j.CancelRequested
			j.LeaseExpires = time.Now().Add(m.o.LeaseTTL)
			return tx.PutJob(ctx, j)
		})
		switch {
		case errors.Is(err, errLeaseLost):
			cancel(errLeaseLost)
			return
		case err != nil:
			if ctx.Err() == nil {
				m.logger.Warn("jobs: renew lease", "job_id", id, "err", err)
			}
		case cancelReq:
			cancel(errCanceled)
		}
	}
}

func (m *Manager) cancelRequested(ctx context.Context, id string) (bool, error) {
	var c bool
	err := m.st.View(ctx, func(tx store.Tx) error {
		j, err := tx.Job(ctx, id)
		c = j.CancelRequested
		return err
	})
	return c, err
}

func (m *Manager) saveCheckpoint(ctx context.Context, id string, gen int64, cp *checkpoint, pr *jobProgress) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("job %s: encode checkpoint: %w", id, err)
	}
	return m.st.Update(ctx, func(tx store.Tx) error {
		j, err := m.owned(ctx, tx, id, gen)
		if err != nil {
			return err
		}
		j.Checkpoint, j.Progress, j.Updated = b, pr.json(), time.Now()
		return tx.PutJob(ctx, j)
	})
}

// release gives the job up without finishing it: at shutdown (delay 0) or
// to retry a transient failure after delay. The reaper queues it again
// when the delay has passed.
func (m *Manager) release(ctx context.Context, j store.Job, delay time.Duration, why string, cause error) error {
	var ev store.Event
	err := m.st.Update(ctx, func(tx store.Tx) error {
		cur, err := m.owned(ctx, tx, j.ID, j.Generation)
		if err != nil {
			return err
		}
		now := time.Now()
		cur.LeaseOwner, cur.LeaseExpires, cur.RiverID, cur.Updated = "", now.Add(delay), 0, now
		if cur.CancelRequested {
			cur.State = store.JobCanceling
		} else {
			cur.State = store.JobQueued
		}
		payload := map[string]any{"owner": m.o.Owner}
		if delay > 0 {
			payload["retry_in_ms"] = delay.Milliseconds()
		}
		if cause != nil {
			payload["error"] = cause.Error()
			if why == "retrying" {
				cur.Error = cause.Error()
			}
		}
		ev = store.Event{JobID: j.ID, Time: now, Kind: why, Payload: mustJSON(payload)}
		if ev.Seq, err = tx.AppendEvent(ctx, ev); err != nil {
			return err
		}
		return tx.PutJob(ctx, cur)
	})
	if errors.Is(err, errLeaseLost) {
		return nil
	}
	if err == nil {
		m.broker.Publish(ev)
	}
	return err
}

// finish records a final state.
func (m *Manager) finish(ctx context.Context, j store.Job, state string, result json.RawMessage, cause error) error {
	var ev store.Event
	err := m.st.Update(ctx, func(tx store.Tx) error {
		cur, err := m.owned(ctx, tx, j.ID, j.Generation)
		if err != nil {
			return err
		}
		now := time.Now()
		cur.State, cur.Result, cur.Updated = state, result, now
		cur.LeaseOwner, cur.LeaseExpires = "", time.Time{}
		cur.Error, cur.ErrorCode = "", ""
		payload := map[string]any{"state": state}
		if cause != nil {
			cur.Error, cur.ErrorCode = cause.Error(), errs.CodeOf(cause).String()
			payload["error"], payload["code"] = cur.Error, cur.ErrorCode
		}
		ev = store.Event{JobID: j.ID, Time: now, Kind: "finished", Payload: mustJSON(payload)}
		if ev.Seq, err = tx.AppendEvent(ctx, ev); err != nil {
			return err
		}
		return tx.PutJob(ctx, cur)
	})
	if errors.Is(err, errLeaseLost) {
		return nil
	}
	if err != nil {
		return err
	}
	m.broker.Publish(ev)
	if m.o.OnFinish != nil {
		m.o.OnFinish(j.Kind, state)
	}
	if state == store.JobFailed {
		m.logger.Warn("job failed", "job_id", j.ID, "kind", j.Kind, "err", cause)
	} else {
		m.logger.Info("job finished", "job_id", j.ID, "kind", j.Kind, "state", state)
	}
	return nil
}

// event stores and publishes one job event; failures are logged (events
// are informational).
func (m *Manager) event(ctx context.Context, id, kind string, payload any) {
	b, err := json.Marshal(payload)
	if err != nil {
		b = mustJSON(map[string]any{"error": err.Error()})
	}
	ev := store.Event{JobID: id, Time: time.Now(), Kind: kind, Payload: b}
	if err := m.st.Update(ctx, func(tx store.Tx) error {
		var err error
		ev.Seq, err = tx.AppendEvent(ctx, ev)
		return err
	}); err != nil {
		m.logger.Warn("jobs: store event", "job_id", id, "err", err)
		return
	}
	m.broker.Publish(ev)
}

// jobProgress is a job's progress.Reporter: cheap to call, flushed to the
// store at most every ProgressInterval.
type jobProgress struct {
	progress.Counter
	kind    string
	steps   int
	step    atomic.Int64
	onBytes func(kind string, n int64)
	dirty   atomic.Bool
}

func (p *jobProgress) Add(n int64) {
	p.Counter.Add(n)
	if p.onBytes != nil {
		p.onBytes(p.kind, n)
	}
	p.dirty.Store(true)
}
func (p *jobProgress) SetTotal(n int64) { p.Counter.SetTotal(n); p.dirty.Store(true) }
func (p *jobProgress) Phase(s string)   { p.Counter.Phase(s); p.dirty.Store(true) }

// Progress is a job's progress as stored and served.
type Progress struct {
	Phase string `json:"phase,omitempty"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	Step  int    `json:"step"`
	Steps int    `json:"steps"`
}

func (p *jobProgress) value() Progress {
	s := p.Snapshot()
	return Progress{Phase: s.Phase, Done: s.Done, Total: s.Total, Step: int(p.step.Load()), Steps: p.steps}
}

func (p *jobProgress) json() json.RawMessage { return mustJSON(p.value()) }

func (m *Manager) flushProgress(ctx context.Context, id string, gen int64, p *jobProgress) {
	t := time.NewTicker(m.o.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !p.dirty.Swap(false) {
			continue
		}
		v := p.value()
		var ev store.Event
		err := m.st.Update(ctx, func(tx store.Tx) error {
			j, err := m.owned(ctx, tx, id, gen)
			if err != nil {
				return err
			}
			j.Progress, j.Updated = mustJSON(v), time.Now()
			ev = store.Event{JobID: id, Time: j.Updated, Kind: "progress", Payload: j.Progress}
			if ev.Seq, err = tx.AppendEvent(ctx, ev); err != nil {
				return err
			}
			return tx.PutJob(ctx, j)
		})
		if err == nil {
			m.broker.Publish(ev)
		}
	}
}
