package site_test

import (
	"net/http/httptest"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/lab/xenlab"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/xen"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// TestXenSiteAgainstLab registers a lab XenServer pool as a site of kind
// xen, tests it, refreshes it, and finds the pool's VM in the inventory.
func TestXenSiteAgainstLab(t *testing.T) {
	srv, err := xenlab.New(t.Context(), xenlab.Options{Dir: t.TempDir(), Users: map[string]string{"root": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	// put a VM in the pool through the driver itself
	p, err := xen.Open(t.Context(), xen.Config{URL: hs.URL, User: "root", Password: "s3cret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := synth.Image{P: synth.MakePattern("root", 8<<20, 0.3, 1)}
	id, err := p.ImportVM(t.Context(), core.VMSpec{Name: "web-1", CPUs: 2, MemoryBytes: 1 << 30, Disks: []core.DiskSpec{{Name: "root", Size: img.Size(), Bootable: true}}},
		[]disk.Image{img}, &provider.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()

	dir := t.TempDir()
	var key site.Key
	m, _ := newManager(t, dir, key)
	if _, err := m.Add(t.Context(), addXen(hs.URL, "wrong")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Test(t.Context(), "dc1"); err == nil {
		t.Fatal("a wrong password passed the site test")
	}
	if err := m.Remove(t.Context(), "dc1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Add(t.Context(), addXen(hs.URL, "s3cret")); err != nil {
		t.Fatal(err)
	}
	tr, err := m.Test(t.Context(), "dc1")
	if err != nil || tr.Info.Kind != provider.KindXen {
		t.Fatalf("site test: %+v %v", tr, err)
	}
	res, err := m.Refresh(t.Context(), "dc1")
	if err != nil || res.VMs != 1 {
		t.Fatalf("refresh: %+v %v", res, err)
	}
	recs, err := m.Inventory(t.Context(), store.InventoryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].ID != id || recs[0].Name != "web-1" || recs[0].CPUs != 2 || recs[0].MemoryBytes != 1<<30 || recs[0].Site != "dc1" || len(recs[0].Disks) != 1 {
		t.Fatalf("inventory %+v", recs)
	}
}

func addXen(url, password string) site.AddRequest {
	return site.AddRequest{Name: "dc1", Kind: "xen", Endpoint: url, Settings: map[string]string{"user": "root"}, Secrets: map[string]site.Secret{"password": site.Secret(password)}}
}
