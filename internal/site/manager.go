package site

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/store"
)

// Record is an inventory row's document: the VM as its site reports it,
// plus what the control plane knows about where it runs.
type Record struct {
	core.VM
	Region string `json:"region,omitempty"`
	// MonthlyCost is the estimated monthly cost from the price table,
	// computed when the record is written; absent when it cannot be
	// priced.
	MonthlyCost *float64 `json:"monthly_cost,omitempty"`
}

// Health is the outcome of a site's last inventory refresh.
type Health struct {
	OK          bool      `json:"ok"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	VMs         int       `json:"vms"`
	Error       string    `json:"error,omitempty"`
}

// View is a site as users see it: settings, the names (never the values)
// of its credentials, and its health.
type View struct {
	Name        core.SiteName     `json:"name"`
	Kind        provider.Kind     `json:"kind"`
	Endpoint    string            `json:"endpoint,omitempty"`
	Settings    map[string]string `json:"settings,omitempty"`
	Credentials []string          `json:"credentials,omitempty"`
	Created     time.Time         `json:"created"`
	Updated     time.Time         `json:"updated"`
	Health      *Health           `json:"health,omitempty"`
}

// Options tune a Manager.
type Options struct {
	Logger *slog.Logger
	// Prices estimates inventory costs (default: the built-in table).
	Prices *pricing.Table
}

// Manager keeps the registered sites, their connections and the
// inventory.
type Manager struct {
	st     store.Store
	reg    *Registry
	sealer *Sealer
	logger *slog.Logger
	prices *pricing.Table

	mu       sync.Mutex
	conns    map[core.SiteName]provider.Provider
	health   map[core.SiteName]Health
	watchers map[core.SiteName]*watcher
	kick     chan struct{}
}

// NewManager returns a Manager over st; credentials are sealed with
// sealer.
func NewManager(st store.Store, reg *Registry, sealer *Sealer, o *Options) *Manager {
	logger := slog.New(slog.DiscardHandler)
	if o != nil && o.Logger != nil {
		logger = o.Logger
	}
	prices := pricing.Default()
	if o != nil && o.Prices != nil {
		prices = o.Prices
	}
	return &Manager{st: st, reg: reg, sealer: sealer, logger: logger, prices: prices, conns: map[core.SiteName]provider.Provider{},
		health: map[core.SiteName]Health{}, watchers: map[core.SiteName]*watcher{}, kick: make(chan struct{}, 1)}
}

// Registry is the manager's kind registry.
func (m *Manager) Registry() *Registry { return m.reg }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// AddRequest registers a site. Secrets arrive in clear and are sealed
// before they reach the store.
type AddRequest struct {
	Name     string            `json:"name"`
	Kind     string            `json:"kind"`
	Endpoint string            `json:"endpoint,omitempty"`
	Settings map[string]string `json:"settings,omitempty"`
	Secrets  map[string]Secret `json:"credentials,omitempty"`
}

func aad(name core.SiteName) []byte { return []byte("ferry site credentials v1\x00" + string(name)) }

func (m *Manager) seal(name core.SiteName, secrets map[string]Secret) ([]byte, error) {
	if len(secrets) == 0 {
		return nil, nil
	}
	plain := map[string]string{}
	for k, v := range secrets {
		plain[k] = v.Reveal()
	}
	b, err := json.Marshal(plain)
	if err != nil {
		return nil, err
	}
	return m.sealer.Seal(b, aad(name)), nil
}

func (m *Manager) unseal(s store.Site) (map[string]Secret, error) {
	if len(s.Credentials) == 0 {
		return nil, nil
	}
	b, err := m.sealer.Open(s.Credentials, aad(s.Name))
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", s.Name, err)
	}
	var plain map[string]string
	if err := json.Unmarshal(b, &plain); err != nil {
		return nil, fmt.Errorf("site %s: credentials: %v: %w", s.Name, err, errs.ErrCorrupt)
	}
	out := map[string]Secret{}
	for k, v := range plain {
		out[k] = Secret(v)
	}
	return out, nil
}

func checkEndpoint(name, ep string) error {
	if ep == "" {
		return nil
	}
	u, err := url.Parse(ep)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("site %s: endpoint %q is not a URL: %w", name, ep, errs.ErrInvalidArgument)
	}
	if _, has := u.User.Password(); has {
		return fmt.Errorf("site %s: endpoint holds a password; give it as a credential instead: %w", name, errs.ErrInvalidArgument)
	}
	return nil
}

// Add registers a site (it does not connect: see Test and Refresh).
func (m *Manager) Add(ctx context.Context, r AddRequest) (View, error) {
	if !nameRE.MatchString(r.Name) {
		return View{}, fmt.Errorf("site name %q: want letters, digits, '.', '_' or '-', at most 63: %w", r.Name, errs.ErrInvalidArgument)
	}
	k, err := m.reg.Lookup(provider.Kind(r.Kind))
	if err != nil {
		return View{}, err
	}
	if err := checkEndpoint(r.Name, r.Endpoint); err != nil {
		return View{}, err
	}
	name := core.SiteName(r.Name)
	secrets := maps.Clone(r.Secrets)
	maps.DeleteFunc(secrets, func(_ string, v Secret) bool { return v == "" })
	if err := k.validate(Config{Name: name, Kind: k.Name, Endpoint: r.Endpoint, Settings: r.Settings, Secrets: secrets}); err != nil {
		return View{}, err
	}
	sealed, err := m.seal(name, secrets)
	if err != nil {
		return View{}, err
	}
	now := time.Now().UTC()
	s := store.Site{Name: name, Kind: string(k.Name), Endpoint: r.Endpoint, Config: r.Settings, Credentials: sealed, Created: now, Updated: now}
	if err := m.st.Update(ctx, func(tx store.Tx) error { return tx.CreateSite(ctx, s) }); err != nil {
		return View{}, err
	}
	m.logger.Info("site added", "site", name, "kind", k.Name)
	m.Kick()
	return m.view(s, secrets), nil
}

// SetCredentials replaces a site's credentials.
func (m *Manager) SetCredentials(ctx context.Context, name core.SiteName, secrets map[string]Secret) (View, error) {
	var out View
	err := m.st.Update(ctx, func(tx store.Tx) error {
		s, err := tx.Site(ctx, name)
		if err != nil {
			return err
		}
		k, err := m.reg.Lookup(provider.Kind(s.Kind))
		if err != nil {
			return err
		}
		secrets = maps.Clone(secrets)
		maps.DeleteFunc(secrets, func(_ string, v Secret) bool { return v == "" })
		if err := k.validate(Config{Name: name, Kind: k.Name, Endpoint: s.Endpoint, Settings: s.Config, Secrets: secrets}); err != nil {
			return err
		}
		if s.Credentials, err = m.seal(name, secrets); err != nil {
			return err
		}
		s.Updated = time.Now().UTC()
		out = m.view(s, secrets)
		return tx.UpdateSite(ctx, s)
	})
	if err == nil {
		m.drop(name)
	}
	return out, err
}

// Remove unregisters a site and forgets its inventory.
func (m *Manager) Remove(ctx context.Context, name core.SiteName) error {
	if err := m.st.Update(ctx, func(tx store.Tx) error { return tx.DeleteSite(ctx, name) }); err != nil {
		return err
	}
	m.drop(name)
	m.mu.Lock()
	if w := m.watchers[name]; w != nil {
		w.stop()
		delete(m.watchers, name)
	}
	delete(m.health, name)
	m.mu.Unlock()
	return nil
}

func (m *Manager) view(s store.Site, secrets map[string]Secret) View {
	v := View{Name: s.Name, Kind: provider.Kind(s.Kind), Endpoint: s.Endpoint, Settings: s.Config, Created: s.Created, Updated: s.Updated}
	if v.Endpoint != "" {
		if u, err := url.Parse(v.Endpoint); err == nil {
			v.Endpoint = u.Redacted()
		}
	}
	v.Credentials = slices.Sorted(maps.Keys(secrets))
	m.mu.Lock()
	if h, ok := m.health[s.Name]; ok {
		v.Health = &h
	}
	m.mu.Unlock()
	return v
}

// credentialNames lists the sealed credentials' names (unsealing them;
// with the wrong key the list is empty).
func (m *Manager) credentialNames(s store.Site) map[string]Secret {
	secrets, err := m.unseal(s)
	if err != nil {
		return nil
	}
	return secrets
}

// List returns every site.
func (m *Manager) List(ctx context.Context) ([]View, error) {
	var sites []store.Site
	if err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		sites, err = tx.Sites(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]View, 0, len(sites))
	for _, s := range sites {
		out = append(out, m.view(s, m.credentialNames(s)))
	}
	return out, nil
}

// Get returns one site.
func (m *Manager) Get(ctx context.Context, name core.SiteName) (View, error) {
	s, err := m.site(ctx, name)
	if err != nil {
		return View{}, err
	}
	return m.view(s, m.credentialNames(s)), nil
}

func (m *Manager) site(ctx context.Context, name core.SiteName) (store.Site, error) {
	var s store.Site
	err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		s, err = tx.Site(ctx, name)
		return err
	})
	return s, err
}

// Config returns what is needed to connect to a site, credentials
// unsealed.
func (m *Manager) Config(ctx context.Context, name core.SiteName) (Config, error) {
	s, err := m.site(ctx, name)
	if err != nil {
		return Config{}, err
	}
	secrets, err := m.unseal(s)
	if err != nil {
		return Config{}, err
	}
	return Config{Name: s.Name, Kind: provider.Kind(s.Kind), Endpoint: s.Endpoint, Settings: s.Config, Secrets: secrets}, nil
}

// Provider returns a connection to a site, opening one if needed. The
// manager owns it: callers do not Close it.
func (m *Manager) Provider(ctx context.Context, name core.SiteName) (provider.Provider, error) {
	m.mu.Lock()
	p := m.conns[name]
	m.mu.Unlock()
	if p != nil {
		return p, nil
	}
	c, err := m.Config(ctx, name)
	if err != nil {
		return nil, err
	}
	k, err := m.reg.Lookup(c.Kind)
	if err != nil {
		return nil, err
	}
	p, err = k.Open(ctx, c, m.logger.With("site", name, "provider", c.Kind))
	if err != nil {
		return nil, fmt.Errorf("site %s: connect: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := m.conns[name]; cur != nil {
		p.Close()
		return cur, nil
	}
	m.conns[name] = p
	return p, nil
}

// drop closes and forgets a site's connection.
func (m *Manager) drop(name core.SiteName) {
	m.mu.Lock()
	p := m.conns[name]
	delete(m.conns, name)
	m.mu.Unlock()
	if p != nil {
		p.Close()
	}
}

// TestResult is what Test found.
type TestResult struct {
	Site      core.SiteName `json:"site"`
	Info      provider.Info `json:"info"`
	LatencyMS int64         `json:"latency_ms"`
}

// errFirstVM stops Test's listing at the first VM.
var errFirstVM = errors.New("first vm")

// Test connects to a site afresh, makes one authenticated call (a VM
// listing stopped at the first VM: opening a provider may be lazy, as the
// AWS SDK is) and reports the site's version and capabilities.
func (m *Manager) Test(ctx context.Context, name core.SiteName) (TestResult, error) {
	start := time.Now()
	m.drop(name)
	p, err := m.Provider(ctx, name)
	if err != nil {
		return TestResult{Site: name}, err
	}
	err = p.ListVMs(ctx, provider.Filter{}, func(core.VM) error { return errFirstVM })
	if err != nil && !errors.Is(err, errFirstVM) {
		m.drop(name)
		return TestResult{Site: name}, fmt.Errorf("site %s: %w", name, err)
	}
	return TestResult{Site: name, Info: p.Info(), LatencyMS: time.Since(start).Milliseconds()}, nil
}

// Close closes every connection and stops watchers.
func (m *Manager) Close() error {
	m.mu.Lock()
	conns := m.conns
	m.conns = map[core.SiteName]provider.Provider{}
	for n, w := range m.watchers {
		w.stop()
		delete(m.watchers, n)
	}
	m.mu.Unlock()
	var err error
	for _, p := range conns {
		err = errors.Join(err, p.Close())
	}
	return err
}

// HealthOf returns every site's last refresh outcome.
func (m *Manager) HealthOf() map[core.SiteName]Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.health)
}

func (m *Manager) setHealth(name core.SiteName, n int, err error) {
	h := Health{OK: err == nil, LastRefresh: time.Now().UTC(), VMs: n}
	if err != nil {
		h.Error = err.Error()
	}
	m.mu.Lock()
	m.health[name] = h
	m.mu.Unlock()
}

func (m *Manager) record(vm core.VM, name core.SiteName, region string, now time.Time) (store.InventoryRecord, error) {
	vm.Site = name
	rec := Record{VM: vm, Region: region}
	if cost, ok := m.prices.Monthly(vm, region); ok {
		rec.MonthlyCost = &cost
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return store.InventoryRecord{}, err
	}
	return store.InventoryRecord{Site: name, VMID: vm.ID, Name: vm.Name, Power: vm.PowerState, Record: b, Updated: now}, nil
}

func region(c Config, p provider.Provider) string {
	if r := c.Settings["region"]; r != "" {
		return r
	}
	return p.Info().Region
}

// RefreshResult is what Refresh found.
type RefreshResult struct {
	Site core.SiteName `json:"site"`
	VMs  int           `json:"vms"`
}

// Refresh lists a site's VMs and replaces its inventory with them.
func (m *Manager) Refresh(ctx context.Context, name core.SiteName) (RefreshResult, error) {
	res := RefreshResult{Site: name}
	err := m.refresh(ctx, name, &res)
	if err != nil && ctx.Err() == nil {
		m.setHealth(name, 0, err)
		if errs.Is(err, errs.Unavailable) || errs.Is(err, errs.PermissionDenied) {
			m.drop(name)
		}
	}
	return res, err
}

func (m *Manager) refresh(ctx context.Context, name core.SiteName, res *RefreshResult) error {
	c, err := m.Config(ctx, name)
	if err != nil {
		return err
	}
	p, err := m.Provider(ctx, name)
	if err != nil {
		return err
	}
	reg := region(c, p)
	now := time.Now().UTC()
	var recs []store.InventoryRecord
	if err := p.ListVMs(ctx, provider.Filter{}, func(vm core.VM) error {
		r, err := m.record(vm, name, reg, now)
		recs = append(recs, r)
		return err
	}); err != nil {
		return fmt.Errorf("site %s: list VMs: %w", name, err)
	}
	if err := m.st.Update(ctx, func(tx store.Tx) error { return tx.ReplaceInventory(ctx, name, recs) }); err != nil {
		return err
	}
	res.VMs = len(recs)
	m.setHealth(name, len(recs), nil)
	m.logger.Debug("inventory refreshed", "site", name, "vms", len(recs))
	return nil
}

// updateVM re-reads one VM from its site into the inventory.
func (m *Manager) updateVM(ctx context.Context, name core.SiteName, vm core.VM) error {
	c, err := m.Config(ctx, name)
	if err != nil {
		return err
	}
	p, err := m.Provider(ctx, name)
	if err != nil {
		return err
	}
	r, err := m.record(vm, name, region(c, p), time.Now().UTC())
	if err != nil {
		return err
	}
	return m.st.Update(ctx, func(tx store.Tx) error { return tx.PutInventory(ctx, r) })
}

// Power performs op on a VM and returns the VM as its site then reports
// it (also recorded in the inventory).
func (m *Manager) Power(ctx context.Context, name core.SiteName, id core.VMID, op provider.PowerOp) (core.VM, error) {
	switch op {
	case provider.Start, provider.Shutdown, provider.Stop, provider.Reboot:
	default:
		return core.VM{}, fmt.Errorf("power operation %q: want start, shutdown, stop or reboot: %w", op, errs.ErrInvalidArgument)
	}
	p, err := m.Provider(ctx, name)
	if err != nil {
		return core.VM{}, err
	}
	if err := p.PowerVM(ctx, id, op); err != nil {
		return core.VM{}, fmt.Errorf("site %s: %s VM %s: %w", name, op, id, err)
	}
	var got *core.VM
	if err := p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id}}, func(vm core.VM) error { got = &vm; return nil }); err != nil {
		return core.VM{}, err
	}
	if got == nil {
		return core.VM{}, fmt.Errorf("site %s: VM %s vanished after %s: %w", name, id, op, errs.ErrNotFound)
	}
	got.Site = name
	return *got, m.updateVM(ctx, name, *got)
}

// Kick asks Run for a refresh of every site soon.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run refreshes every site's inventory now and then every interval (or
// when kicked), and follows the events of sites whose providers have
// them, until ctx ends.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.RefreshAll(ctx)
		select {
		case <-ctx.Done():
			m.Close()
			return
		case <-t.C:
		case <-m.kick:
		}
	}
}

// RefreshAll refreshes every site and starts watchers where possible.
func (m *Manager) RefreshAll(ctx context.Context) {
	var sites []store.Site
	if err := m.st.View(ctx, func(tx store.Tx) error {
		var err error
		sites, err = tx.Sites(ctx)
		return err
	}); err != nil {
		if ctx.Err() == nil {
			m.logger.Warn("inventory: list sites", "err", err)
		}
		return
	}
	for _, s := range sites {
		if _, err := m.Refresh(ctx, s.Name); err != nil {
			if ctx.Err() != nil {
				return
			}
			m.logger.Warn("inventory refresh failed", "site", s.Name, "err", err)
			continue
		}
		m.watch(ctx, s.Name)
	}
}

// watch starts following a site's events if its provider can and no
// watcher runs yet.
func (m *Manager) watch(ctx context.Context, name core.SiteName) {
	p, err := m.Provider(ctx, name)
	if err != nil {
		return
	}
	w, ok := p.(provider.Watcher)
	if !ok || !p.Info().Capabilities.Events {
		return
	}
	m.mu.Lock()
	if m.watchers[name] != nil {
		m.mu.Unlock()
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	me := &watcher{stop: cancel}
	m.watchers[name] = me
	m.mu.Unlock()
	go func() {
		err := w.Watch(wctx, func(vm core.VM) error { return m.updateVM(wctx, name, vm) })
		if wctx.Err() == nil {
			m.logger.Warn("inventory: watch ended; next refresh restarts it", "site", name, "err", err)
		}
		m.mu.Lock()
		if m.watchers[name] == me {
			delete(m.watchers, name)
		}
		m.mu.Unlock()
		cancel()
	}()
}

// watcher is a running Watch of one site.
type watcher struct{ stop context.CancelFunc }

// Inventory returns the inventory records matching f, decoded, ordered by
// site and name.
func (m *Manager) Inventory(ctx context.Context, f store.InventoryFilter) ([]Record, error) {
	var out []Record
	err := m.st.View(ctx, func(tx store.Tx) error {
		return tx.Inventory(ctx, f, func(r store.InventoryRecord) error {
			var rec Record
			if err := json.Unmarshal(r.Record, &rec); err != nil {
				return fmt.Errorf("inventory %s/%s: %v: %w", r.Site, r.VMID, err, errs.ErrCorrupt)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}
