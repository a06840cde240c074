package xenlab

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// allowedOps lists a VM's allowed_operations in a power state.
func allowedOps(vm *object, state string) []any {
	if vm.bool("is_a_template") || vm.bool("is_a_snapshot") {
		return []any{"clone", "copy", "export", "destroy", "provision", "metadata_export"}
	}
	var ops []string
	switch state {
	case "Halted":
		ops = []string{"start", "start_on", "clone", "copy", "snapshot", "export", "destroy", "make_into_template",
			"changing_VCPUs", "changing_memory_limits", "changing_static_range", "changing_dynamic_range", "metadata_export"}
	case "Running":
		ops = []string{"clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "suspend", "pause",
			"snapshot", "checkpoint", "changing_dynamic_range", "changing_VCPUs_live"}
	case "Paused":
		ops = []string{"unpause", "hard_shutdown", "hard_reboot", "snapshot"}
	case "Suspended":
		ops = []string{"resume", "resume_on", "hard_shutdown", "snapshot", "clone", "copy", "export"}
	}
	out := make([]any, len(ops))
	for i, o := range ops {
		out[i] = o
	}
	return out
}

// setPowerStateLocked moves a VM to state and updates what goes with it:
// resident_on, domid, attached VBDs and VIFs, metrics, the host's
// resident_VMs.
func (s *Server) setPowerStateLocked(vm *object, state string) {
	prev := vm.str("power_state")
	host := s.masterLocked()
	running := state != "Halted" && state != "Suspended"
	resident := nullRef
	if state != "Halted" && host != nil {
		resident = host.Ref
	}
	domid := int64(-1)
	if running {
		domid = vm.int("domid")
		if domid <= 0 {
			domid = 1
			for _, o := range s.db.all("VM") {
				domid = max(domid, o.int("domid")+1)
			}
		}
	}
	s.db.set(vm, "power_state", state, "resident_on", resident, "domid", domid, "allowed_operations", allowedOps(vm, state))
	for _, r := range vm.refs("VBDs") {
		if b := s.db.objs[r]; b != nil && b.bool("currently_attached") != (state != "Halted") {
			s.db.set(b, "currently_attached", state != "Halted")
		}
	}
	for _, r := range vm.refs("VIFs") {
		if v := s.db.objs[r]; v != nil && v.bool("currently_attached") != running {
			s.db.set(v, "currently_attached", running)
		}
	}
	if m := s.db.objs[vm.str("metrics")]; m != nil && prev == "Halted" && state != "Halted" {
		s.db.set(m, "start_time", xapiTime(time.Now()), "VCPUs_number", vm.int("VCPUs_at_startup"),
			"memory_actual", vm.int("memory_static_max"))
	}
	if host != nil {
		if state == "Halted" {
			s.db.delRef(host, "resident_VMs", vm.Ref)
		} else {
			s.db.addRef(host, "resident_VMs", vm.Ref)
		}
	}
}

func badPower(vm *object, expected string) error {
	return apiErr(errBadPowerState, vm.Ref, strings.ToLower(expected), strings.ToLower(vm.str("power_state")))
}

func (s *Server) vmCreate(c *call) (any, error) {
	rec, err := s.ctorRecord("VM", c.args[0].(map[string]any))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := checkMemoryOrder(rec["memory_static_min"].(int64), rec["memory_dynamic_min"].(int64), rec["memory_dynamic_max"].(int64), rec["memory_static_max"].(int64)); err != nil {
		return nil, err
	}
	if rec["VCPUs_at_startup"].(int64) < 1 || rec["VCPUs_at_startup"].(int64) > rec["VCPUs_max"].(int64) {
		return nil, apiErr(errInvalidValue, "VCPUs_at_startup", strconv.FormatInt(rec["VCPUs_at_startup"].(int64), 10))
	}
	rec["power_state"] = "Halted"
	if dt, _ := rec["domain_type"].(string); dt == "" || dt == "unspecified" {
		rec["domain_type"] = "hvm"
	}
	if _, ok := rec["memory_target"]; !ok {
		rec["memory_target"] = rec["memory_dynamic_max"]
	}
	vm := s.insertVMLocked(rec)
	return vm.Ref, s.saveLocked()
}

