package qcow2

import (
	"container/list"
	"sync"
)

// lru is a small least-recently-used cache, safe for concurrent use.
// Values are shared with callers and must not be modified.
type lru[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   map[K]*list.Element
	l   list.List
}

type lruItem[K comparable, V any] struct {
	k K
	v V
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, m: make(map[K]*list.Element)}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.l.MoveToFront(e)
		return e.Value.(*lruItem[K, V]).v, true
	}
	var zero V
	return zero, false
}

func (c *lru[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.l.MoveToFront(e)
		e.Value.(*lruItem[K, V]).v = v
		return
	}
	c.m[k] = c.l.PushFront(&lruItem[K, V]{k, v})
	for c.l.Len() > c.max {
		e := c.l.Back()
		c.l.Remove(e)
		delete(c.m, e.Value.(*lruItem[K, V]).k)
	}
}
