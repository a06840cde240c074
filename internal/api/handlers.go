package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// MaxBody bounds request bodies.
const MaxBody = 1 << 20

// Request bodies.
type (
	// AddSiteRequest registers a site (admin).
	AddSiteRequest = site.AddRequest
	// CredentialsRequest replaces a site's credentials (admin).
	CredentialsRequest struct {
		Credentials map[string]site.Secret `json:"credentials"`
	}
	// PowerRequest changes a VM's power state.
	PowerRequest struct {
		Op provider.PowerOp `json:"op"`
	}
	// SubmitJobRequest starts a job of a registered kind.
	SubmitJobRequest struct {
		Kind string          `json:"kind"`
		Args json.RawMessage `json:"args"`
	}
	// ConvertRequest converts an image as a job.
	ConvertRequest struct {
		Src       string            `json:"src"`
		SrcFormat string            `json:"src_format,omitempty"`
		Dst       string            `json:"dst"`
		DstFormat string            `json:"dst_format"`
		Options   map[string]string `json:"options,omitempty"`
	}
	// MigrateRequest plans a migration and, unless DryRun, starts it.
	MigrateRequest struct {
		migrate.Request
		DryRun bool `json:"dry_run,omitempty"`
	}
	// MigrateAccepted is a started migration: its plan and its job.
	MigrateAccepted struct {
		Plan migrate.Plan `json:"plan"`
		Job  job.Job      `json:"job"`
	}
	// TokenRequest creates a token.
	TokenRequest struct {
		Name string    `json:"name"`
		Role auth.Role `json:"role"`
	}
)

// Decode reads one JSON value of type T from a request body: at most
// MaxBody bytes, no unknown fields, nothing after the value.
func Decode[T any](r io.Reader) (T, error) {
	var v T
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return v, err
		}
		if errors.Is(err, io.EOF) {
			return v, fmt.Errorf("request body: empty: %w", errs.ErrInvalidArgument)
		}
		return v, fmt.Errorf("request body: %v: %w", err, errs.ErrInvalidArgument)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return v, fmt.Errorf("request body: data after the JSON value: %w", errs.ErrInvalidArgument)
	}
	return v, nil
}

func decode[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	return Decode[T](http.MaxBytesReader(w, r.Body, MaxBody))
}

// ---- meta

// Health is GET /health's answer.
type Health struct {
	Status    string    `json:"status"`
	Version   string    `json:"version"`
	Database  string    `json:"database"`
	Started   time.Time `json:"started"`
	JobKinds  []string  `json:"job_kinds"`
	SiteKinds []string  `json:"site_kinds"`
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	h := Health{Status: "ok", Version: s.o.Version, Database: s.cp.Store.Dialect(), Started: s.started}
	code := http.StatusOK
	if err := s.cp.Store.View(r.Context(), func(tx store.Tx) error { _, err := tx.LastEventSeq(r.Context()); return err }); err != nil {
		h.Status, code = "database unavailable: "+err.Error(), http.StatusServiceUnavailable
	}
	if s.cp.Jobs != nil {
		h.JobKinds = s.cp.Jobs.Registry().Kinds()
	}
	if s.cp.Sites != nil {
		for _, k := range s.cp.Sites.Registry().Names() {
			h.SiteKinds = append(h.SiteKinds, string(k))
		}
	}
	return writeSync(w, code, h)
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPIDoc)
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	return writeSync(w, http.StatusOK, p)
}

// ---- sites

func (s *Server) listSites(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	list, err := s.cp.Sites.List(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []site.View{}
	}
	return writeSync(w, http.StatusOK, list)
}

func (s *Server) addSite(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	req, err := decode[AddSiteRequest](w, r)
	if err != nil {
		return err
	}
	v, err := s.cp.Sites.Add(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", Prefix+"/sites/"+string(v.Name))
	return writeSync(w, http.StatusCreated, v)
}

func (s *Server) getSite(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	v, err := s.cp.Sites.Get(r.Context(), core.SiteName(r.PathValue("name")))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, v)
}

func (s *Server) removeSite(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	if err := s.cp.Sites.Remove(r.Context(), core.SiteName(r.PathValue("name"))); err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, map[string]string{"removed": r.PathValue("name")})
}

func (s *Server) setCredentials(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	req, err := decode[CredentialsRequest](w, r)
	if err != nil {
		return err
	}
	v, err := s.cp.Sites.SetCredentials(r.Context(), core.SiteName(r.PathValue("name")), req.Credentials)
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, v)
}

func (s *Server) testSite(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	res, err := s.cp.Sites.Test(r.Context(), core.SiteName(r.PathValue("name")))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, res)
}

func (s *Server) refreshSite(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	res, err := s.cp.Sites.Refresh(r.Context(), core.SiteName(r.PathValue("name")))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, res)
}

