package service

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/ferry-project/ferry/internal/audit"
	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// ControlPlane holds the control plane's operations: sites and inventory,
// jobs, tokens and the audit log. The REST API calls these (and the CLI
// reaches them through the API); a few offline operations (bootstrap
// token, audit verify) are called by the CLI directly against the data
// directory.
type ControlPlane struct {
	Store  store.Store
	Sites  *site.Manager
	Jobs   *job.Manager
	Logger *slog.Logger
	// Prices price the instance types migrations plan (default the
	// built-in table).
	Prices *pricing.Table

	inv inventoryCache
}

// inventoryCache keeps the whole inventory in memory while the store's
// inventory generation stays the same: listing 10,000 VMs then costs one
// one-row query instead of reading every record.
type inventoryCache struct {
	mu    sync.Mutex
	valid bool
	gen   int64
	rows  []cachedVM // never modified once published
}

type cachedVM struct {
	site  core.SiteName
	power core.PowerState
	name  string
	rec   json.RawMessage
}

// inventory returns every inventory row, from the cache when it is
// current.
func (c *ControlPlane) inventory(ctx context.Context) ([]cachedVM, error) {
	var rows []cachedVM
	err := c.Store.View(ctx, func(tx store.Tx) error {
		gen, err := tx.InventoryGen(ctx)
		if err != nil {
			return err
		}
		c.inv.mu.Lock()
		if c.inv.valid && c.inv.gen == gen {
			rows = c.inv.rows
			c.inv.mu.Unlock()
			return nil
		}
		c.inv.mu.Unlock()
		rows = make([]cachedVM, 0, 1024)
		if err := tx.Inventory(ctx, store.InventoryFilter{}, func(r store.InventoryRecord) error {
			rows = append(rows, cachedVM{site: r.Site, power: r.Power, name: r.Name, rec: r.Record})
			return nil
		}); err != nil {
			return err
		}
		c.inv.mu.Lock()
		c.inv.valid, c.inv.gen, c.inv.rows = true, gen, rows
		c.inv.mu.Unlock()
		return nil
	})
	return rows, err
}

// VMQuery narrows ListVMs; zero values match everything.
type VMQuery struct {
	Site  core.SiteName   `json:"site,omitempty"`
	Power core.PowerState `json:"power,omitempty"`
	// Name is a glob (path.Match syntax) on the VM's name.
	Name string `json:"name,omitempty"`
}

// VMRow is one VM of the inventory with its estimated monthly cost
// (absent when the price table cannot price it).
type VMRow = site.Record

// ListVMsRaw calls fn with each matching inventory record as stored (the
// JSON of a VMRow), ordered by site and name, without decoding it: the
// fast path for serving large inventories.
func (c *ControlPlane) ListVMsRaw(ctx context.Context, q VMQuery, fn func(json.RawMessage) error) error {
	if q.Name != "" {
		if _, err := path.Match(q.Name, ""); err != nil {
			return fmt.Errorf("name pattern %q: %v: %w", q.Name, err, errs.ErrInvalidArgument)
		}
	}
	rows, err := c.inventory(ctx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if (q.Site != "" && r.site != q.Site) || (q.Power != "" && r.power != q.Power) {
			continue
		}
		if q.Name != "" {
			if ok, _ := path.Match(q.Name, r.name); !ok {
				continue
			}
		}
		if err := fn(r.rec); err != nil {
			return err
		}
	}
	return nil
}

// ListVMs returns the inventory across sites, ordered by site and name.
func (c *ControlPlane) ListVMs(ctx context.Context, q VMQuery) ([]VMRow, error) {
	out := []VMRow{}
	err := c.ListVMsRaw(ctx, q, func(b json.RawMessage) error {
		var row VMRow
		if err := json.Unmarshal(b, &row); err != nil {
			return fmt.Errorf("inventory: %v: %w", err, errs.ErrCorrupt)
		}
		out = append(out, row)
		return nil
	})
	return out, err
}

// GetVM returns one VM of the inventory.
func (c *ControlPlane) GetVM(ctx context.Context, s core.SiteName, id core.VMID) (VMRow, error) {
	var row VMRow
	found := false
	err := c.Store.View(ctx, func(tx store.Tx) error {
		return tx.Inventory(ctx, store.InventoryFilter{Site: s, VMID: id}, func(r store.InventoryRecord) error {
			found = true
			if err := json.Unmarshal(r.Record, &row); err != nil {
				return fmt.Errorf("inventory %s/%s: %v: %w", r.Site, r.VMID, err, errs.ErrCorrupt)
			}
			return nil
		})
	})
	if err == nil && !found {
		err = fmt.Errorf("VM %s/%s: %w", s, id, errs.ErrNotFound)
	}
	return row, err
}

