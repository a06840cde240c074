package fake_test

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/fake"
)

func list(t *testing.T, p provider.Provider, f provider.Filter) []core.VM {
	t.Helper()
	var out []core.VM
	if err := p.ListVMs(t.Context(), f, func(vm core.VM) error { out = append(out, vm); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestContract checks the provider.Provider contract (what
// providertest will check once it exists).
func TestContract(t *testing.T) {
	p, err := fake.Open(t.Context(), "lab", "fake://lab?vms=50&seed=3")
	if err != nil {
		t.Fatal(err)
	}
	if info := p.Info(); info.Name != "lab" || info.Kind != fake.Kind || !info.Capabilities.Events {
		t.Errorf("info = %+v", info)
	}
	all := list(t, p, provider.Filter{})
	if len(all) != 50 {
		t.Fatalf("%d VMs", len(all))
	}
	again := list(t, fake.New(fake.Options{Name: "lab", VMs: 50, Seed: 3}), provider.Filter{})
	if all[7].Name != again[7].Name || all[7].CPUs != again[7].CPUs || all[7].PowerState != again[7].PowerState {
		t.Error("not deterministic")
	}
	for _, vm := range all {
		if vm.Site != "lab" || vm.ID == "" || vm.CPUs == 0 || vm.MemoryBytes == 0 || len(vm.Disks) == 0 {
			t.Fatalf("vm = %+v", vm)
		}
	}
	vm := all[0]
	tests := []struct {
		f    provider.Filter
		want int
	}{
		{provider.Filter{Name: vm.Name}, 1},
		{provider.Filter{IDs: []core.VMID{all[1].ID, all[2].ID}}, 2},
		{provider.Filter{Name: "nope"}, 0},
	}
	for _, tt := range tests {
		if got := len(list(t, p, tt.f)); got != tt.want {
			t.Errorf("filter %+v: %d", tt.f, got)
		}
	}
	// fn's error stops the listing and is returned.
	stop := errors.New("stop")
	n := 0
	if err := p.ListVMs(t.Context(), provider.Filter{}, func(core.VM) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("ListVMs with failing fn: %v after %d", err, n)
	}
	// Power: asking for the state a VM is in succeeds.
	for _, op := range []provider.PowerOp{provider.Stop, provider.Stop, provider.Start} {
		if err := p.PowerVM(t.Context(), vm.ID, op); err != nil {
			t.Fatal(err)
		}
	}
	if s := list(t, p, provider.Filter{IDs: []core.VMID{vm.ID}})[0].PowerState; s != core.Running {
		t.Errorf("state after start = %s", s)
	}
	if err := p.PowerVM(t.Context(), "nope", provider.Start); !errs.Is(err, errs.NotFound) {
		t.Errorf("power unknown VM: %v", err)
	}
	if err := p.PowerVM(t.Context(), vm.ID, "explode"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("bad op: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Watch(ctx, func(core.VM) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch with a cancelled context: %v", err)
	}
	p.Close()
	if err := p.ListVMs(t.Context(), provider.Filter{}, func(core.VM) error { return nil }); !errs.Is(err, errs.FailedPrecondition) {
		t.Errorf("list after close: %v", err)
	}
}

func TestWatch(t *testing.T) {
	p := fake.New(fake.Options{Name: "w", VMs: 3})
	vm := list(t, p, provider.Filter{})[0]
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	seen := make(chan core.VM, 16)
	go p.Watch(ctx, func(vm core.VM) error { seen <- vm; return nil })
	// Keep changing power until the watcher (registering concurrently)
	// reports a change.
	for i := 0; ; i++ {
		op := provider.Stop
		if i%2 == 1 {
			op = provider.Start
		}
		if err := p.PowerVM(t.Context(), vm.ID, op); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-seen:
			if got.ID != vm.ID {
				t.Fatalf("watched %s", got.ID)
			}
			return
		case <-t.Context().Done():
			t.Fatal("no watch event")
		default:
		}
		if i > 1_000_000 {
			t.Fatal("no watch event")
		}
		runtime.Gosched()
	}
}

func TestEndpoints(t *testing.T) {
	tests := []struct {
		ep   string
		code errs.Code
	}{
		{"", errs.Unknown}, {"fake://x?vms=3", errs.Unknown}, {"fake://x?region=us-east-1", errs.Unknown},
		{"http://x", errs.InvalidArgument}, {"fake://x?vms=-1", errs.InvalidArgument}, {"fake://x?seed=a", errs.InvalidArgument},
		{"fake://x?fail=open", errs.Unavailable}, {"fake://x?fail=bogus", errs.InvalidArgument},
	}
	for _, tt := range tests {
		_, err := fake.Open(t.Context(), "x", tt.ep)
		if errs.CodeOf(err) != tt.code || (tt.code == errs.Unknown) != (err == nil) {
			t.Errorf("Open(%q) = %v", tt.ep, err)
		}
	}
	p, _ := fake.Open(t.Context(), "x", "fake://x?fail=list")
	if err := p.ListVMs(t.Context(), provider.Filter{}, func(core.VM) error { return nil }); !errs.Is(err, errs.Unavailable) {
		t.Errorf("fail=list: %v", err)
	}
	p, _ = fake.Open(t.Context(), "x", "fake://x?vms=5&region=eu-west-1")
	for _, vm := range list(t, p, provider.Filter{}) {
		if vm.InstanceTyp == "" {
			t.Errorf("region set but no instance type: %+v", vm)
		}
	}
}
