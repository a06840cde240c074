package site_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

func newManager(t *testing.T, dir string, key site.Key) (*site.Manager, store.Store) {
	t.Helper()
	st, err := store.Open(t.Context(), store.Location{Dialect: store.SQLite, Path: filepath.Join(dir, "ferry.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := site.NewManager(st, site.Kinds(), site.NewSealer(key), nil)
	t.Cleanup(func() { m.Close(); st.Close() })
	return m, st
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	k1, src, err := site.LoadKey("", "", dir)
	if err != nil || !src.Generated || src.Path != filepath.Join(dir, "secret.key") {
		t.Fatalf("first load: %+v %v", src, err)
	}
	st, _ := os.Stat(src.Path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", st.Mode())
	}
	k2, src, err := site.LoadKey("", "", dir)
	if err != nil || src.Generated || k1 != k2 {
		t.Errorf("second load: %+v %v", src, err)
	}
	hexKey := strings.Repeat("ab", 32)
	if k, src, err := site.LoadKey("", hexKey, dir); err != nil || !src.Env || k[0] != 0xab {
		t.Errorf("env key: %v", err)
	}
	kf := filepath.Join(dir, "other.key")
	os.WriteFile(kf, []byte("q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=\n"), 0o600)
	if k, src, err := site.LoadKey(kf, hexKey, dir); err != nil || src.Path != kf || k[0] != 0xab {
		t.Errorf("key file: %x %v", k[:2], err)
	}
	for _, bad := range []string{"abc", strings.Repeat("zz", 32), "c2hvcnQ="} {
		if _, err := site.ParseKey(bad); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("ParseKey(%q) = %v", bad, err)
		}
	}
	if _, _, err := site.LoadKey("", "", ""); err == nil {
		t.Error("no key source accepted")
	}
}

func TestSealer(t *testing.T) {
	s := site.NewSealer(site.Key{1})
	sealed := s.Seal([]byte("hunter2"), []byte("a"))
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("plaintext in sealed data")
	}
	if p, err := s.Open(sealed, []byte("a")); err != nil || string(p) != "hunter2" {
		t.Fatalf("open: %q %v", p, err)
	}
	if _, err := s.Open(sealed, []byte("b")); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("other site's AAD: %v", err)
	}
	if _, err := site.NewSealer(site.Key{2}).Open(sealed, []byte("a")); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("other key: %v", err)
	}
	if _, err := s.Open(sealed[:5], []byte("a")); !errs.Is(err, errs.Corrupt) {
		t.Errorf("short: %v", err)
	}
	if site.Secret("x").String() != "[redacted]" {
		t.Error("secret prints")
	}
}

// TestCredentialsNotInClear registers a site with a password and greps
// every file of the data directory for it.
func TestCredentialsNotInClear(t *testing.T) {
	dir := t.TempDir()
	m, st := newManager(t, dir, site.Key{7})
	const pw = "correct-horse-battery-staple-4711"
	v, err := m.Add(t.Context(), site.AddRequest{Name: "lab", Kind: "fake", Endpoint: "fake://lab?vms=3", Secrets: map[string]site.Secret{"password": pw}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(v.Credentials, ",") != "password" {
		t.Errorf("view credentials = %v", v.Credentials)
	}
	b, _ := json.Marshal(v)
	if bytes.Contains(b, []byte(pw)) {
		t.Fatal("password in the site view")
	}
	c, err := m.Config(t.Context(), "lab")
	if err != nil || c.Secret("password") != pw {
		t.Fatalf("config: %v", err)
	}
	st.Close() // checkpoint the WAL into the database file
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(pw)) {
			t.Errorf("password in clear in %s", f)
		}
	}
	// Another key cannot open them.
	m2, _ := newManager(t, dir, site.Key{8})
	if _, err := m2.Config(t.Context(), "lab"); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("wrong key: %v", err)
	}
}

