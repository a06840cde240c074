package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/audit"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

const p = api.Prefix

func esc(s string) string { return url.PathEscape(s) }

// Health returns the server's health.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.Do(ctx, http.MethodGet, p+"/health", nil, nil, &h)
}

// WhoAmI returns the token's principal.
func (c *Client) WhoAmI(ctx context.Context) (auth.Principal, error) {
	var out auth.Principal
	return out, c.Do(ctx, http.MethodGet, p+"/whoami", nil, nil, &out)
}

// Sites lists sites.
func (c *Client) Sites(ctx context.Context) ([]site.View, error) {
	var out []site.View
	return out, c.Do(ctx, http.MethodGet, p+"/sites", nil, nil, &out)
}

// Site returns one site.
func (c *Client) Site(ctx context.Context, name string) (site.View, error) {
	var out site.View
	return out, c.Do(ctx, http.MethodGet, p+"/sites/"+esc(name), nil, nil, &out)
}

// AddSite registers a site.
func (c *Client) AddSite(ctx context.Context, r api.AddSiteRequest) (site.View, error) {
	var out site.View
	return out, c.Do(ctx, http.MethodPost, p+"/sites", nil, addSiteBody(r), &out)
}

// addSiteBody sends secrets in clear (site.Secret marshals as a
// redaction, which is right everywhere but here).
func addSiteBody(r api.AddSiteRequest) map[string]any {
	body := map[string]any{"name": r.Name, "kind": r.Kind}
	if r.Endpoint != "" {
		body["endpoint"] = r.Endpoint
	}
	if len(r.Settings) > 0 {
		body["settings"] = r.Settings
	}
	if len(r.Secrets) > 0 {
		body["credentials"] = reveal(r.Secrets)
	}
	return body
}

func reveal(s map[string]site.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range s {
		out[k] = v.Reveal()
	}
	return out
}

// SetCredentials replaces a site's credentials.
func (c *Client) SetCredentials(ctx context.Context, name string, secrets map[string]site.Secret) (site.View, error) {
	var out site.View
	return out, c.Do(ctx, http.MethodPut, p+"/sites/"+esc(name)+"/credentials", nil, map[string]any{"credentials": reveal(secrets)}, &out)
}

// RemoveSite unregisters a site.
func (c *Client) RemoveSite(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, p+"/sites/"+esc(name), nil, nil, nil)
}

// TestSite connects to a site.
func (c *Client) TestSite(ctx context.Context, name string) (site.TestResult, error) {
	var out site.TestResult
	return out, c.Do(ctx, http.MethodPost, p+"/sites/"+esc(name)+"/test", nil, nil, &out)
}

// RefreshSite refreshes a site's inventory.
func (c *Client) RefreshSite(ctx context.Context, name string) (site.RefreshResult, error) {
	var out site.RefreshResult
	return out, c.Do(ctx, http.MethodPost, p+"/sites/"+esc(name)+"/refresh", nil, nil, &out)
}

// VMs lists the inventory.
func (c *Client) VMs(ctx context.Context, q service.VMQuery) ([]service.VMRow, error) {
	v := url.Values{}
	if q.Site != "" {
		v.Set("site", string(q.Site))
	}
	if q.Power != "" {
		v.Set("power", string(q.Power))
	}
	if q.Name != "" {
		v.Set("name", q.Name)
	}
	var out []service.VMRow
	return out, c.Do(ctx, http.MethodGet, p+"/vms", v, nil, &out)
}

// VM returns one VM.
func (c *Client) VM(ctx context.Context, s core.SiteName, id core.VMID) (service.VMRow, error) {
	var out service.VMRow
	return out, c.Do(ctx, http.MethodGet, p+"/vms/"+esc(string(s))+"/"+esc(string(id)), nil, nil, &out)
}

// Power changes a VM's power state.
func (c *Client) Power(ctx context.Context, s core.SiteName, id core.VMID, op provider.PowerOp) (core.VM, error) {
	var out core.VM
	return out, c.Do(ctx, http.MethodPost, p+"/vms/"+esc(string(s))+"/"+esc(string(id))+"/power", nil, api.PowerRequest{Op: op}, &out)
}

