// Package xen is ferry's site driver for XenServer and XCP-ng pools (kind
// "xen"), over XAPI (internal/xapi).
//
// It implements provider.Provider and the optional Inventory,
// Snapshotter, DiskExporter, Importer, Watcher and Consoler.
//
//   - VMs are the pool's VM objects that are neither templates, snapshots
//     nor control domains; a VM's ID is its UUID, its disks are its VBDs of
//     type Disk (disk IDs are VDI UUIDs) in userdevice order, its tags are
//     the VM's tags, "key=value" (a tag without "=" has an empty value).
//   - Snapshot takes VM.snapshot (crash-consistent), tags it, and returns
//     the snapshot VM's UUID and its disks; with Config.EnableCBT it first
//     enables changed block tracking on the VM's disks.
//   - OpenDisk streams a VDI from GET /export_raw_vdi (format vhd, so that
//     only allocated blocks travel) as a random-access Image. With a base:
//     when both VDIs track changed blocks, the Image's extents are
//     VDI.list_changed_blocks(base, disk) and data comes from the delta
//     export (or the whole disk when the base's data was destroyed);
//     otherwise the extents and data are those of export_raw_vdi with
//     base, a differencing VHD of the blocks that changed.
//   - ImportVM creates each disk with VDI.create on the chosen SR (the
//     pool's default SR otherwise), writes it with PUT /import_raw_vdi
//     (vhd: only allocated blocks), creates the VM from a template-free
//     record (VCPUs, memory, BIOS or UEFI), its VBDs and its VIFs on the
//     mapped networks, and removes everything it created if any step fails
//     or ctx is cancelled.
//   - Watch follows event.from on class vm.
//   - ConsoleLog reads the text console of ferry's lab
//     (GET /console?session_id=&vm=, a documented lab extension). A real
//     pool has no such handler: the call returns errs.ErrUnimplemented.
//
// Everything else a pool cannot do returns errs.ErrUnimplemented ("not
// supported by this site").
package xen

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/xapi"
)

// Secret is a password: it never prints.
type Secret = xapi.Secret

