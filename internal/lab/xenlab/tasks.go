package xenlab

import (
	"context"
	"errors"
	"fmt"
	"html"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// newTaskLocked creates a pending task owned by session.
func (s *Server) newTaskLocked(label, desc, session string) *object {
	host := s.masterLocked()
	hostRef := nullRef
	if host != nil {
		hostRef = host.Ref
	}
	t := s.db.insert("task", map[string]any{
		"name_label":         label,
		"name_description":   desc,
		"status":             "pending",
		"progress":           0.0,
		"created":            xapiTime(time.Now()),
		"finished":           "19700101T00:00:00Z",
		"resident_on":        hostRef,
		"allowed_operations": []any{"cancel"},
		"result":             "",
		"error_info":         []any{},
		"type":               "<none/>",
		"backtrace":          "()",
	})
	if sess := s.db.objs[session]; sess != nil {
		s.db.addRef(sess, "tasks", t.Ref)
	}
	return t
}

// startTask runs h in the background for an Async call and returns the
// task's reference at once.
func (s *Server) startTask(c *call, label string, h handlerFunc) (string, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return "", internalErr("the lab is shutting down")
	}
	t := s.newTaskLocked(label, "", c.session)
	ctx, cancel := context.WithCancel(s.ctx)
	s.tasks[t.Ref] = cancel
	if err := s.saveLocked(); err != nil {
		s.mu.Unlock()
		cancel()
		return "", err
	}
	s.wg.Add(1)
	s.mu.Unlock()
	c.ctx, c.task = ctx, t.Ref
	c.progress = s.taskProgress(t.Ref)
	go func() {
		defer s.wg.Done()
		defer cancel()
		res, err := h(c)
		s.finishTask(t.Ref, res, err, ctx)
	}()
	return t.Ref, nil
}

// taskProgress returns a function that sets a task's progress, throttled to
// steps of 1 %.
func (s *Server) taskProgress(ref string) func(float64) {
	var mu sync.Mutex
	last := -1.0
	return func(p float64) {
		p = min(max(p, 0), 0.99)
		mu.Lock()
		if p-last < 0.01 {
			mu.Unlock()
			return
		}
		last = p
		mu.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		if t := s.db.objs[ref]; t != nil && t.Class == "task" && t.str("status") == "pending" {
			s.db.set(t, "progress", p)
		}
	}
}

// finishTask records the outcome of a task.
func (s *Server) finishTask(ref string, res any, err error, ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tasks, ref)
	t := s.db.objs[ref]
	if t == nil || t.Class != "task" {
		return
	}
	now := xapiTime(time.Now())
	switch {
	case err == nil:
		s.db.set(t, "status", "success", "progress", 1.0, "finished", now, "allowed_operations", []any{}, "result", xmlrpcValue(res))
	case t.str("status") == "cancelling" || (errors.Is(err, context.Canceled) && ctx.Err() != nil):
		s.db.set(t, "status", "cancelled", "progress", 1.0, "finished", now, "allowed_operations", []any{},
			"error_info", []any{errTaskCancelled, ref})
	default:
		ae := asAPIError(err)
		info := []any{ae.Code}
		for _, p := range ae.Params {
			info = append(info, p)
		}
		s.db.set(t, "status", "failure", "progress", 1.0, "finished", now, "allowed_operations", []any{}, "error_info", info)
	}
	s.saveLocked()
}

// failTaskLocked marks a task (from an HTTP handler's task_id) failed.
func (s *Server) failTaskLocked(ref string, ae *apiError) {
	t := s.db.objs[ref]
	if t == nil || t.Class != "task" || t.str("status") != "pending" {
		return
	}
	info := []any{ae.Code}
	for _, p := range ae.Params {
		info = append(info, p)
	}
	s.db.set(t, "status", "failure", "progress", 1.0, "finished", xapiTime(time.Now()), "allowed_operations", []any{}, "error_info", info)
}

// completeTaskLocked marks a task successful with a result.
func (s *Server) completeTaskLocked(ref string, res any) {
	t := s.db.objs[ref]
	if t == nil || t.Class != "task" || t.str("status") != "pending" {
		return
	}
	s.db.set(t, "status", "success", "progress", 1.0, "finished", xapiTime(time.Now()), "allowed_operations", []any{}, "result", xmlrpcValue(res))
}

func (s *Server) taskCancel(c *call) (any, error) {
	ref := c.args[0].(string)
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.db.get("task", ref)
	if err != nil {
		return nil, err
	}
	if t.str("status") != "pending" {
		return nil, apiErr(errOperationNotAllowed, fmt.Sprintf("task %s is %s, not pending", ref, t.str("status")))
	}
	s.db.set(t, "status", "cancelling")
	if cancel := s.tasks[ref]; cancel != nil {
		cancel()
	} else {
		// a task created by task.create or an HTTP transfer: the
		// transfer checks the status; nothing else runs it
		s.db.set(t, "status", "cancelled", "progress", 1.0, "finished", xapiTime(time.Now()),
			"allowed_operations", []any{}, "error_info", []any{errTaskCancelled, ref})
	}
	return "", s.saveLocked()
}

func (s *Server) taskCreate(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.newTaskLocked(c.args[0].(string), c.args[1].(string), c.session)
	return t.Ref, s.saveLocked()
}

func (s *Server) taskDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.db.get("task", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if cancel := s.tasks[t.Ref]; cancel != nil {
		cancel()
	}
	if sess := s.db.objs[c.session]; sess != nil {
		s.db.delRef(sess, "tasks", t.Ref)
	}
	s.db.remove(t)
	return "", s.saveLocked()
}

// taskCancelled reports whether a task was cancelled (for HTTP transfers
// following a task_id).
func (s *Server) taskCancelledLocked(ref string) bool {
	t := s.db.objs[ref]
	return t != nil && t.Class == "task" && (t.str("status") == "cancelling" || t.str("status") == "cancelled")
}

// xmlrpcValue encodes a call's result the way xapi stores it in
// task.result: an XML-RPC <value> (Xmlrpc.to_string), "" for void.
func xmlrpcValue(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok && s == "" {
		return ""
	}
	var b strings.Builder
	writeXMLValue(&b, v)
	return b.String()
}

func writeXMLValue(b *strings.Builder, v any) {
	b.WriteString("<value>")
	switch x := v.(type) {
	case string:
		b.WriteString(html.EscapeString(x))
	case bool:
		if x {
			b.WriteString("<boolean>1</boolean>")
		} else {
			b.WriteString("<boolean>0</boolean>")
		}
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case float64:
		b.WriteString("<double>" + strconv.FormatFloat(x, 'g', -1, 64) + "</double>")
	case []any:
		b.WriteString("<array><data>")
		for _, e := range x {
			writeXMLValue(b, e)
		}
		b.WriteString("</data></array>")
	case []string:
		b.WriteString("<array><data>")
		for _, e := range x {
			writeXMLValue(b, e)
		}
		b.WriteString("</data></array>")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("<struct>")
		for _, k := range keys {
			b.WriteString("<member><name>" + html.EscapeString(k) + "</name>")
			writeXMLValue(b, x[k])
			b.WriteString("</member>")
		}
		b.WriteString("</struct>")
	default:
		b.WriteString(html.EscapeString(fmt.Sprint(x)))
	}
	b.WriteString("</value>")
}
