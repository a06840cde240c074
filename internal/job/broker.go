package job

import (
	"sync"

	"github.com/ferry-project/ferry/internal/store"
)

// Broker fans job events out to subscribers in this process (the API's
// server-sent event streams). Delivery is best effort: a subscriber that
// falls behind loses events, so consumers treat an event as a wake-up and
// read the store (which has every event, from every node) for the truth.
type Broker struct {
	mu   sync.Mutex
	next int
	subs map[int]*subscription
}

type subscription struct {
	job string
	ch  chan store.Event
}

// NewBroker returns an empty broker.
func NewBroker() *Broker { return &Broker{subs: map[int]*subscription{}} }

// Subscribe returns a channel of the events of job id (every job's when id
// is "") and a function that ends the subscription.
func (b *Broker) Subscribe(id string) (<-chan store.Event, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	n := b.next
	s := &subscription{job: id, ch: make(chan store.Event, 64)}
	b.subs[n] = s
	return s.ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[n]; ok {
			delete(b.subs, n)
			close(s.ch)
		}
	}
}

// Publish delivers e to matching subscribers without blocking.
func (b *Broker) Publish(e store.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.subs {
		if s.job != "" && s.job != e.JobID {
			continue
		}
		select {
		case s.ch <- e:
		default:
		}
	}
}
