// Package progress carries the progress of long work from the code doing it
// to whatever shows it (a terminal bar, API events, a job record).
//
// Work reports through a [Reporter]; rendering is separate and reads a
// [Counter]'s snapshot on its own schedule.
package progress

import (
	"sync"
	"sync/atomic"
)

// Reporter receives progress. Every method is safe for concurrent use by many
// goroutines and must return quickly: implementations never block on I/O.
type Reporter interface {
	// SetTotal sets the amount of work expected, in bytes; 0 means unknown.
	SetTotal(n int64)
	// Add records n more bytes of work done.
	Add(n int64)
	// Phase names the step now running, e.g. "snapshot" or "copy disk 1".
	Phase(name string)
}

// Nop returns a Reporter that discards everything; it is what a nil Reporter
// option means.
func Nop() Reporter { return nop{} }

type nop struct{}

func (nop) SetTotal(int64) {}
func (nop) Add(int64)      {}
func (nop) Phase(string)   {}

// KeepTotal returns a Reporter that forwards Add and Phase to r but not
// SetTotal: for a piece of work whose caller set the total over several
// pieces, each of which would otherwise set its own.
func KeepTotal(r Reporter) Reporter { return keepTotal{Or(r)} }

type keepTotal struct{ Reporter }

func (keepTotal) SetTotal(int64) {}

// Or returns r, or Nop when r is nil.
func Or(r Reporter) Reporter {
	if r == nil {
		return nop{}
	}
	return r
}

// Counter is a Reporter that keeps the latest state for a renderer to read.
type Counter struct {
	total atomic.Int64
	done  atomic.Int64
	mu    sync.Mutex
	phase string
}

var _ Reporter = (*Counter)(nil)

func (c *Counter) SetTotal(n int64) { c.total.Store(n) }
func (c *Counter) Add(n int64)      { c.done.Add(n) }
func (c *Counter) Phase(name string) {
	c.mu.Lock()
	c.phase = name
	c.mu.Unlock()
}

// Snapshot is one reading of a Counter.
type Snapshot struct {
	Phase string
	Done  int64
	Total int64
}

// Snapshot returns the current state.
func (c *Counter) Snapshot() Snapshot {
	c.mu.Lock()
	p := c.phase
	c.mu.Unlock()
	return Snapshot{Phase: p, Done: c.done.Load(), Total: c.total.Load()}
}

// Tee returns a Reporter that forwards to every non-nil r.
func Tee(rs ...Reporter) Reporter {
	var out tee
	for _, r := range rs {
		if r != nil {
			out = append(out, r)
		}
	}
	return out
}

type tee []Reporter

func (t tee) SetTotal(n int64) {
	for _, r := range t {
		r.SetTotal(n)
	}
}
func (t tee) Add(n int64) {
	for _, r := range t {
		r.Add(n)
	}
}
func (t tee) Phase(s string) {
	for _, r := range t {
		r.Phase(s)
	}
}