// insertVMLocked creates a VM with its metrics object.
func (s *Server) insertVMLocked(rec map[string]any) *object {
	m := s.db.insert("VM_metrics", map[string]any{
		"memory_actual": int64(0), "VCPUs_number": int64(0), "last_updated": xapiTime(time.Now()),
	})
	rec["metrics"] = m.Ref
	rec["domid"] = int64(-1)
	rec["resident_on"] = nullRef
	if _, ok := rec["generation_id"]; !ok {
		rec["generation_id"] = "0:0"
	}
	vm := s.db.insert("VM", rec)
	s.db.set(vm, "allowed_operations", allowedOps(vm, vm.str("power_state")))
	return vm
}

func checkMemoryOrder(smin, dmin, dmax, smax int64) error {
	if !(smin <= dmin && dmin <= dmax && dmax <= smax) {
		return apiErr("MEMORY_CONSTRAINT_VIOLATION_ORDER")
	}
	return nil
}

func (s *Server) vmDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if st := vm.str("power_state"); st != "Halted" {
		return nil, badPower(vm, "Halted")
	}
	if ops := vm.smap("current_operations"); len(ops) > 0 {
		for k, v := range ops {
			return nil, apiErr(errOtherOperation, "VM", vm.Ref, fmt.Sprint(v), k)
		}
	}
	s.destroyVMLocked(vm)
	return "", s.saveLocked()
}

// destroyVMLocked removes a VM, its VBDs, VIFs and metrics (not its
// VDIs, as xapi).
func (s *Server) destroyVMLocked(vm *object) {
	for _, r := range vm.refs("VBDs") {
		if b := s.db.objs[r]; b != nil {
			s.removeVBDLocked(b)
		}
	}
	for _, r := range vm.refs("VIFs") {
		if v := s.db.objs[r]; v != nil {
			s.removeVIFLocked(v)
		}
	}
	if m := s.db.objs[vm.str("metrics")]; m != nil {
		s.db.remove(m)
	}
	if parent := s.db.objs[vm.str("snapshot_of")]; parent != nil {
		s.db.delRef(parent, "snapshots", vm.Ref)
	}
	s.db.remove(vm)
}

func (s *Server) vmStart(c *call) (any, error) {
	return s.startVM(c, c.args[0].(string), c.args[1].(bool))
}

func (s *Server) vmStartOn(c *call) (any, error) {
	s.mu.Lock()
	_, err := s.db.get("host", c.args[1].(string))
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.startVM(c, c.args[0].(string), c.args[2].(bool))
}

func (s *Server) startVM(c *call, ref string, paused bool) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", ref)
	if err != nil {
		return nil, err
	}
	if vm.bool("is_a_template") || vm.bool("is_a_snapshot") {
		return nil, apiErr(errVMIsTemplate, vm.Ref)
	}
	if vm.str("power_state") != "Halted" {
		return nil, badPower(vm, "Halted")
	}
	if err := s.vmBusyLocked(vm); err != nil {
		return nil, err
	}
	if err := s.startGuestLocked(c.ctx, vm, paused); err != nil {
		return nil, err
	}
	state := "Running"
	if paused {
		state = "Paused"
	}
	s.setPowerStateLocked(vm, state)
	return "", s.saveLocked()
}

// vmBusyLocked refuses an operation while a VDI of the VM is being
// transferred.
func (s *Server) vmBusyLocked(vm *object) error {
	for _, r := range vm.refs("VBDs") {
		b := s.db.objs[r]
		if b == nil {
			continue
		}
		if vdi := s.db.objs[b.str("VDI")]; vdi != nil {
			for k, v := range vdi.smap("current_operations") {
				return apiErr(errOtherOperation, "VDI", vdi.Ref, fmt.Sprint(v), k)
			}
		}
	}
	return nil
}

