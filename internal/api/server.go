// Package api is ferry's REST API, version 1, under /api/v1.
//
// Every response is one of three shapes (lxd's REST conventions):
//
//	sync:  200/201 {"type": "sync", "metadata": ...}
//	async: 202 {"type": "async", "operation": "/api/v1/jobs/ID", "metadata": job} + Location header
//	error: 4xx/5xx {"type": "error", "error": {"code": "not_found", "message": "..."}}
//
// Operations that take longer than a request should (image conversion,
// later migrations) start a job and answer async; GET the Location, or
// stream /api/v1/jobs/{id}/events, to follow it.
//
// Requests carry "Authorization: Bearer ferry_..." tokens; the two event
// streams also take ?access_token=ferry_... for browsers' EventSource. Each route needs
// a role (viewer for reads, operator for operations, admin for tokens and
// site credentials); a missing or unknown token is 401, a token without
// the role 403. Every mutating request, allowed or not, is appended to the
// hash-chained audit log. The routes are described by the OpenAPI 3
// document served at /api/v1/openapi.json, which a test holds to the
// router. The web UI (internal/web) is served at /.
package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/audit"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/metrics"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/web"
)

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the API's OpenAPI 3 document.
func OpenAPI() []byte { return openAPIDoc }

// Prefix is the API's path prefix.
const Prefix = "/api/v1"

// Options tune a Server.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	Version string
	// EventPoll is how often event streams look for events written by
	// other nodes (default 1 s).
	EventPoll time.Duration
	// NoUI leaves the web UI (internal/web) off /.
	NoUI bool
}

// Server serves the API.
type Server struct {
	cp      *service.ControlPlane
	o       Options
	logger  *slog.Logger
	mux     *http.ServeMux
	routes  []Route
	started time.Time
}

// Route is one API route: what the OpenAPI document must describe.
type Route struct {
	Method string
	// Pattern is the path with {parameters}, as in the OpenAPI document.
	Pattern string
	// Role is the least role allowed; "" means no token is needed.
	Role auth.Role
	// QueryToken lets the token come as ?access_token= when the request
	// has no Authorization header: only for the server-sent event
	// streams, which browsers open with EventSource (it cannot send
	// headers).
	QueryToken bool
	h          handler
}

// handler serves one request for principal p. It returns the error to
// send, or nil when it wrote a response.
type handler func(w http.ResponseWriter, r *http.Request, p auth.Principal) error

// New returns a Server over cp.
func New(cp *service.ControlPlane, o *Options) *Server {
	s := &Server{cp: cp, mux: http.NewServeMux(), started: time.Now()}
	if o != nil {
		s.o = *o
	}
	if s.o.Logger == nil {
		s.o.Logger = slog.New(slog.DiscardHandler)
	}
	if s.o.EventPoll <= 0 {
		s.o.EventPoll = time.Second
	}
	s.logger = s.o.Logger
	s.routes = s.table()
	for _, rt := range s.routes {
		s.mux.Handle(rt.Method+" "+rt.Pattern, s.wrap(rt))
	}
	s.mux.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("no route %s %s: %w", r.Method, r.URL.Path, errs.ErrNotFound))
	})
	if s.o.Metrics != nil {
		s.mux.Handle("GET /metrics", s.o.Metrics.Handler())
	}
	if !s.o.NoUI {
		s.mux.Handle("/", web.Handler())
	}
	return s
}

// Handler is the server's HTTP handler (the API, /metrics and the web UI
// at /).
func (s *Server) Handler() http.Handler { return s.mux }

// Routes lists the API's routes.
func (s *Server) Routes() []Route { return s.routes }

// table is every route.
func (s *Server) table() []Route {
	const v, o, a = auth.Viewer, auth.Operator, auth.Admin
	p := func(m, path string, role auth.Role, h handler) Route {
		return Route{Method: m, Pattern: Prefix + path, Role: role, h: h}
	}
	sse := func(rt Route) Route { rt.QueryToken = true; return rt }
	return []Route{
		p("GET", "/health", "", s.health),
		p("GET", "/openapi.json", "", s.openapi),
		p("GET", "/whoami", v, s.whoami),

		p("GET", "/sites", v, s.listSites),
		p("POST", "/sites", a, s.addSite),
		p("GET", "/sites/{name}", v, s.getSite),
		p("DELETE", "/sites/{name}", a, s.removeSite),
		p("PUT", "/sites/{name}/credentials", a, s.setCredentials),
		p("POST", "/sites/{name}/test", o, s.testSite),
		p("POST", "/sites/{name}/refresh", o, s.refreshSite),

		p("GET", "/vms", v, s.listVMs),
		p("GET", "/vms/{site}/{id}", v, s.getVM),
		p("POST", "/vms/{site}/{id}/power", o, s.powerVM),
		p("GET", "/vms/{site}/{id}/console", v, s.consoleVM),

		p("GET", "/jobs", v, s.listJobs),
		p("POST", "/jobs", o, s.submitJob),
		p("GET", "/jobs/{id}", v, s.getJob),
		p("POST", "/jobs/{id}/cancel", o, s.cancelJob),
		p("POST", "/jobs/{id}/retry", o, s.retryJob),
		sse(p("GET", "/jobs/{id}/events", v, s.jobEvents)),
		sse(p("GET", "/events", v, s.allEvents)),

		p("POST", "/images/convert", o, s.convertImage),

		p("POST", "/migrations", o, s.migrateVM),

		p("GET", "/tokens", a, s.listTokens),
		p("POST", "/tokens", a, s.createToken),
		p("DELETE", "/tokens/{id}", a, s.revokeToken),

		p("GET", "/audit", v, s.listAudit),
		p("GET", "/audit/verify", v, s.verifyAudit),
	}
}

