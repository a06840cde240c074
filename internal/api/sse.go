package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

// jobEvents streams one job's events as server-sent events, from the first
// (or after Last-Event-ID / ?after=) until the job finishes.
func (s *Server) jobEvents(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	id := r.PathValue("id")
	if _, err := s.cp.Jobs.Get(r.Context(), id); err != nil {
		return err
	}
	after, err := lastEventID(r, 0)
	if err != nil {
		return err
	}
	return s.stream(w, r, id, after)
}

// allEvents streams every job's events from now (or after Last-Event-ID /
// ?after=) until the client leaves.
func (s *Server) allEvents(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	var now int64
	if err := s.cp.Store.View(r.Context(), func(tx store.Tx) error {
		var err error
		now, err = tx.LastEventSeq(r.Context())
		return err
	}); err != nil {
		return err
	}
	after, err := lastEventID(r, now)
	if err != nil {
		return err
	}
	return s.stream(w, r, "", after)
}

func lastEventID(r *http.Request, def int64) (int64, error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("after")
	}
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("event position %q: %w", v, errs.ErrInvalidArgument)
	}
	return n, nil
}

// stream writes events after seq after. The store is the source (it has
// every node's events, in order); the broker only wakes the stream early,
// and a poll catches events from other nodes.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, jobID string, after int64) error {
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("event stream: response cannot be flushed: %w", errs.ErrUnimplemented)
	}
	ctx := r.Context()
	wake, unsubscribe := s.cp.Jobs.Broker().Subscribe(jobID)
	defer unsubscribe()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": ferry event stream\n\n")
	flusher.Flush()
	poll := time.NewTicker(s.o.EventPoll)
	defer poll.Stop()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		evs, err := s.cp.Jobs.Events(ctx, jobID, after, 500)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(w, "event: error\ndata: %q\n\n", err.Error())
			flusher.Flush()
			return nil
		}
		done := false
		for _, e := range evs {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, b)
			after = e.Seq
			if jobID != "" && e.Kind == "finished" {
				done = true
			}
		}
		if len(evs) > 0 {
			flusher.Flush()
		}
		if done {
			return nil
		}
		if len(evs) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-poll.C:
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
			flusher.Flush()
		}
	}
}
