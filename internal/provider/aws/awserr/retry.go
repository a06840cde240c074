package awserr

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential backoff with full jitter: before attempt n
// (counting from 1 for the first retry) it waits a uniformly random time in
// [0, min(Max, Base·2^(n-1))).
type Backoff struct {
	// Attempts bounds the tries, the first included; 0 means 8.
	Attempts int
	// Base is the first retry's ceiling; 0 means 200 ms.
	Base time.Duration
	// Max caps every wait; 0 means 20 s.
	Max time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Attempts <= 0 {
		b.Attempts = 8
	}
	if b.Base <= 0 {
		b.Base = 200 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 20 * time.Second
	}
	return b
}

// Delay returns the wait before retry n (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	b = b.withDefaults()
	ceil := b.Max
	if n < 32 {
		if c := b.Base << (n - 1); c > 0 && c < ceil {
			ceil = c
		}
	}
	return rand.N(ceil) + 1
}

// Do calls fn until it succeeds, returns an error that is not Retryable,
// or the attempts run out; it waits Delay between attempts and gives up at
// once when ctx is done. The error returned is classified.
func (b Backoff) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	b = b.withDefaults()
	for n := 1; ; n++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !Retryable(err) || n >= b.Attempts {
			return Classify(err)
		}
		t := time.NewTimer(b.Delay(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Poll calls check until it reports done or fails, waiting between calls
// with exponential backoff from every up to max (no jitter needed: one
// poller per object); it gives up when ctx is done.
func Poll(ctx context.Context, every, max time.Duration, check func(ctx context.Context) (done bool, err error)) error {
	if every <= 0 {
		every = time.Second
	}
	if max < every {
		max = every
	}
	wait := every
	for {
		done, err := check(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, max)
	}
}