// statusWriter remembers the status code.
type statusWriter struct {
	http.ResponseWriter
	code int
	err  error
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) wrap(rt Route) http.Handler {
	mutating := rt.Method != http.MethodGet && rt.Method != http.MethodHead
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		var p auth.Principal
		err := s.authorize(r, rt, &p)
		if err == nil {
			err = rt.h(w, r, p)
		}
		if err != nil {
			w.err = err
			if w.code == 0 {
				writeError(w, err)
			}
		}
		if mutating {
			s.audit(r, rt, p, w)
		}
		if s.o.Metrics != nil {
			s.o.Metrics.ObserveRequest(rt.Method, rt.Pattern, w.code, time.Since(start))
		}
	})
}

func (s *Server) authorize(r *http.Request, rt Route, p *auth.Principal) error {
	if rt.Role == "" {
		return nil
	}
	header := r.Header.Get("Authorization")
	if header == "" && rt.QueryToken {
		if tok := r.URL.Query().Get("access_token"); tok != "" {
			header = "Bearer " + tok
		}
	}
	got, err := auth.Authenticate(r.Context(), s.cp.Store, header)
	if err != nil {
		return err
	}
	*p = got
	if !got.Role.Allows(rt.Role) {
		return fmt.Errorf("%s %s needs role %s; token %s has %s: %w", rt.Method, rt.Pattern, rt.Role, got.TokenID, got.Role, errs.ErrPermissionDenied)
	}
	return nil
}

// audit records a mutating request: who, what, on which object, when,
// with what outcome.
func (s *Server) audit(r *http.Request, rt Route, p auth.Principal, w *statusWriter) {
	actor := p.String()
	if actor == "" {
		actor = "anonymous"
	}
	outcome := fmt.Sprintf("%d", w.code)
	detail := map[string]any{"remote": r.RemoteAddr}
	if w.err != nil {
		detail["error"] = w.err.Error()
		outcome += " " + errorCode(w.err)
	}
	b, _ := json.Marshal(detail)
	ctx := context.WithoutCancel(r.Context())
	if _, err := audit.Record(ctx, s.cp.Store, audit.Entry{Actor: actor, Action: rt.Method + " " + rt.Pattern, Target: r.URL.Path, Outcome: outcome, Detail: b}); err != nil {
		s.logger.Error("audit log: append failed", "err", err, "action", rt.Method+" "+rt.Pattern)
	}
}

// ---- responses

type syncBody struct {
	Type     string `json:"type"`
	Metadata any    `json:"metadata"`
}

type asyncBody struct {
	Type      string `json:"type"`
	Operation string `json:"operation"`
	Metadata  any    `json:"metadata"`
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Type  string      `json:"type"`
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is an error's code and message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

func writeSync(w http.ResponseWriter, code int, v any) error {
	writeJSON(w, code, syncBody{Type: "sync", Metadata: v})
	return nil
}

func writeAsync(w http.ResponseWriter, jobID string, v any) error {
	op := Prefix + "/jobs/" + jobID
	w.Header().Set("Location", op)
	writeJSON(w, http.StatusAccepted, asyncBody{Type: "async", Operation: op, Metadata: v})
	return nil
}

// Status maps an error to its HTTP status: the one place internal/errs
// codes become statuses.
func Status(err error) int {
	if errors.Is(err, auth.ErrUnauthenticated) {
		return http.StatusUnauthorized
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return http.StatusRequestEntityTooLarge
	}
	switch errs.CodeOf(err) {
	case errs.NotFound:
		return http.StatusNotFound
	case errs.AlreadyExists, errs.Conflict, errs.FailedPrecondition:
		return http.StatusConflict
	case errs.InvalidArgument, errs.Corrupt:
		return http.StatusBadRequest
	case errs.PermissionDenied:
		return http.StatusForbidden
	case errs.Unimplemented:
		return http.StatusNotImplemented
	case errs.Unavailable:
		return http.StatusServiceUnavailable
	case errs.Canceled:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// errorCode is the error's code as sent: snake_case of the errs code.
func errorCode(err error) string {
	if errors.Is(err, auth.ErrUnauthenticated) {
		return "unauthenticated"
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return "invalid_argument"
	}
	c := errs.CodeOf(err)
	switch c {
	case errs.Unimplemented:
		return "unimplemented"
	case errs.Corrupt:
		return "invalid_argument"
	case errs.Unknown:
		return "internal"
	}
	return strings.ReplaceAll(c.String(), " ", "_")
}

func writeError(w http.ResponseWriter, err error) {
	code := Status(err)
	msg := err.Error()
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
	}
	writeJSON(w, code, ErrorBody{Type: "error", Error: ErrorDetail{Code: errorCode(err), Message: msg}})
}
