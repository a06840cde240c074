package xapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// Event is one event.from event. Snapshot holds the object's record as
// sent; decode it with Decode.
type Event struct {
	ID        int64     `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Class     string    `json:"class"`
	Operation string    `json:"operation"` // add, del, mod
	Ref       string    `json:"ref"`
	ObjUUID   string    `json:"obj_uuid"`
	Snapshot  any       `json:"snapshot"`
}

// Decode decodes the event's snapshot into dst, a pointer to a record.
func (e Event) Decode(dst any) error {
	if e.Snapshot == nil {
		return fmt.Errorf("xapi event %d on %s: no snapshot: %w", e.ID, e.Class, errs.ErrNotFound)
	}
	return decode(e.Snapshot, dst)
}

// EventBatch is the result of event.from.
type EventBatch struct {
	Events         []Event
	ValidRefCounts map[string]int64
	// Token is passed to the next event.from to get what changed since.
	Token string
}

type eventBatchWire struct {
	Events         []Event          `json:"events"`
	ValidRefCounts map[string]int64 `json:"valid_ref_counts"`
	// The SDK's transcripts spell it so.
	ValidRefCountsCamel map[string]int64 `json:"validRefCounts"`
	Token               string           `json:"token"`
}

// EventFrom calls event.from(classes, token, timeout): the events on the
// given classes ("vm", "task", or one object: "task/OpaqueRef:…") since
// token ("" for the current state of every object), waiting up to timeout
// for one to happen.
func (c *Client) EventFrom(ctx context.Context, classes []string, token string, timeout time.Duration) (EventBatch, error) {
	var w eventBatchWire
	secs := math.Round(timeout.Seconds()*1000) / 1000
	if err := c.Call(ctx, "event.from", []any{wireValue(classes), token, secs}, &w); err != nil {
		return EventBatch{}, err
	}
	b := EventBatch{Events: w.Events, ValidRefCounts: w.ValidRefCounts, Token: w.Token}
	if b.ValidRefCounts == nil {
		b.ValidRefCounts = w.ValidRefCountsCamel
	}
	return b, nil
}

// TaskProgressUnits is the total WaitTask sets on its reporter: a task's
// progress 0..1 is reported as 0..TaskProgressUnits.
const TaskProgressUnits = 1000

// eventWait is how long one event.from call waits for a task to change.
const eventWait = 30 * time.Second

// WaitTask waits for task to finish and returns its result (xapi writes
// it as an XML-RPC value; see ResultRefs). Progress is reported on rep as
// 0..TaskProgressUnits. A failed task returns an *Error made of its
// error_info; a cancelled one an error wrapping context.Canceled. When ctx
// is done first, the task is cancelled (task.cancel) and ctx's error
// returned. The task is not destroyed.
func (c *Client) WaitTask(ctx context.Context, task TaskRef, rep progress.Reporter) (string, error) {
	rep = progress.Or(rep)
	rep.SetTotal(TaskProgressUnits)
	return c.WaitTaskScaled(ctx, task, rep, TaskProgressUnits)
}

// WaitTaskScaled is WaitTask reporting progress as 0..total on rep, without
// setting rep's total (the caller did, in its own units).
func (c *Client) WaitTaskScaled(ctx context.Context, task TaskRef, rep progress.Reporter, total int64) (string, error) {
	if err := checkRef("task", string(task)); err != nil {
		return "", err
	}
	rep = progress.Or(rep)
	var done int64
	report := func(p float64) {
		if math.IsNaN(p) {
			return
		}
		n := int64(math.Round(min(max(p, 0), 1) * float64(total)))
		if n > done {
			rep.Add(n - done)
			done = n
		}
	}
	token, useEvents := "", true
	var poll *time.Ticker
	defer func() {
		if poll != nil {
			poll.Stop()
		}
	}()
	for {
		var rec TaskRecord
		var have bool
		if useEvents {
			b, err := c.EventFrom(ctx, []string{"task/" + string(task)}, token, eventWait)
			var xe *Error
			switch {
			case err == nil:
				token = b.Token
				for _, ev := range b.Events {
					if ev.Ref != string(task) {
						continue
					}
					if ev.Operation == "del" {
						return "", fmt.Errorf("xapi task %s: destroyed before it finished: %w", task, errs.ErrNotFound)
					}
					var r TaskRecord
					if ev.Decode(&r) == nil && r.Status != "" {
						rec, have = r, true
					}
				}
				if !have {
					// No usable snapshot (or a server that sends only
					// changes, or the wait timed out): read the record.
					r, err := c.Task().GetRecord(ctx, task)
					if err != nil {
						return "", c.waitErr(ctx, task, err)
					}
					rec, have = r, true
				}
			case ctx.Err() != nil:
				return "", c.waitErr(ctx, task, err)
			case errors.As(err, &xe) && xe.Code != "SESSION_INVALID":
				// The server cannot watch one task: poll instead.
				c.log.Debug("xapi event.from on a task failed; polling", "code", xe.Code)
				useEvents = false
				continue
			default:
				return "", c.waitErr(ctx, task, err)
			}
		} else {
			r, err := c.Task().GetRecord(ctx, task)
			if err != nil {
				return "", c.waitErr(ctx, task, err)
			}
			rec, have = r, true
		}
		if have {
			report(rec.Progress)
			switch rec.Status {
			case TaskStatusTypeSuccess:
				report(1)
				return rec.Result, nil
			case TaskStatusTypeFailure:
				return "", taskFailure(task, rec)
			case TaskStatusTypeCancelled:
				return "", fmt.Errorf("xapi task %s (%s): cancelled: %w", task, rec.NameLabel, context.Canceled)
			}
		}
		if !useEvents {
			if poll == nil {
				poll = time.NewTicker(c.opts.PollInterval)
			}
			select {
			case <-ctx.Done():
				return "", c.waitErr(ctx, task, ctx.Err())
			case <-poll.C:
			}
		}
	}
}

// waitErr cancels the task when ctx is done, and returns the error to
// report.
func (c *Client) waitErr(ctx context.Context, task TaskRef, err error) error {
	if ctx.Err() == nil {
		return err
	}
	c.cancelTask(task)
	return fmt.Errorf("xapi task %s: %w", task, ctx.Err())
}

// cancelTask asks xapi to cancel task, on a context of its own (the
// caller's is usually done).
func (c *Client) cancelTask(task TaskRef) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Task().Cancel(ctx, task); err != nil {
		c.log.Debug("xapi task.cancel failed", "task", string(task), "err", err)
	}
}

// destroyTask removes a task ferry created, on a context of its own.
func (c *Client) destroyTask(task TaskRef) {
	if task == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Task().Destroy(ctx, task); err != nil {
		c.log.Debug("xapi task.destroy failed", "task", string(task), "err", err)
	}
}

// taskFailure makes an *Error of a failed task's error_info.
func taskFailure(task TaskRef, rec TaskRecord) error {
	xe := &Error{Method: "task " + rec.NameLabel}
	if len(rec.ErrorInfo) > 0 {
		xe.Code = rec.ErrorInfo[0]
		xe.Params = rec.ErrorInfo[1:]
	}
	if xe.Code == "" {
		xe.Code = "INTERNAL_ERROR"
	}
	if strings.TrimSpace(rec.NameLabel) == "" {
		xe.Method = "task " + string(task)
	}
	return xe
}
