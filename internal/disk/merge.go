package disk

// Merger joins adjacent extents of one kind before handing them to yield,
// so that formats can report per-cluster or per-grain runs and still
// satisfy Image.Extents' "merged" promise.
type Merger struct {
	yield func(Extent, error) bool
	pend  Extent
	done  bool
}

// NewMerger returns a Merger over yield.
func NewMerger(yield func(Extent, error) bool) *Merger { return &Merger{yield: yield} }

// Push adds e, which must follow the previous extent. It reports false once
// the consumer has stopped; the caller must then stop too.
func (m *Merger) Push(e Extent) bool {
	if m.done {
		return false
	}
	if e.Len <= 0 {
		return true
	}
	if m.pend.Len > 0 && m.pend.Kind == e.Kind && m.pend.End() == e.Off {
		m.pend.Len += e.Len
		return true
	}
	if m.pend.Len > 0 && !m.yield(m.pend, nil) {
		m.done = true
		return false
	}
	m.pend = e
	return true
}

// Flush hands over the pending extent. Call it once at the end, unless
// Push reported false.
func (m *Merger) Flush() {
	if !m.done && m.pend.Len > 0 {
		m.yield(m.pend, nil)
	}
	m.done = true
}