func TestSites(t *testing.T) {
	m, _ := newManager(t, t.TempDir(), site.Key{1})
	ctx := t.Context()
	bad := []site.AddRequest{
		{Name: "", Kind: "fake"},
		{Name: "bad name", Kind: "fake"},
		{Name: "a", Kind: "nosuch"},
		{Name: "a", Kind: "fake", Settings: map[string]string{"user": "x"}},
		{Name: "a", Kind: "fake", Secrets: map[string]site.Secret{"token": "x"}},
		{Name: "a", Kind: "fake", Endpoint: "https://u:pw@host"},
		{Name: "a", Kind: "fake", Endpoint: "no scheme"},
	}
	for _, r := range bad {
		if _, err := m.Add(ctx, r); !errs.Is(err, errs.InvalidArgument) {
			t.Errorf("Add(%+v) = %v, want invalid argument", r, err)
		}
	}
	if _, err := m.Add(ctx, site.AddRequest{Name: "b", Kind: "fake", Endpoint: "fake://b?vms=20&seed=2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Add(ctx, site.AddRequest{Name: "a", Kind: "fake", Endpoint: "fake://a?vms=5&region=us-east-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Add(ctx, site.AddRequest{Name: "a", Kind: "fake"}); !errs.Is(err, errs.AlreadyExists) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := m.Add(ctx, site.AddRequest{Name: "down", Kind: "fake", Endpoint: "fake://down?fail=open"}); err != nil {
		t.Fatal(err)
	}
	m.RefreshAll(ctx)
	list, err := m.List(ctx)
	if err != nil || len(list) != 3 || list[0].Name != "a" {
		t.Fatalf("list = %+v %v", list, err)
	}
	h := m.HealthOf()
	if !h["a"].OK || h["a"].VMs != 5 || !h["b"].OK || h["down"].OK || !strings.Contains(h["down"].Error, "refusing") {
		t.Errorf("health = %+v", h)
	}
	if v, err := m.Get(ctx, "down"); err != nil || v.Health == nil || v.Health.OK {
		t.Errorf("get down = %+v %v", v, err)
	}
	if _, err := m.Test(ctx, "down"); !errs.Is(err, errs.Unavailable) {
		t.Errorf("test down: %v", err)
	}
	tr, err := m.Test(ctx, "a")
	if err != nil || tr.Info.Version != "fake-1" || tr.Info.Region != "us-east-1" {
		t.Errorf("test a = %+v %v", tr, err)
	}
	// Power through the manager: the inventory follows.
	var first site.Record
	m.RefreshAll(ctx)
	if err := (func() error {
		return storeFirst(t, m, "b", &first)
	})(); err != nil {
		t.Fatal(err)
	}
	op := provider.Stop
	if first.PowerState != core.Running {
		op = provider.Start
	}
	vm, err := m.Power(ctx, "b", first.ID, op)
	if err != nil || vm.PowerState == first.PowerState {
		t.Fatalf("power: %+v %v", vm, err)
	}
	var after site.Record
	storeFirst(t, m, "b", &after)
	if after.PowerState != vm.PowerState {
		t.Errorf("inventory says %s after power, want %s", after.PowerState, vm.PowerState)
	}
	if _, err := m.Power(ctx, "b", first.ID, "explode"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("bad op: %v", err)
	}
	if _, err := m.Power(ctx, "nosuch", first.ID, provider.Start); !errs.Is(err, errs.NotFound) {
		t.Errorf("unknown site: %v", err)
	}
	if _, err := m.SetCredentials(ctx, "b", map[string]site.Secret{"password": "new"}); err != nil {
		t.Error(err)
	}
	if c, _ := m.Config(ctx, "b"); c.Secret("password") != "new" {
		t.Error("credentials not replaced")
	}
	if err := m.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "b"); !errs.Is(err, errs.NotFound) {
		t.Errorf("second remove: %v", err)
	}
}

// storeFirst reads the first inventory record of a site from the
// manager's store through a refresh-independent path.
func storeFirst(t *testing.T, m *site.Manager, name core.SiteName, out *site.Record) error {
	t.Helper()
	p, err := m.Provider(t.Context(), name)
	if err != nil {
		return err
	}
	_ = p
	recs, err := m.Inventory(t.Context(), store.InventoryFilter{Site: name})
	if err != nil {
		return err
	}
	*out = recs[0]
	return nil
}

func TestWatchUpdatesInventory(t *testing.T) {
	m, _ := newManager(t, t.TempDir(), site.Key{1})
	ctx := t.Context()
	if _, err := m.Add(ctx, site.AddRequest{Name: "w", Kind: "fake", Endpoint: "fake://w?vms=3"}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := t.Context(), func() {}
	defer cancel()
	go m.Run(rctx, time.Hour)
	// Change a VM behind the manager's back, through the provider; the
	// watcher must record it.
	deadline := time.Now().Add(20 * time.Second)
	var id core.VMID
	for {
		recs, _ := m.Inventory(ctx, store.InventoryFilter{Site: "w"})
		if len(recs) == 3 {
			id = recs[0].ID
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no inventory")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p, _ := m.Provider(ctx, "w")
	for i := 0; ; i++ {
		op := provider.Stop
		want := core.Halted
		if i%2 == 1 {
			op, want = provider.Start, core.Running
		}
		p.PowerVM(ctx, id, op)
		time.Sleep(20 * time.Millisecond) // poll interval
		recs, _ := m.Inventory(ctx, store.InventoryFilter{Site: "w", VMID: id})
		if len(recs) == 1 && recs[0].PowerState == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("watcher did not update the inventory")
		}
	}
}
