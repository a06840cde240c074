package vmdk

import (
	"container/list"
	"sync"
)

// lru is a small mutex-guarded least-recently-used cache. Values are never
// modified once stored, so callers may use them without the lock.
type lru[V any] struct {
	mu  sync.Mutex
	max int
	m   map[int64]*list.Element
	l   list.List
}

type lruEntry[V any] struct {
	key int64
	val V
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, m: make(map[int64]*list.Element)}
}

func (c *lru[V]) get(key int64) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[key]; ok {
		c.l.MoveToFront(el)
		return el.Value.(*lruEntry[V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[V]) put(key int64, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[key]; ok {
		c.l.MoveToFront(el)
		return
	}
	c.m[key] = c.l.PushFront(&lruEntry[V]{key, val})
	for c.l.Len() > c.max {
		el := c.l.Back()
		c.l.Remove(el)
		delete(c.m, el.Value.(*lruEntry[V]).key)
	}
}
