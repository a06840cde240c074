package xenlab

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxEventWait bounds an event.from timeout.
const maxEventWait = 24 * time.Hour

type subscription struct {
	all   bool
	class string // lower case
	ref   string // "" for the whole class
}

func parseSubscriptions(classes []any) ([]subscription, error) {
	var out []subscription
	for _, c := range classes {
		x := c.(string)
		if x == "*" {
			out = append(out, subscription{all: true})
			continue
		}
		cls, ref, _ := strings.Cut(x, "/")
		if cls == "" {
			return nil, apiErr(errEventSubscription, x)
		}
		out = append(out, subscription{class: strings.ToLower(cls), ref: ref})
	}
	return out, nil
}

func matches(subs []subscription, class, ref string) bool {
	lc := strings.ToLower(class)
	for _, s := range subs {
		if s.all || (s.class == lc && (s.ref == "" || s.ref == ref)) {
			return true
		}
	}
	return false
}

// parseToken reads an event.from token: "" (from the beginning) or the
// "%020d,%020d" pair xapi hands out.
func parseToken(tok string) (int64, error) {
	if tok == "" {
		return 0, nil
	}
	a, _, ok := strings.Cut(tok, ",")
	if !ok {
		return 0, apiErr(errEventToken, tok)
	}
	n, err := strconv.ParseInt(a, 10, 64)
	if err != nil || n < 0 {
		return 0, apiErr(errEventToken, tok)
	}
	return n, nil
}

func formatToken(gen int64) string { return fmt.Sprintf("%020d,%020d", gen, 0) }

// eventFrom is event.from(classes, token, timeout): the changes to the
// subscribed objects since token, waiting up to timeout seconds for one.
// An empty token returns every subscribed object as an "add".
func (s *Server) eventFrom(c *call) (any, error) {
	subs, err := parseSubscriptions(c.args[0].([]any))
	if err != nil {
		return nil, err
	}
	from, err := parseToken(c.args[1].(string))
	if err != nil {
		return nil, err
	}
	timeout := c.args[2].(float64)
	wait := maxEventWait
	if !math.IsNaN(timeout) && timeout < maxEventWait.Seconds() {
		wait = time.Duration(max(timeout, 0) * float64(time.Second))
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		events, gen := s.collectEventsLocked(subs, from)
		notify := s.db.notify
		if len(events) > 0 {
			res := s.eventBatchLocked(events, gen)
			s.mu.Unlock()
			return res, nil
		}
		s.mu.Unlock()
		select {
		case <-notify:
			continue
		case <-deadline.C:
		case <-c.ctx.Done():
		case <-s.ctx.Done():
		}
		s.mu.Lock()
		res := s.eventBatchLocked(nil, s.db.gen)
		s.mu.Unlock()
		return res, nil
	}
}

type pendingEvent struct {
	gen   int64
	class string
	ref   string
	op    string
	obj   *object
}

func (s *Server) collectEventsLocked(subs []subscription, from int64) ([]pendingEvent, int64) {
	var evs []pendingEvent
	for _, o := range s.db.objs {
		if o.Modified <= from || !matches(subs, o.Class, o.Ref) {
			continue
		}
		op := "mod"
		if o.Created > from {
			op = "add"
		}
		evs = append(evs, pendingEvent{gen: o.Modified, class: o.Class, ref: o.Ref, op: op, obj: o})
	}
	for _, t := range s.db.tombs {
		if t.Gen > from && matches(subs, t.Class, t.Ref) {
			evs = append(evs, pendingEvent{gen: t.Gen, class: t.Class, ref: t.Ref, op: "del"})
		}
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].gen < evs[j].gen })
	return evs, s.db.gen
}

// eventBatchLocked builds event.from's result: events (class lower case,
// the record as snapshot except for deletions), valid_ref_counts of every
// class, and the next token.
func (s *Server) eventBatchLocked(evs []pendingEvent, gen int64) map[string]any {
	now := xapiTime(time.Now())
	list := make([]any, 0, len(evs))
	for _, e := range evs {
		ev := map[string]any{
			"id":        strconv.FormatInt(e.gen, 10),
			"timestamp": now,
			"class":     strings.ToLower(e.class),
			"operation": e.op,
			"ref":       e.ref,
		}
		if e.obj != nil {
			rec := s.recordLocked(e.obj)
			ev["snapshot"] = rec
			ev["obj_uuid"] = rec["uuid"]
		}
		list = append(list, ev)
	}
	counts := map[string]any{}
	for cls, m := range s.db.byClass {
		if len(m) > 0 {
			counts[strings.ToLower(cls)] = int64(len(m))
		}
	}
	return map[string]any{"events": list, "valid_ref_counts": counts, "token": formatToken(gen)}
}

func (s *Server) eventCurrentID(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strconv.FormatInt(s.db.gen, 10), nil
}

// eventInject is event.inject(class, ref): a "mod" event for the object;
// it returns the token just before it.
func (s *Server) eventInject(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cls, ref := c.args[0].(string), c.args[1].(string)
	o := s.db.objs[ref]
	if o == nil || !strings.EqualFold(o.Class, cls) {
		return nil, apiErr(errHandleInvalid, cls, ref)
	}
	tok := formatToken(s.db.gen)
	s.db.touch(o)
	return tok, s.saveLocked()
}