// vmPower returns the handler of a power operation other than start.
func (s *Server) vmPower(op string) handlerFunc {
	return func(c *call) (any, error) {
		ref := c.args[0].(string)
		s.mu.Lock()
		vm, err := s.db.get("VM", ref)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if vm.bool("is_a_template") || vm.bool("is_a_snapshot") {
			s.mu.Unlock()
			return nil, apiErr(errVMIsTemplate, vm.Ref)
		}
		st := vm.str("power_state")
		from := map[string][]string{
			"clean_shutdown": {"Running"},
			"hard_shutdown":  {"Running", "Paused", "Suspended"},
			"clean_reboot":   {"Running"},
			"hard_reboot":    {"Running", "Paused"},
			"suspend":        {"Running"},
			"pause":          {"Running"},
			"unpause":        {"Paused"},
		}[op]
		if !slices.Contains(from, st) {
			s.mu.Unlock()
			return nil, badPower(vm, from[0])
		}
		p := s.vms[vm.Ref]
		s.mu.Unlock()
		return "", s.powerOp(c.ctx, vm.Ref, op, p)
	}
}

// powerOp performs a power operation on a VM whose state was checked.
// Waiting for a guest happens without the lock.
func (s *Server) powerOp(ctx context.Context, ref, op string, p *vmProc) error {
	switch op {
	case "clean_shutdown", "clean_reboot":
		if p != nil {
			p.powerdown(ctx, s.stopTO)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", ref)
	if err != nil {
		return err
	}
	p = s.vms[ref]
	switch op {
	case "clean_shutdown", "hard_shutdown":
		if p != nil {
			s.stopGuestLocked(ref, p, true)
		}
		s.consoleNote(vm, "VM "+strings.ReplaceAll(op, "_", " "))
		s.setPowerStateLocked(vm, "Halted")
	case "clean_reboot", "hard_reboot":
		if p != nil {
			s.stopGuestLocked(ref, p, true)
		}
		s.consoleNote(vm, "VM "+strings.ReplaceAll(op, "_", " "))
		if err := s.startGuestLocked(ctx, vm, false); err != nil {
			s.setPowerStateLocked(vm, "Halted")
			s.saveLocked()
			return err
		}
		s.setPowerStateLocked(vm, "Running")
	case "suspend":
		if p != nil {
			if err := p.qmp("stop"); err != nil {
				return internalErr("suspend VM %s: %v", vm.str("uuid"), err)
			}
		}
		s.consoleNote(vm, "VM suspended")
		s.setPowerStateLocked(vm, "Suspended")
	case "pause":
		if p != nil {
			if err := p.qmp("stop"); err != nil {
				return internalErr("pause VM %s: %v", vm.str("uuid"), err)
			}
		}
		s.setPowerStateLocked(vm, "Paused")
	case "unpause":
		if p != nil {
			if err := p.qmp("cont"); err != nil {
				return internalErr("unpause VM %s: %v", vm.str("uuid"), err)
			}
		}
		s.setPowerStateLocked(vm, "Running")
	}
	return s.saveLocked()
}

func (s *Server) vmResume(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if vm.str("power_state") != "Suspended" {
		return nil, badPower(vm, "Suspended")
	}
	state := "Running"
	if c.args[1].(bool) {
		state = "Paused"
	}
	if p := s.vms[vm.Ref]; p != nil && state == "Running" {
		if err := p.qmp("cont"); err != nil {
			return nil, internalErr("resume VM %s: %v", vm.str("uuid"), err)
		}
	}
	s.consoleNote(vm, "VM resumed")
	s.setPowerStateLocked(vm, state)
	return "", s.saveLocked()
}

func (s *Server) vmPowerStateReset(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if p := s.vms[vm.Ref]; p != nil {
		s.stopGuestLocked(vm.Ref, p, true)
	}
	s.setPowerStateLocked(vm, "Halted")
	return "", s.saveLocked()
}

func (s *Server) vmSetMemory(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if vm.str("power_state") != "Halted" {
		return nil, badPower(vm, "Halted")
	}
	v := c.args[1].(int64)
	if err := checkMemoryOrder(vm.int("memory_static_min"), v, v, v); err != nil {
		return nil, err
	}
	s.db.set(vm, "memory_static_max", v, "memory_dynamic_max", v, "memory_dynamic_min", v, "memory_target", v)
	return "", s.saveLocked()
}

func (s *Server) vmSetMemoryLimits(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if vm.str("power_state") != "Halted" {
		return nil, badPower(vm, "Halted")
	}
	smin, smax, dmin, dmax := c.args[1].(int64), c.args[2].(int64), c.args[3].(int64), c.args[4].(int64)
	if err := checkMemoryOrder(smin, dmin, dmax, smax); err != nil {
		return nil, err
	}
	s.db.set(vm, "memory_static_min", smin, "memory_static_max", smax, "memory_dynamic_min", dmin, "memory_dynamic_max", dmax, "memory_target", dmax)
	return "", s.saveLocked()
}

func (s *Server) vmSetMemoryField(field string) handlerFunc {
	return func(c *call) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		vm, err := s.db.get("VM", c.args[0].(string))
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(field, "memory_static") && vm.str("power_state") != "Halted" {
			return nil, badPower(vm, "Halted")
		}
		m := map[string]int64{}
		for _, f := range []string{"memory_static_min", "memory_dynamic_min", "memory_dynamic_max", "memory_static_max"} {
			m[f] = vm.int(f)
		}
		m[field] = c.args[1].(int64)
		if err := checkMemoryOrder(m["memory_static_min"], m["memory_dynamic_min"], m["memory_dynamic_max"], m["memory_static_max"]); err != nil {
			return nil, err
		}
		s.db.set(vm, field, c.args[1].(int64))
		return "", s.saveLocked()
	}
}

func (s *Server) vmSetVCPUs(field string) handlerFunc {
	return func(c *call) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		vm, err := s.db.get("VM", c.args[0].(string))
		if err != nil {
			return nil, err
		}
		if vm.str("power_state") != "Halted" {
			return nil, badPower(vm, "Halted")
		}
		v := c.args[1].(int64)
		max, startup := vm.int("VCPUs_max"), vm.int("VCPUs_at_startup")
		if field == "VCPUs_max" {
			max = v
		} else {
			startup = v
		}
		if v < 1 || startup > max || max > 64 {
			return nil, apiErr(errInvalidValue, field, strconv.FormatInt(v, 10))
		}
		s.db.set(vm, field, v)
		return "", s.saveLocked()
	}
}