// CreateToken creates an API token; the result holds its secret, shown
// once.
func (c *ControlPlane) CreateToken(ctx context.Context, name string, role auth.Role) (auth.Created, error) {
	var out auth.Created
	err := c.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		out, err = auth.Create(ctx, tx, name, role, time.Now())
		return err
	})
	return out, err
}

// ListTokens lists tokens (never their secrets).
func (c *ControlPlane) ListTokens(ctx context.Context) ([]store.Token, error) {
	var out []store.Token
	err := c.Store.View(ctx, func(tx store.Tx) error {
		var err error
		out, err = tx.Tokens(ctx)
		return err
	})
	if out == nil {
		out = []store.Token{}
	}
	return out, err
}

// RevokeToken revokes a token.
func (c *ControlPlane) RevokeToken(ctx context.Context, id string) error {
	return c.Store.Update(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, id, time.Now()) })
}

// BootstrapToken creates an admin token when the store has no token yet,
// and records it in the audit log. It returns created=false (and no
// token) when tokens exist, unless force is set.
func BootstrapToken(ctx context.Context, st store.Store, name string, force bool, actor string) (auth.Created, bool, error) {
	var out auth.Created
	created := false
	err := st.Update(ctx, func(tx store.Tx) error {
		toks, err := tx.Tokens(ctx)
		if err != nil {
			return err
		}
		if len(toks) > 0 && !force {
			return nil
		}
		if out, err = auth.Create(ctx, tx, name, auth.Admin, time.Now()); err != nil {
			return err
		}
		created = true
		detail, _ := json.Marshal(map[string]string{"token_id": out.ID, "role": string(auth.Admin)})
		_, err = audit.Append(ctx, tx, audit.Entry{Actor: actor, Action: "token.bootstrap", Target: "tokens/" + out.ID, Outcome: "ok", Detail: detail})
		return err
	})
	return out, created, err
}

// Audit returns audit entries after seq after.
func (c *ControlPlane) Audit(ctx context.Context, after int64, limit int) ([]audit.Entry, error) {
	out, err := audit.List(ctx, c.Store, after, limit)
	if out == nil {
		out = []audit.Entry{}
	}
	return out, err
}

// VerifyAudit checks the audit log's hash chain.
func (c *ControlPlane) VerifyAudit(ctx context.Context) (audit.Report, error) {
	return audit.Verify(ctx, c.Store)
}

// SubmitImageConvert queues an image.convert job.
func (c *ControlPlane) SubmitImageConvert(ctx context.Context, a ImageConvertArgs, by string) (job.Job, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return job.Job{}, err
	}
	return c.Jobs.Submit(ctx, ImageConvertKind, b, &job.SubmitOptions{CreatedBy: by})
}

// PlanMigration checks a migration and returns its plan (a dry run).
func (c *ControlPlane) PlanMigration(ctx context.Context, r migrate.Request) (migrate.Plan, error) {
	pl := migrate.Planner{Sites: c.Sites, Prices: c.Prices}
	return pl.Plan(ctx, r)
}

// SubmitMigration plans a migration and queues the job that carries the
// plan out.
func (c *ControlPlane) SubmitMigration(ctx context.Context, r migrate.Request, by string) (migrate.Plan, job.Job, error) {
	plan, err := c.PlanMigration(ctx, r)
	if err != nil {
		return plan, job.Job{}, err
	}
	b, err := json.Marshal(migrate.State{Plan: plan})
	if err != nil {
		return plan, job.Job{}, err
	}
	j, err := c.Jobs.Submit(ctx, migrate.KindName, b, &job.SubmitOptions{CreatedBy: by, Planned: true})
	return plan, j, err
}

// ConsoleLog returns what a VM printed on its console, where the site
// keeps it (XenServer lab, EC2 GetConsoleOutput).
func (c *ControlPlane) ConsoleLog(ctx context.Context, s core.SiteName, id core.VMID) (string, error) {
	p, err := c.Sites.Provider(ctx, s)
	if err != nil {
		return "", err
	}
	cl, ok := p.(provider.Consoler)
	if !ok || !p.Info().Capabilities.ConsoleLog {
		return "", fmt.Errorf("site %s does not keep console output: %w", s, errs.ErrUnimplemented)
	}
	return cl.ConsoleLog(ctx, id)
}