// Jobs lists jobs.
func (c *Client) Jobs(ctx context.Context, o job.ListOptions) ([]job.Job, error) {
	v := url.Values{}
	if len(o.States) > 0 {
		v.Set("state", strings.Join(o.States, ","))
	}
	if o.Kind != "" {
		v.Set("kind", o.Kind)
	}
	if o.Limit > 0 {
		v.Set("limit", strconv.Itoa(o.Limit))
	}
	var out []job.Job
	return out, c.Do(ctx, http.MethodGet, p+"/jobs", v, nil, &out)
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (job.Job, error) {
	var out job.Job
	return out, c.Do(ctx, http.MethodGet, p+"/jobs/"+esc(id), nil, nil, &out)
}

// Submit starts a job.
func (c *Client) Submit(ctx context.Context, r api.SubmitJobRequest) (job.Job, error) {
	var out job.Job
	return out, c.Do(ctx, http.MethodPost, p+"/jobs", nil, r, &out)
}

// CancelJob cancels a job.
func (c *Client) CancelJob(ctx context.Context, id string) (job.Job, error) {
	var out job.Job
	return out, c.Do(ctx, http.MethodPost, p+"/jobs/"+esc(id)+"/cancel", nil, nil, &out)
}

// RetryJob runs a failed or cancelled job again.
func (c *Client) RetryJob(ctx context.Context, id string) (job.Job, error) {
	var out job.Job
	return out, c.Do(ctx, http.MethodPost, p+"/jobs/"+esc(id)+"/retry", nil, nil, &out)
}

// JobEvents streams a job's events until it finishes.
func (c *Client) JobEvents(ctx context.Context, id string, after int64, fn func(Event) error) error {
	return c.Stream(ctx, p+"/jobs/"+esc(id)+"/events", after, fn)
}

// ConvertImage starts an image conversion job.
func (c *Client) ConvertImage(ctx context.Context, r api.ConvertRequest) (job.Job, error) {
	var out job.Job
	return out, c.Do(ctx, http.MethodPost, p+"/images/convert", nil, r, &out)
}

// Tokens lists tokens.
func (c *Client) Tokens(ctx context.Context) ([]store.Token, error) {
	var out []store.Token
	return out, c.Do(ctx, http.MethodGet, p+"/tokens", nil, nil, &out)
}

// CreateToken creates a token; the answer holds its secret.
func (c *Client) CreateToken(ctx context.Context, name string, role auth.Role) (auth.Created, error) {
	var out auth.Created
	return out, c.Do(ctx, http.MethodPost, p+"/tokens", nil, api.TokenRequest{Name: name, Role: role}, &out)
}

// RevokeToken revokes a token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, p+"/tokens/"+esc(id), nil, nil, nil)
}

// Audit returns audit entries after seq after.
func (c *Client) Audit(ctx context.Context, after int64, limit int) ([]audit.Entry, error) {
	v := url.Values{"after": {strconv.FormatInt(after, 10)}}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	var out []audit.Entry
	return out, c.Do(ctx, http.MethodGet, p+"/audit", v, nil, &out)
}

// VerifyAudit checks the audit chain on the server.
func (c *Client) VerifyAudit(ctx context.Context) (audit.Report, error) {
	var out audit.Report
	return out, c.Do(ctx, http.MethodGet, p+"/audit/verify", nil, nil, &out)
}

// PlanMigration returns the plan of a migration without starting it.
func (c *Client) PlanMigration(ctx context.Context, r migrate.Request) (migrate.Plan, error) {
	var out migrate.Plan
	return out, c.Do(ctx, http.MethodPost, p+"/migrations", nil, api.MigrateRequest{Request: r, DryRun: true}, &out)
}

// Migrate plans a migration and starts its job.
func (c *Client) Migrate(ctx context.Context, r migrate.Request) (api.MigrateAccepted, error) {
	var out api.MigrateAccepted
	return out, c.Do(ctx, http.MethodPost, p+"/migrations", nil, api.MigrateRequest{Request: r}, &out)
}

// Console returns what a VM printed on its console.
func (c *Client) Console(ctx context.Context, s core.SiteName, id core.VMID) (string, error) {
	var out api.ConsoleText
	err := c.Do(ctx, http.MethodGet, p+"/vms/"+esc(string(s))+"/"+esc(string(id))+"/console", nil, nil, &out)
	return out.Text, err
}