func (s *Server) vmSetIsTemplate(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if vm.str("power_state") != "Halted" {
		return nil, badPower(vm, "Halted")
	}
	s.db.set(vm, "is_a_template", c.args[1].(bool))
	s.db.set(vm, "allowed_operations", allowedOps(vm, "Halted"))
	return "", s.saveLocked()
}

// vmSnapshot is VM.snapshot(vm, new_name[, ignore_vdis]): a snapshot VM
// (is_a_snapshot, is_a_template, snapshot_of) whose disks are snapshots
// of the VM's disks. A running QEMU guest is paused while its disks are
// copied, so the snapshot is crash consistent.
func (s *Server) vmSnapshot(c *call) (any, error) {
	ignore := map[string]bool{}
	for _, r := range c.args[2].([]any) {
		ignore[r.(string)] = true
	}
	return s.copyVM(c, c.args[0].(string), c.args[1].(string), true, ignore)
}

// vmClone is VM.clone(vm, new_name): a halted VM (or template) with
// copies of its disks.
func (s *Server) vmClone(c *call) (any, error) {
	return s.copyVM(c, c.args[0].(string), c.args[1].(string), false, nil)
}

func (s *Server) copyVM(c *call, ref, name string, snapshot bool, ignore map[string]bool) (any, error) {
	s.mu.Lock()
	vm, err := s.db.get("VM", ref)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if !snapshot && vm.str("power_state") != "Halted" && !vm.bool("is_a_template") {
		s.mu.Unlock()
		return nil, badPower(vm, "Halted")
	}
	if snapshot && (vm.bool("is_a_template") || vm.bool("is_a_snapshot")) {
		s.mu.Unlock()
		return nil, apiErr(errVMIsTemplate, vm.Ref)
	}
	if err := s.vmBusyLocked(vm); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	type diskCopy struct {
		vbd, vdi *object
	}
	var disks []diskCopy
	for _, r := range vm.refs("VBDs") {
		b := s.db.objs[r]
		if b == nil || b.str("type") == "CD" {
			continue
		}
		vdi := s.db.objs[b.str("VDI")]
		if vdi == nil || ignore[vdi.Ref] {
			continue
		}
		disks = append(disks, diskCopy{b, vdi})
	}
	opKey := c.task
	if opKey == "" {
		opKey = "OpaqueRef:" + newUUID()
	}
	op := "snapshot"
	if !snapshot {
		op = "clone"
	}
	vm.smap("current_operations")[opKey] = op
	s.db.touch(vm)
	p := s.vms[vm.Ref]
	s.mu.Unlock()

	if p != nil && vm.str("power_state") == "Running" {
		if err := p.qmp("stop"); err == nil {
			defer p.qmp("cont")
		}
	}
	var newVDIs []string
	cleanup := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range newVDIs {
			if o := s.db.objs[r]; o != nil {
				s.destroyVDILocked(o)
			}
		}
		if o := s.db.objs[ref]; o != nil {
			delete(o.smap("current_operations"), opKey)
			s.db.touch(o)
		}
		s.saveLocked()
	}
	for i, d := range disks {
		prog := func(f float64) { c.progress((float64(i) + f) / float64(len(disks))) }
		nv, err := s.copyVDI(c.ctx, d.vdi.Ref, snapshot, "", prog)
		if err != nil {
			cleanup()
			return nil, err
		}
		newVDIs = append(newVDIs, nv)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err = s.db.get("VM", ref)
	if err != nil {
		s.mu.Unlock()
		cleanup()
		s.mu.Lock()
		return nil, err
	}
	delete(vm.smap("current_operations"), opKey)
	s.db.touch(vm)
	rec := deepCopy(vm.Rec).(map[string]any)
	for _, f := range []string{"uuid", "VBDs", "VIFs", "snapshots", "children", "consoles", "current_operations", "metrics", "guest_metrics", "crash_dumps", "attached_PCIs", "VGPUs", "VTPMs", "VUSBs", "parent", "allowed_operations"} {
		delete(rec, f)
	}
	rec["name_label"] = name
	rec["power_state"] = "Halted"
	if snapshot {
		rec["is_a_snapshot"] = true
		rec["is_a_template"] = true
		rec["snapshot_of"] = vm.Ref
		rec["snapshot_time"] = xapiTime(time.Now())
	} else {
		rec["is_a_snapshot"] = false
		rec["snapshot_of"] = nullRef
	}
	nvm := s.insertVMLocked(rec)
	for i, d := range disks {
		b := deepCopy(d.vbd.Rec).(map[string]any)
		delete(b, "uuid")
		b["VM"], b["VDI"] = nvm.Ref, newVDIs[i]
		b["currently_attached"] = false
		b["current_operations"], b["allowed_operations"] = map[string]any{}, []any{}
		nb := s.db.insert("VBD", b)
		s.db.addRef(nvm, "VBDs", nb.Ref)
		if nv := s.db.objs[newVDIs[i]]; nv != nil {
			s.db.addRef(nv, "VBDs", nb.Ref)
		}
	}
	for _, r := range vm.refs("VBDs") { // CDs: copy the drive, empty
		if b := s.db.objs[r]; b != nil && b.str("type") == "CD" {
			nb := deepCopy(b.Rec).(map[string]any)
			delete(nb, "uuid")
			nb["VM"], nb["currently_attached"] = nvm.Ref, false
			x := s.db.insert("VBD", nb)
			s.db.addRef(nvm, "VBDs", x.Ref)
			if cd := s.db.objs[b.str("VDI")]; cd != nil {
				s.db.addRef(cd, "VBDs", x.Ref)
			}
		}
	}
	for _, r := range vm.refs("VIFs") {
		v := s.db.objs[r]
		if v == nil {
			continue
		}
		nv := deepCopy(v.Rec).(map[string]any)
		delete(nv, "uuid")
		nv["VM"], nv["currently_attached"] = nvm.Ref, false
		if !snapshot {
			nv["MAC"] = randomMAC()
		}
		x := s.db.insert("VIF", nv)
		s.db.addRef(nvm, "VIFs", x.Ref)
		if n := s.db.objs[v.str("network")]; n != nil {
			s.db.addRef(n, "VIFs", x.Ref)
		}
	}
	if snapshot {
		s.db.addRef(vm, "snapshots", nvm.Ref)
	}
	return nvm.Ref, s.saveLocked()
}
