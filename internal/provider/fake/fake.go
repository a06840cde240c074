// Package fake is an in-memory provider: a TEST DOUBLE. Nothing it reports
// exists anywhere; it generates a deterministic set of VMs from a seed and
// keeps power changes in memory for as long as the Provider lives.
//
// Site kind "fake" uses it, so that the control plane (site registry,
// inventory, API, benchmarks) can be exercised without a hypervisor:
//
//	ferry site add lab --kind fake --url 'fake://lab?vms=500&seed=7'
//
// Endpoint query parameters: vms (count, default 10), seed (default 1),
// region (set: VMs get EC2 instance types, priced as EC2), fail=open|list
// (make Open or ListVMs fail with Unavailable, for tests).
package fake

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"sync"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
)

// Kind is the provider kind of fake sites.
const Kind provider.Kind = "fake"

// Options describe a fake site.
type Options struct {
	Name   core.SiteName
	VMs    int
	Seed   uint64
	Region string
	// FailList makes ListVMs fail with Unavailable.
	FailList bool
}

// Provider is an in-memory site.
type Provider struct {
	info provider.Info
	o    Options

	mu       sync.Mutex
	vms      []core.VM // ordered by ID
	watchers map[int]chan core.VM
	nextW    int
	closed   bool
}

var (
	_ provider.Provider = (*Provider)(nil)
	_ provider.Watcher  = (*Provider)(nil)
)

// ParseEndpoint reads Options from a fake:// URL.
func ParseEndpoint(name core.SiteName, endpoint string) (Options, error) {
	o := Options{Name: name, VMs: 10, Seed: 1}
	if endpoint == "" {
		return o, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "fake" {
		return o, fmt.Errorf("fake site endpoint %q: want fake://NAME?vms=N&seed=S: %w", endpoint, errs.ErrInvalidArgument)
	}
	q := u.Query()
	if v := q.Get("vms"); v != "" {
		if o.VMs, err = strconv.Atoi(v); err != nil || o.VMs < 0 || o.VMs > 1_000_000 {
			return o, fmt.Errorf("fake site endpoint: vms=%q: %w", v, errs.ErrInvalidArgument)
		}
	}
	if v := q.Get("seed"); v != "" {
		if o.Seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			return o, fmt.Errorf("fake site endpoint: seed=%q: %w", v, errs.ErrInvalidArgument)
		}
	}
	o.Region = q.Get("region")
	switch q.Get("fail") {
	case "":
	case "open":
		return o, fmt.Errorf("fake site %s: refusing to connect (fail=open): %w", name, errs.ErrUnavailable)
	case "list":
		o.FailList = true
	default:
		return o, fmt.Errorf("fake site endpoint: fail=%q: %w", q.Get("fail"), errs.ErrInvalidArgument)
	}
	return o, nil
}

// Open connects to a fake site described by endpoint (see the package
// documentation).
func Open(ctx context.Context, name core.SiteName, endpoint string) (*Provider, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o, err := ParseEndpoint(name, endpoint)
	if err != nil {
		return nil, err
	}
	p := New(o)
	p.info.Endpoint = endpoint
	return p, nil
}

var instanceTypes = []struct {
	name string
	cpus int
	mem  int64
}{
	{"t3.micro", 2, 1 << 30}, {"t3.medium", 2, 4 << 30}, {"m5.large", 2, 8 << 30}, {"m5.xlarge", 4, 16 << 30},
	{"c5.2xlarge", 8, 16 << 30}, {"r5.large", 2, 16 << 30}, {"m6i.2xlarge", 8, 32 << 30},
}

