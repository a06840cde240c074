package disk

import (
	"context"
	"sync"
)

// Ordered runs work in parallel and hands the results to a sink one at a
// time, in the order the work was submitted. Sequential writers use it to
// compress in the background while writing in order; Convert uses it to
// read ahead for them. At most 2×workers results are in flight, so memory
// stays bounded.
type Ordered[T any] struct {
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	queue  chan chan result[T]
	sink   func(T) error
	done   chan struct{}

	mu  sync.Mutex
	err error
}

type result[T any] struct {
	v   T
	err error
}

// NewOrdered starts an Ordered with the given parallelism (at least 1).
func NewOrdered[T any](ctx context.Context, workers int, sink func(T) error) *Ordered[T] {
	workers = max(workers, 1)
	ctx, cancel := context.WithCancel(ctx)
	o := &Ordered[T]{
		ctx: ctx, cancel: cancel,
		sem:   make(chan struct{}, workers),
		queue: make(chan chan result[T], workers),
		sink:  sink,
		done:  make(chan struct{}),
	}
	go o.drain()
	return o
}

func (o *Ordered[T]) drain() {
	defer close(o.done)
	for fut := range o.queue {
		r := <-fut
		if o.Err() != nil {
			continue
		}
		if r.err == nil {
			r.err = o.sink(r.v)
		}
		if r.err != nil {
			o.fail(r.err)
		}
	}
}

func (o *Ordered[T]) fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.mu.Unlock()
	o.cancel()
}

// Err returns the first error seen so far.
func (o *Ordered[T]) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// Submit queues fn. It blocks while the pipeline is full and returns the
// first error seen so far (from fn, the sink, or the context), after which
// nothing more is run. Submit must not be called concurrently.
func (o *Ordered[T]) Submit(fn func(ctx context.Context) (T, error)) error {
	if err := o.Err(); err != nil {
		return err
	}
	select {
	case o.sem <- struct{}{}:
	case <-o.ctx.Done():
		if err := o.Err(); err != nil {
			return err
		}
		return o.ctx.Err()
	}
	fut := make(chan result[T], 1)
	o.queue <- fut
	go func() {
		defer func() { <-o.sem }()
		if err := o.ctx.Err(); err != nil {
			fut <- result[T]{err: err}
			return
		}
		v, err := fn(o.ctx)
		fut <- result[T]{v, err}
	}()
	return nil
}

// Wait waits for everything submitted to reach the sink and returns the
// first error. Call it once, after the last Submit.
func (o *Ordered[T]) Wait() error {
	close(o.queue)
	<-o.done
	o.cancel()
	if err := o.Err(); err != nil {
		return err
	}
	return nil
}