// Config configures a connection to a pool.
type Config struct {
	// Name is the site's name in ferry; default the pool's name.
	Name core.SiteName
	// URL is the pool master (or any member: ferry follows
	// HOST_IS_SLAVE): https://host[:port].
	URL      string
	User     string
	Password Secret
	// CAFile, Fingerprint and Insecure choose how the pool's certificate
	// is checked (see xapi.Options); at most one.
	CAFile      string
	CAPEM       []byte // the CA certificates themselves, instead of CAFile
	Fingerprint string
	Insecure    bool
	// EnableCBT makes Snapshot enable changed block tracking on the VM's
	// disks before the first snapshot, so that later deltas come from
	// VDI.list_changed_blocks.
	EnableCBT bool
	// ImportFormat is how disks are sent to import_raw_vdi: "vhd" (the
	// default: only allocated blocks) or "raw".
	ImportFormat string
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// Provider is a connected pool.
type Provider struct {
	c    *xapi.Client
	cfg  Config
	log  *slog.Logger
	info provider.Info
}

var (
	_ provider.Provider     = (*Provider)(nil)
	_ provider.Inventory    = (*Provider)(nil)
	_ provider.Snapshotter  = (*Provider)(nil)
	_ provider.DiskExporter = (*Provider)(nil)
	_ provider.Importer     = (*Provider)(nil)
	_ provider.Watcher      = (*Provider)(nil)
	_ provider.Consoler     = (*Provider)(nil)
)

// errUnsupported is wrapped by everything a pool cannot do.
func unsupported(what string) error {
	return fmt.Errorf("xen: %s: not supported by this site: %w", what, errs.ErrUnimplemented)
}

// Open logs in to the pool and reads what Info reports (pool name, master
// version).
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Provider, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.ImportFormat {
	case "":
		cfg.ImportFormat = xapi.FormatVHD
	case xapi.FormatVHD, xapi.FormatRaw:
	default:
		return nil, fmt.Errorf("xen: import format %q: want vhd or raw: %w", cfg.ImportFormat, errs.ErrInvalidArgument)
	}
	c, err := xapi.Dial(ctx, cfg.URL, &xapi.Options{
		User: cfg.User, Password: cfg.Password, CAFile: cfg.CAFile, CAPEM: cfg.CAPEM, Fingerprint: cfg.Fingerprint,
		Insecure: cfg.Insecure, Logger: logger, Transport: cfg.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("xen: open %s: %w", redact(cfg.URL), err)
	}
	p := &Provider{c: c, cfg: cfg, log: logger.With("provider", "xen")}
	if err := p.describe(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return p, nil
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// describe fills Info from the pool and its master.
func (p *Provider) describe(ctx context.Context) error {
	pools, err := p.c.Pool().GetAllRecords(ctx)
	if err != nil {
		return fmt.Errorf("xen: read the pool: %w", err)
	}
	var pool xapi.PoolRecord
	for _, r := range pools {
		pool = r
	}
	version := ""
	if !pool.Master.IsNull() {
		h, err := p.c.Host().GetRecord(ctx, pool.Master)
		if err != nil {
			return fmt.Errorf("xen: read the pool master: %w", err)
		}
		sv := h.SoftwareVersion
		version = cmp.Or(sv["product_version"], sv["platform_version"], sv["xapi"])
		if b := sv["product_brand"]; b != "" && version != "" {
			version = b + " " + version
		}
		version += fmt.Sprintf(" (API %d.%d)", h.APIVersionMajor, h.APIVersionMinor)
	}
	name := p.cfg.Name
	if name == "" {
		name = core.SiteName(cmp.Or(pool.NameLabel, p.c.Addr()))
	}
	p.info = provider.Info{
		Name: name, Kind: provider.KindXen, Endpoint: p.c.URL(), Version: strings.TrimSpace(version),
		Capabilities: provider.Capabilities{
			Snapshot: true, ExportDisk: true, ChangedBlocks: true, ImportVM: true, Events: true,
			ConsoleLog: true, StorageListing: true,
		},
	}
	return nil
}

// Info describes the pool.
func (p *Provider) Info() provider.Info { return p.info }

// Client returns the XAPI client, for what the provider contract does not
// cover (whole-VM XVA export and import, say).
func (p *Provider) Client() *xapi.Client { return p.c }

// Close logs out.
func (p *Provider) Close() error { return p.c.Close() }

// inventory is a consistent read of what VMs refer to.
type inventory struct {
	vbds  map[xapi.VBDRef]xapi.VBDRecord
	vdis  map[xapi.VDIRef]xapi.VDIRecord
	srs   map[xapi.SRRef]xapi.SRRecord
	vifs  map[xapi.VIFRef]xapi.VIFRecord
	nets  map[xapi.NetworkRef]xapi.NetworkRecord
	hosts map[xapi.HostRef]xapi.HostRecord
}

func (p *Provider) readInventory(ctx context.Context) (*inventory, error) {
	inv := &inventory{}
	var err error
	if inv.vbds, err = p.c.VBD().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	if inv.vdis, err = p.c.VDI().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	if inv.srs, err = p.c.SR().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	if inv.vifs, err = p.c.VIF().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	if inv.nets, err = p.c.Network().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	if inv.hosts, err = p.c.Host().GetAllRecords(ctx); err != nil {
		return nil, err
	}
	return inv, nil
}

// isVM tells VMs from templates, snapshots and control domains.
func isVM(r *xapi.VMRecord) bool { return !r.IsATemplate && !r.IsASnapshot && !r.IsControlDomain }

func powerState(s xapi.VMPowerState) core.PowerState {
	switch s {
	case xapi.VMPowerStateRunning:
		return core.Running
	case xapi.VMPowerStateHalted:
		return core.Halted
	case xapi.VMPowerStateSuspended:
		return core.Suspended
	case xapi.VMPowerStatePaused:
		return core.Paused
	}
	return core.Unknown
}

func firmware(r *xapi.VMRecord) core.Firmware {
	if strings.EqualFold(r.HVMBootParams["firmware"], "uefi") {
		return core.UEFI
	}
	return core.BIOS
}

// parseTags reads "key=value" tags.
func parseTags(tags []string) map[string]string {
	if len(tags) == 0 {
		return nil
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		k, v, _ := strings.Cut(t, "=")
		m[k] = v
	}
	return m
}

// hasTags reports whether XAPI tags (key=value strings) hold every pair of
// want.
func hasTags(tags []string, want map[string]string) bool {
	have := parseTags(tags)
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func formatTags(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// disksOf returns a VM's disks (VBDs of type Disk with a VDI), in
// userdevice order.
func (inv *inventory) disksOf(r *xapi.VMRecord) []core.Disk {
	var out []core.Disk
	for _, ref := range r.VBDs {
		vbd, ok := inv.vbds[ref]
		if !ok || vbd.Type != xapi.VBDTypeDisk || vbd.Empty || vbd.VDI.IsNull() {
			continue
		}
		vdi, ok := inv.vdis[vbd.VDI]
		if !ok {
			continue
		}
		pos, _ := strconv.Atoi(vbd.Userdevice)
		out = append(out, core.Disk{
			ID: core.DiskID(vdi.UUID), Name: vdi.NameLabel, Size: vdi.VirtualSize, Position: pos,
			Bootable: vbd.Bootable, Storage: inv.srs[vdi.SR].NameLabel,
		})
	}
	slices.SortStableFunc(out, func(a, b core.Disk) int { return cmp.Compare(a.Position, b.Position) })
	return out
}

func (inv *inventory) nicsOf(r *xapi.VMRecord) []core.NIC {
	type nic struct {
		dev int
		n   core.NIC
	}
	var ns []nic
	for _, ref := range r.VIFs {
		vif, ok := inv.vifs[ref]
		if !ok {
			continue
		}
		dev, _ := strconv.Atoi(vif.Device)
		ns = append(ns, nic{dev, core.NIC{Name: "eth" + vif.Device, Network: inv.nets[vif.Network].NameLabel, MAC: vif.MAC}})
	}
	slices.SortStableFunc(ns, func(a, b nic) int { return cmp.Compare(a.dev, b.dev) })
	out := make([]core.NIC, len(ns))
	for i, n := range ns {
		out[i] = n.n
	}
	return out
}

func (p *Provider) toVM(r *xapi.VMRecord, inv *inventory) core.VM {
	cpus := int(r.VCPUsAtStartup)
	if cpus == 0 {
		cpus = int(r.VCPUsMax)
	}
	vm := core.VM{
		Site: p.info.Name, ID: core.VMID(r.UUID), Name: r.NameLabel, PowerState: powerState(r.PowerState),
		CPUs: cpus, MemoryBytes: r.MemoryStaticMax, Firmware: firmware(r),
		Disks: inv.disksOf(r), NICs: inv.nicsOf(r), Tags: parseTags(r.Tags),
	}
	if vm.Disks == nil {
		vm.Disks = []core.Disk{}
	}
	if h, ok := inv.hosts[r.ResidentOn]; ok && !r.ResidentOn.IsNull() {
		vm.Host = h.NameLabel
	}
	return vm
}

func matches(f provider.Filter, vm core.VM) bool {
	if f.Name != "" && vm.Name != f.Name {
		return false
	}
	if f.PowerState != "" && vm.PowerState != f.PowerState {
		return false
	}
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, vm.ID) {
		return false
	}
	return true
}

// ListVMs lists the pool's VMs, by name then ID.
func (p *Provider) ListVMs(ctx context.Context, f provider.Filter, fn func(core.VM) error) error {
	recs, err := p.c.VM().GetAllRecords(ctx)
	if err != nil {
		return fmt.Errorf("xen: list VMs: %w", err)
	}
	inv, err := p.readInventory(ctx)
	if err != nil {
		return fmt.Errorf("xen: list VMs: %w", err)
	}
	var vms []core.VM
	for _, r := range recs {
		if !isVM(&r) {
			continue
		}
		if vm := p.toVM(&r, inv); matches(f, vm) {
			vms = append(vms, vm)
		}
	}
	slices.SortFunc(vms, func(a, b core.VM) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })
	for _, vm := range vms {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("xen: list VMs: %w", err)
		}
		if err := fn(vm); err != nil {
			return err
		}
	}
	return nil
}

// vmByID finds a VM (not a template, snapshot or control domain) by UUID.
func (p *Provider) vmByID(ctx context.Context, id core.VMID) (xapi.VMRef, xapi.VMRecord, error) {
	ref, rec, err := p.objByID(ctx, string(id))
	if err != nil {
		return "", rec, fmt.Errorf("xen: VM %s: %w", id, err)
	}
	if !isVM(&rec) {
		return "", rec, fmt.Errorf("xen: VM %s: a template, snapshot or control domain, not a VM: %w", id, errs.ErrNotFound)
	}
	return ref, rec, nil
}

func (p *Provider) objByID(ctx context.Context, id string) (xapi.VMRef, xapi.VMRecord, error) {
	if id == "" {
		return "", xapi.VMRecord{}, fmt.Errorf("no ID given: %w", errs.ErrInvalidArgument)
	}
	ref, err := p.c.VM().GetByUUID(ctx, id)
	if err != nil {
		return "", xapi.VMRecord{}, err
	}
	rec, err := p.c.VM().GetRecord(ctx, ref)
	return ref, rec, err
}

// PowerVM changes a VM's power state. Asking for the state the VM is in
// succeeds; the call returns once xapi's task has finished.
func (p *Provider) PowerVM(ctx context.Context, id core.VMID, op provider.PowerOp) error {
	ref, rec, err := p.vmByID(ctx, id)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("xen: %s VM %s", op, id)
	state := rec.PowerState
	var call func() (xapi.TaskRef, error)
	vm := p.c.VM()
	switch op {
	case provider.Start:
		switch state {
		case xapi.VMPowerStateRunning:
			return nil
		case xapi.VMPowerStatePaused:
			call = func() (xapi.TaskRef, error) { return vm.AsyncUnpause(ctx, ref) }
		case xapi.VMPowerStateSuspended:
			call = func() (xapi.TaskRef, error) { return vm.AsyncResume(ctx, ref, false, false) }
		default:
			call = func() (xapi.TaskRef, error) { return vm.AsyncStart(ctx, ref, false, false) }
		}
	case provider.Shutdown, provider.Stop:
		switch {
		case state == xapi.VMPowerStateHalted:
			return nil
		case op == provider.Shutdown && state == xapi.VMPowerStateRunning:
			call = func() (xapi.TaskRef, error) { return vm.AsyncCleanShutdown(ctx, ref) }
		default:
			call = func() (xapi.TaskRef, error) { return vm.AsyncHardShutdown(ctx, ref) }
		}
	case provider.Reboot:
		if state != xapi.VMPowerStateRunning {
			return fmt.Errorf("%s: the VM is %s, not running: %w", what, strings.ToLower(string(state)), errs.ErrFailedPrecondition)
		}
		call = func() (xapi.TaskRef, error) { return vm.AsyncCleanReboot(ctx, ref) }
	default:
		return fmt.Errorf("%s: unknown power operation: %w", what, errs.ErrInvalidArgument)
	}
	err = p.runTask(ctx, call, nil)
	if err != nil && xapi.HasCode(err, "VM_BAD_POWER_STATE") {
		// Raced with another change: fine if the VM is where asked.
		if now, gerr := vm.GetPowerState(ctx, ref); gerr == nil && reached(op, now) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func reached(op provider.PowerOp, s xapi.VMPowerState) bool {
	switch op {
	case provider.Start:
		return s == xapi.VMPowerStateRunning
	case provider.Shutdown, provider.Stop:
		return s == xapi.VMPowerStateHalted
	}
	return false
}

// runTask starts an Async call and waits for its task, destroying it
// afterwards.
func (p *Provider) runTask(ctx context.Context, start func() (xapi.TaskRef, error), rep progress.Reporter) error {
	_, err := p.runTaskResult(ctx, start, rep)
	return err
}

func (p *Provider) runTaskResult(ctx context.Context, start func() (xapi.TaskRef, error), rep progress.Reporter) (string, error) {
	task, err := start()
	if err != nil {
		return "", err
	}
	defer p.destroyTask(task)
	return p.c.WaitTask(ctx, task, rep)
}

func (p *Provider) destroyTask(task xapi.TaskRef) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.c.Task().Destroy(ctx, task); err != nil && !errs.Is(err, errs.NotFound) {
		p.log.Debug("task.destroy failed", "err", err)
	}
}

// ListStorage lists the SRs VM disks can go to (not ISO libraries or the
// tools SR).
func (p *Provider) ListStorage(ctx context.Context) ([]core.Storage, error) {
	srs, err := p.c.SR().GetAllRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("xen: list storage: %w", err)
	}
	var out []core.Storage
	for _, r := range srs {
		if r.ContentType == "iso" || r.IsToolsSR || r.Type == "udev" {
			continue
		}
		out = append(out, core.Storage{ID: r.UUID, Name: r.NameLabel, Type: r.Type, SizeBytes: r.PhysicalSize,
			FreeBytes: max(r.PhysicalSize-r.PhysicalUtilisation, 0)})
	}
	slices.SortFunc(out, func(a, b core.Storage) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

// ListNetworks lists the networks VMs can attach to (not xapi's internal
// ones).
func (p *Provider) ListNetworks(ctx context.Context) ([]core.Network, error) {
	nets, err := p.c.Network().GetAllRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("xen: list networks: %w", err)
	}
	var out []core.Network
	for _, r := range nets {
		if r.OtherConfig["is_host_internal_management_network"] == "true" || r.OtherConfig["is_guest_installer_network"] == "true" {
			continue
		}
		out = append(out, core.Network{ID: r.UUID, Name: r.NameLabel})
	}
	slices.SortFunc(out, func(a, b core.Network) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

// ConsoleLog returns what the VM printed on its text console, from the
// lab's GET /console extension; a pool without it returns
// errs.ErrUnimplemented.
func (p *Provider) ConsoleLog(ctx context.Context, id core.VMID) (string, error) {
	_, rec, err := p.vmByID(ctx, id)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(p.c.URL())
	if err != nil {
		return "", fmt.Errorf("xen: console of VM %s: %w", id, err)
	}
	u.Path = "/console"
	u.RawQuery = url.Values{"session_id": {p.c.SessionRef().Reveal()}, "vm": {rec.UUID}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("xen: console of VM %s: %w", id, err)
	}
	resp, err := p.httpClient().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("xen: console of VM %s: %w", id, ctx.Err())
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL holds the session
		}
		return "", fmt.Errorf("xen: console of VM %s: %v: %w", id, err, errs.ErrUnavailable)
	}
	defer resp.Body.Close()
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK || mt != "text/plain" {
		return "", unsupported("console log")
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", fmt.Errorf("xen: console of VM %s: %v: %w", id, err, errs.ErrUnavailable)
	}
	return string(b), nil
}

func (p *Provider) httpClient() *http.Client {
	if p.cfg.Transport != nil {
		return &http.Client{Transport: p.cfg.Transport}
	}
	return p.c.HTTPClient()
}

// DeleteVM removes a VM and the disks attached to it (hard shutdown
// first if it runs). It is not part of the provider contract; the
// conformance suite uses it to clean up the VMs it imports.
func (p *Provider) DeleteVM(ctx context.Context, id core.VMID) error {
	ref, rec, err := p.vmByID(ctx, id)
	if err != nil {
		return err
	}
	if rec.PowerState != xapi.VMPowerStateHalted {
		if err := p.runTask(ctx, func() (xapi.TaskRef, error) { return p.c.VM().AsyncHardShutdown(ctx, ref) }, nil); err != nil {
			return fmt.Errorf("xen: delete VM %s: shut down: %w", id, err)
		}
	}
	vdis := p.diskVDIs(ctx, rec.VBDs)
	if err := p.c.VM().Destroy(ctx, ref); err != nil {
		return fmt.Errorf("xen: delete VM %s: %w", id, err)
	}
	var errList []error
	for _, v := range vdis {
		if err := p.c.VDI().Destroy(ctx, v); err != nil && !errs.Is(err, errs.NotFound) {
			errList = append(errList, err)
		}
	}
	if err := errors.Join(errList...); err != nil {
		return fmt.Errorf("xen: delete VM %s: remove its disks: %w", id, err)
	}
	return nil
}

// diskVDIs returns the VDIs of a VM's disk VBDs, in userdevice order.
func (p *Provider) diskVDIs(ctx context.Context, vbds []xapi.VBDRef) []xapi.VDIRef {
	type d struct {
		pos int
		vdi xapi.VDIRef
	}
	var ds []d
	for _, ref := range vbds {
		vbd, err := p.c.VBD().GetRecord(ctx, ref)
		if err != nil || vbd.Type != xapi.VBDTypeDisk || vbd.Empty || vbd.VDI.IsNull() {
			continue
		}
		pos, _ := strconv.Atoi(vbd.Userdevice)
		ds = append(ds, d{pos, vbd.VDI})
	}
	slices.SortStableFunc(ds, func(a, b d) int { return cmp.Compare(a.pos, b.pos) })
	out := make([]xapi.VDIRef, len(ds))
	for i, x := range ds {
		out[i] = x.vdi
	}
	return out
}

// OpenDisk opens a VDI (by UUID) as an Image, optionally as the changes
// since base (an earlier snapshot of the same disk).
func (p *Provider) OpenDisk(ctx context.Context, d core.DiskID, base core.DiskID) (disk.Image, error) {
	what := fmt.Sprintf("xen: open disk %s", d)
	if d == "" {
		return nil, fmt.Errorf("%s: no ID given: %w", what, errs.ErrInvalidArgument)
	}
	ref, err := p.c.VDI().GetByUUID(ctx, string(d))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	rec, err := p.c.VDI().GetRecord(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if rec.Type == xapi.VDITypeCBTMetadata {
		return nil, fmt.Errorf("%s: its data was destroyed (only its changed-block metadata is left): %w", what, errs.ErrFailedPrecondition)
	}
	exportOf := func(base xapi.VDIRef) func(context.Context) (disk.Stream, error) {
		return func(ctx context.Context) (disk.Stream, error) {
			return p.c.ExportRawVDI(ctx, ref, xapi.FormatVHD, base)
		}
	}
	name := "xapi:vdi/" + rec.UUID
	if base == "" {
		im := newStreamImage(name, rec.VirtualSize, exportOf(""))
		if err := im.start(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return im, nil
	}
	bref, err := p.c.VDI().GetByUUID(ctx, string(base))
	if err != nil {
		return nil, fmt.Errorf("%s: base %s: %w", what, base, err)
	}
	brec, err := p.c.VDI().GetRecord(ctx, bref)
	if err != nil {
		return nil, fmt.Errorf("%s: base %s: %w", what, base, err)
	}
	if brec.VirtualSize != rec.VirtualSize {
		return nil, fmt.Errorf("%s: base %s is %d bytes, the disk %d: %w", what, base, brec.VirtualSize, rec.VirtualSize, errs.ErrInvalidArgument)
	}
	name += "@changes-since-" + brec.UUID
	baseHasData := brec.Type != xapi.VDITypeCBTMetadata
	if rec.CBTEnabled && brec.CBTEnabled {
		changed, err := p.c.ChangedBlocks(ctx, bref, ref)
		if err == nil {
			var im *streamImage
			if baseHasData {
				im = newStreamImage(name, rec.VirtualSize, exportOf(bref))
				// Blocks CBT marks but the delta leaves out read from the
				// whole disk, never as zeros.
				im.fallback = newStreamImage(name+"(full)", rec.VirtualSize, exportOf(""))
			} else {
				im = newStreamImage(name, rec.VirtualSize, exportOf(""))
			}
			im.fixed = changed
			im.info.Specific = map[string]any{"changed-blocks": "cbt"}
			if len(changed) == 0 {
				// Nothing changed: nothing to read.
				im.open = func(context.Context) (disk.Stream, error) { return emptyStream(rec.VirtualSize), nil }
			}
			if err := im.start(ctx); err != nil {
				im.Close()
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			return im, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", what, ctx.Err())
		}
		p.log.Warn("changed block tracking failed; using the delta export", "disk", string(d), "err", err)
	}
	if !baseHasData {
		return nil, fmt.Errorf("%s: base %s has no data left and the disks do not track changed blocks: %w", what, base, errs.ErrFailedPrecondition)
	}
	im := newStreamImage(name, rec.VirtualSize, exportOf(bref))
	if err := im.start(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return im, nil
}

// emptyStream is a stream with no runs.
type emptyStreamT struct{ size int64 }

func emptyStream(size int64) disk.Stream { return &emptyStreamT{size} }

func (e *emptyStreamT) Size() int64                                 { return e.size }
func (e *emptyStreamT) Info() disk.Info                             { return disk.Info{Format: "raw", VirtualSize: e.size} }
func (e *emptyStreamT) Close() error                                { return nil }
func (e *emptyStreamT) Next(context.Context) (int64, []byte, error) { return 0, nil, io.EOF }