// New returns a fake site with o.VMs generated VMs.
func New(o Options) *Provider {
	if o.Name == "" {
		o.Name = "fake"
	}
	rng := rand.New(rand.NewPCG(o.Seed, uint64(len(o.Name))))
	p := &Provider{o: o, watchers: map[int]chan core.VM{}, info: provider.Info{
		Name: o.Name, Kind: Kind, Version: "fake-1", Region: o.Region,
		Capabilities: provider.Capabilities{Events: true},
	}}
	powers := []core.PowerState{core.Running, core.Running, core.Running, core.Halted, core.Suspended}
	for i := range o.VMs {
		vm := core.VM{
			Site: o.Name, ID: core.VMID(fmt.Sprintf("%s-vm-%06d", o.Name, i)), Name: fmt.Sprintf("vm-%06d", i),
			PowerState: powers[rng.IntN(len(powers))], CPUs: 1 << rng.IntN(4), MemoryBytes: int64(1<<rng.IntN(5)) << 30,
			Firmware: core.BIOS, Host: fmt.Sprintf("host-%d", rng.IntN(8)),
		}
		if o.Region != "" {
			it := instanceTypes[rng.IntN(len(instanceTypes))]
			vm.InstanceTyp, vm.CPUs, vm.MemoryBytes, vm.Host = it.name, it.cpus, it.mem, o.Region+"a"
		}
		for d := range 1 + rng.IntN(3) {
			vm.Disks = append(vm.Disks, core.Disk{ID: core.DiskID(fmt.Sprintf("%s-d%d", vm.ID, d)), Name: fmt.Sprintf("disk%d", d),
				Size: int64(10+rng.IntN(190)) << 30, Position: d, Bootable: d == 0})
		}
		vm.NICs = []core.NIC{{Name: "eth0", Network: "net0", MAC: fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))}}
		p.vms = append(p.vms, vm)
	}
	return p
}

func (p *Provider) Info() provider.Info { return p.info }

func (p *Provider) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.closed {
		return fmt.Errorf("fake site %s: closed: %w", p.o.Name, errs.ErrFailedPrecondition)
	}
	return nil
}

// ListVMs calls fn for each matching VM, in ID order.
func (p *Provider) ListVMs(ctx context.Context, f provider.Filter, fn func(core.VM) error) error {
	p.mu.Lock()
	if err := p.check(ctx); err != nil {
		p.mu.Unlock()
		return err
	}
	if p.o.FailList {
		p.mu.Unlock()
		return fmt.Errorf("fake site %s: list VMs (fail=list): %w", p.o.Name, errs.ErrUnavailable)
	}
	var out []core.VM
	for _, vm := range p.vms {
		if (f.Name == "" || vm.Name == f.Name) && (f.PowerState == "" || vm.PowerState == f.PowerState) && (len(f.IDs) == 0 || slices.Contains(f.IDs, vm.ID)) {
			out = append(out, clone(vm))
		}
	}
	p.mu.Unlock()
	for _, vm := range out {
		if err := fn(vm); err != nil {
			return err
		}
	}
	return nil
}

func clone(vm core.VM) core.VM {
	vm.Disks = slices.Clone(vm.Disks)
	vm.NICs = slices.Clone(vm.NICs)
	return vm
}

// PowerVM changes a VM's power state at once.
func (p *Provider) PowerVM(ctx context.Context, id core.VMID, op provider.PowerOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(ctx); err != nil {
		return err
	}
	i := slices.IndexFunc(p.vms, func(vm core.VM) bool { return vm.ID == id })
	if i < 0 {
		return fmt.Errorf("fake site %s: VM %s: %w", p.o.Name, id, errs.ErrNotFound)
	}
	vm := &p.vms[i]
	switch op {
	case provider.Start, provider.Reboot:
		vm.PowerState = core.Running
	case provider.Shutdown, provider.Stop:
		vm.PowerState = core.Halted
	default:
		return fmt.Errorf("fake site %s: power operation %q: %w", p.o.Name, op, errs.ErrInvalidArgument)
	}
	for _, ch := range p.watchers {
		select {
		case ch <- clone(*vm):
		default: // a slow watcher misses changes; the periodic refresh catches up
		}
	}
	return nil
}

// Watch calls fn with each VM whose power state changes, until ctx ends.
func (p *Provider) Watch(ctx context.Context, fn func(core.VM) error) error {
	p.mu.Lock()
	if err := p.check(ctx); err != nil {
		p.mu.Unlock()
		return err
	}
	ch := make(chan core.VM, 64)
	p.nextW++
	n := p.nextW
	p.watchers[n] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.watchers, n)
		p.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case vm := <-ch:
			if err := fn(vm); err != nil {
				return err
			}
		}
	}
}

// Close ends the connection; later calls fail.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}