// ---- vms

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	q := r.URL.Query()
	// Records are stored as the JSON we serve: copy them through
	// without decoding (10,000 VMs in well under 100 ms).
	var b bytes.Buffer
	b.WriteString(`{"type":"sync","metadata":[`)
	n := 0
	err := s.cp.ListVMsRaw(r.Context(), service.VMQuery{Site: core.SiteName(q.Get("site")), Power: core.PowerState(q.Get("power")), Name: q.Get("name")},
		func(rec json.RawMessage) error {
			if n > 0 {
				b.WriteByte(',')
			}
			n++
			b.Write(rec)
			return nil
		})
	if err != nil {
		return err
	}
	b.WriteString("]}\n")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(http.StatusOK)
	w.Write(b.Bytes())
	return nil
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	row, err := s.cp.GetVM(r.Context(), core.SiteName(r.PathValue("site")), core.VMID(r.PathValue("id")))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, row)
}

func (s *Server) powerVM(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	req, err := decode[PowerRequest](w, r)
	if err != nil {
		return err
	}
	vm, err := s.cp.Sites.Power(r.Context(), core.SiteName(r.PathValue("site")), core.VMID(r.PathValue("id")), req.Op)
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, vm)
}

// ConsoleText is what a VM printed on its console.
type ConsoleText struct {
	Text string `json:"text"`
}

func (s *Server) consoleVM(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	text, err := s.cp.ConsoleLog(r.Context(), core.SiteName(r.PathValue("site")), core.VMID(r.PathValue("id")))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, ConsoleText{Text: text})
}

// ---- jobs

func intParam(r *http.Request, name string, def int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("query parameter %s=%q: want a non-negative integer: %w", name, v, errs.ErrInvalidArgument)
	}
	return n, nil
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	limit, err := intParam(r, "limit", 100)
	if err != nil {
		return err
	}
	o := job.ListOptions{Kind: r.URL.Query().Get("kind"), Limit: int(min(limit, 10000))}
	if st := r.URL.Query().Get("state"); st != "" {
		o.States = strings.Split(st, ",")
	}
	list, err := s.cp.Jobs.List(r.Context(), o)
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, list)
}

func (s *Server) submitJob(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	req, err := decode[SubmitJobRequest](w, r)
	if err != nil {
		return err
	}
	if req.Kind == "" {
		return fmt.Errorf("job: no kind: %w", errs.ErrInvalidArgument)
	}
	j, err := s.cp.Jobs.Submit(r.Context(), req.Kind, req.Args, &job.SubmitOptions{CreatedBy: p.String()})
	if err != nil {
		return err
	}
	return writeAsync(w, j.ID, j)
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	j, err := s.cp.Jobs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, j)
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	j, err := s.cp.Jobs.Cancel(r.Context(), r.PathValue("id"), p.String())
	if err != nil {
		return err
	}
	return writeAsync(w, j.ID, j)
}

func (s *Server) retryJob(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	j, err := s.cp.Jobs.Retry(r.Context(), r.PathValue("id"), p.String())
	if err != nil {
		return err
	}
	return writeAsync(w, j.ID, j)
}

func (s *Server) convertImage(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	req, err := decode[ConvertRequest](w, r)
	if err != nil {
		return err
	}
	j, err := s.cp.SubmitImageConvert(r.Context(), service.ImageConvertArgs{Src: req.Src, SrcFormat: req.SrcFormat, Dst: req.Dst,
		DstFormat: req.DstFormat, Options: req.Options}, p.String())
	if err != nil {
		return err
	}
	return writeAsync(w, j.ID, j)
}

// ---- migrations

func (s *Server) migrateVM(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
	req, err := decode[MigrateRequest](w, r)
	if err != nil {
		return err
	}
	if req.DryRun {
		plan, err := s.cp.PlanMigration(r.Context(), req.Request)
		if err != nil {
			return err
		}
		return writeSync(w, http.StatusOK, plan)
	}
	plan, j, err := s.cp.SubmitMigration(r.Context(), req.Request, p.String())
	if err != nil {
		return err
	}
	return writeAsync(w, j.ID, MigrateAccepted{Plan: plan, Job: j})
}

// ---- tokens

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	list, err := s.cp.ListTokens(r.Context())
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, list)
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	req, err := decode[TokenRequest](w, r)
	if err != nil {
		return err
	}
	role, err := auth.ParseRole(string(req.Role))
	if err != nil {
		return err
	}
	c, err := s.cp.CreateToken(r.Context(), req.Name, role)
	if err != nil {
		return err
	}
	w.Header().Set("Location", Prefix+"/tokens/"+c.ID)
	w.Header().Set("Cache-Control", "no-store")
	return writeSync(w, http.StatusCreated, c)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	if err := s.cp.RevokeToken(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, map[string]string{"revoked": r.PathValue("id")})
}

// ---- audit

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	after, err := intParam(r, "after", 0)
	if err != nil {
		return err
	}
	limit, err := intParam(r, "limit", 1000)
	if err != nil {
		return err
	}
	list, err := s.cp.Audit(r.Context(), after, int(min(max(limit, 1), 10000)))
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, list)
}

func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	rep, err := s.cp.VerifyAudit(r.Context())
	if err != nil {
		return err
	}
	return writeSync(w, http.StatusOK, rep)
}
