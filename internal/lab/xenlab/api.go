package xenlab

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// handlers lists the explicitly implemented messages; implicit field
// accessors are served generically (lookupHandler).
func (s *Server) handlers() map[string]handlerFunc {
	return map[string]handlerFunc{
		"session.login_with_password": s.sessionLogin,
		"session.logout":              s.sessionLogout,
		"session.local_logout":        s.sessionLogout,

		"event.from":           s.eventFrom,
		"event.get_current_id": s.eventCurrentID,
		"event.inject":         s.eventInject,

		"task.cancel":  s.taskCancel,
		"task.create":  s.taskCreate,
		"task.destroy": s.taskDestroy,

		"VM.create":                       s.vmCreate,
		"VM.destroy":                      s.vmDestroy,
		"VM.start":                        s.vmStart,
		"VM.start_on":                     s.vmStartOn,
		"VM.clean_shutdown":               s.vmPower("clean_shutdown"),
		"VM.hard_shutdown":                s.vmPower("hard_shutdown"),
		"VM.shutdown":                     s.vmPower("clean_shutdown"),
		"VM.clean_reboot":                 s.vmPower("clean_reboot"),
		"VM.hard_reboot":                  s.vmPower("hard_reboot"),
		"VM.suspend":                      s.vmPower("suspend"),
		"VM.resume":                       s.vmResume,
		"VM.pause":                        s.vmPower("pause"),
		"VM.unpause":                      s.vmPower("unpause"),
		"VM.power_state_reset":            s.vmPowerStateReset,
		"VM.snapshot":                     s.vmSnapshot,
		"VM.clone":                        s.vmClone,
		"VM.set_memory":                   s.vmSetMemory,
		"VM.set_memory_limits":            s.vmSetMemoryLimits,
		"VM.set_memory_static_max":        s.vmSetMemoryField("memory_static_max"),
		"VM.set_memory_dynamic_max":       s.vmSetMemoryField("memory_dynamic_max"),
		"VM.set_memory_dynamic_min":       s.vmSetMemoryField("memory_dynamic_min"),
		"VM.set_memory_static_min":        s.vmSetMemoryField("memory_static_min"),
		"VM.set_VCPUs_max":                s.vmSetVCPUs("VCPUs_max"),
		"VM.set_VCPUs_at_startup":         s.vmSetVCPUs("VCPUs_at_startup"),
		"VM.set_is_a_template":            s.vmSetIsTemplate,
		"VM.import":                       s.vmImport,
		"VM.migrate_send":                 s.vmMigrateSend,
		"VM.get_data_sources":             s.vmDataSources,
		"VM.query_data_source":            s.vmQueryDataSource,
		"VM.retrieve_wlb_recommendations": s.vmWLB,

		"VBD.create":  s.vbdCreate,
		"VBD.destroy": s.vbdDestroy,
		"VBD.plug":    s.vbdPlug,
		"VBD.unplug":  s.vbdUnplug,
		"VIF.create":  s.vifCreate,
		"VIF.destroy": s.vifDestroy,

		"network.create":  s.networkCreate,
		"network.destroy": s.networkDestroy,

		"VDI.create":               s.vdiCreate,
		"VDI.destroy":              s.vdiDestroy,
		"VDI.snapshot":             s.vdiSnapshot,
		"VDI.clone":                s.vdiClone,
		"VDI.copy":                 s.vdiCopy,
		"VDI.enable_cbt":           s.vdiEnableCBT,
		"VDI.disable_cbt":          s.vdiDisableCBT,
		"VDI.data_destroy":         s.vdiDataDestroy,
		"VDI.list_changed_blocks":  s.vdiListChangedBlocks,
		"VDI.set_name_label":       s.vdiSetField("name_label"),
		"VDI.set_name_description": s.vdiSetField("name_description"),
		"VDI.get_nbd_info":         s.vdiNBDInfo,

		"SR.scan":   s.srScan,
		"SR.update": s.srScan,
	}
}

// lookupHandler returns the handler of a message: an explicit one, or a
// generic one for implicit accessors. Nil means the lab does not
// implement the message.
func (s *Server) lookupHandler(cls string, md *messageDef) handlerFunc {
	if h := s.api[cls+"."+md.Name]; h != nil {
		return h
	}
	if !md.Implicit {
		return nil
	}
	ci := s.schema.classes[cls]
	switch name := md.Name; {
	case name == "get_all":
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			out := []any{}
			for _, o := range s.db.all(cls) {
				out = append(out, o.Ref)
			}
			return out, nil
		}
	case name == "get_all_records":
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			out := map[string]any{}
			for _, o := range s.db.all(cls) {
				out[o.Ref] = s.recordLocked(o)
			}
			return out, nil
		}
	case name == "get_record":
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			return s.recordLocked(o), nil
		}
	case name == "get_by_uuid":
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			u := c.args[0].(string)
			if o := s.db.byUUID(cls, u); o != nil {
				return o.Ref, nil
			}
			return nil, apiErr(errUUIDInvalid, cls, u)
		}
	case name == "get_by_name_label":
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			out := []any{}
			for _, o := range s.db.all(cls) {
				if o.str("name_label") == c.args[0].(string) {
					out = append(out, o.Ref)
				}
			}
			return out, nil
		}
	case strings.HasPrefix(name, "get_") && ci.fields[name[4:]] != nil:
		field := name[4:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			return s.recordLocked(o)[field], nil
		}
	case strings.HasPrefix(name, "set_") && ci.fields[name[4:]] != nil:
		field := name[4:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			s.db.set(o, field, c.args[1])
			return "", s.saveLocked()
		}
	case strings.HasPrefix(name, "add_to_") && ci.fields[name[7:]] != nil:
		field := name[7:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			m := o.smap(field)
			k := c.args[1].(string)
			if _, ok := m[k]; ok {
				return nil, apiErr(errMapDuplicateKey, cls, field, o.str("uuid"), k)
			}
			m[k] = c.args[2]
			s.db.touch(o)
			return "", s.saveLocked()
		}
	case strings.HasPrefix(name, "remove_from_") && ci.fields[name[12:]] != nil:
		field := name[12:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			m := o.smap(field)
			if _, ok := m[c.args[1].(string)]; ok {
				delete(m, c.args[1].(string))
				s.db.touch(o)
			}
			return "", s.saveLocked()
		}
	case strings.HasPrefix(name, "add_") && ci.fields[name[4:]] != nil:
		field := name[4:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			a, _ := o.Rec[field].([]any)
			if !slices.Contains(a, c.args[1]) {
				o.Rec[field] = append(a, c.args[1])
				s.db.touch(o)
			}
			return "", s.saveLocked()
		}
	case strings.HasPrefix(name, "remove_") && ci.fields[name[7:]] != nil:
		field := name[7:]
		return func(c *call) (any, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			o, err := s.db.get(cls, c.args[0].(string))
			if err != nil {
				return nil, err
			}
			a, _ := o.Rec[field].([]any)
			out := slices.DeleteFunc(slices.Clone(a), func(e any) bool { return e == c.args[1] })
			if len(out) != len(a) {
				o.Rec[field] = out
				s.db.touch(o)
			}
			return "", s.saveLocked()
		}
	}
	return nil
}

// recordLocked returns a copy of o's record for the wire, with computed
// fields brought up to date.
func (s *Server) recordLocked(o *object) map[string]any {
	switch o.Class {
	case "SR":
		s.refreshSRLocked(o)
	case "host_metrics":
		var used int64
		for _, vm := range s.db.all("VM") {
			if vm.str("power_state") != "Halted" {
				used += vm.int("memory_static_max")
			}
		}
		o.Rec["memory_free"] = max(o.int("memory_total")-used, 0)
	}
	return deepCopy(o.Rec).(map[string]any)
}

func (s *Server) validSession(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.byClass["session"][ref] != nil
}

func (s *Server) sessionLogin(c *call) (any, error) {
	user, pw := c.args[0].(string), c.args[1].(string)
	if !s.checkPassword(user, pw) {
		s.log.Info("login refused", "user", user)
		return nil, apiErr(errAuthFailed, user, "Authentication failure")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := s.loginLocked(user, c.args[3].(string))
	s.log.Debug("login", "user", user, "session", Secret(ref))
	return ref, s.saveLocked()
}

func (s *Server) loginLocked(user, originator string) string {
	host := s.masterLocked()
	now := xapiTime(time.Now())
	sess := s.db.insert("session", map[string]any{
		"this_host":          host.Ref,
		"last_active":        now,
		"validation_time":    now,
		"is_local_superuser": true,
		"auth_user_name":     user,
		"originator":         originator,
	})
	return sess.Ref
}

func (s *Server) sessionLogout(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.db.byClass["session"][c.session]; o != nil {
		s.db.remove(o)
	}
	return "", s.saveLocked()
}

func (s *Server) logoutLocked(ref string) {
	if o := s.db.byClass["session"][ref]; o != nil {
		s.db.remove(o)
	}
}

// ctorRecord checks the argument record of an implicit create message:
// required constructor fields must be there, every field must have its
// datamodel type. Fields not in the constructor are ignored, as xapi does.
func (s *Server) ctorRecord(cls string, args map[string]any) (map[string]any, error) {
	ci := s.schema.classes[cls]
	out := map[string]any{}
	for name, req := range ci.ctor {
		raw, ok := args[name]
		if !ok {
			if req {
				return nil, apiErr(errFieldType, name)
			}
			continue
		}
		f := ci.fields[name]
		if f == nil {
			continue
		}
		v, err := convert(f.Type, raw)
		if err != nil {
			return nil, apiErr(errFieldType, name)
		}
		out[name] = v
	}
	return out, nil
}

func (s *Server) networkCreate(c *call) (any, error) {
	rec, err := s.ctorRecord("network", c.args[0].(map[string]any))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := rec["bridge"]; !ok || rec["bridge"] == "" {
		rec["bridge"] = fmt.Sprintf("xapi%d", len(s.db.byClass["network"]))
	}
	if _, ok := rec["MTU"]; !ok {
		rec["MTU"] = int64(1500)
	}
	o := s.db.insert("network", rec)
	return o.Ref, s.saveLocked()
}

func (s *Server) networkDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.db.get("network", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if vifs := n.refs("VIFs"); len(vifs) > 0 {
		return nil, apiErr(errNetworkContainsVIF, vifs...)
	}
	s.db.remove(n)
	return "", s.saveLocked()
}

func (s *Server) vbdCreate(c *call) (any, error) {
	rec, err := s.ctorRecord("VBD", c.args[0].(map[string]any))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", rec["VM"].(string))
	if err != nil {
		return nil, err
	}
	var vdi *object
	if r := rec["VDI"].(string); r != nullRef && r != "" {
		if vdi, err = s.db.get("VDI", r); err != nil {
			return nil, err
		}
	} else if rec["type"] != "CD" || rec["empty"] != true {
		if rec["type"] != "CD" {
			return nil, apiErr(errHandleInvalid, "VDI", r)
		}
		rec["empty"] = true
	}
	used := map[string]bool{}
	for _, r := range vm.refs("VBDs") {
		if b := s.db.objs[r]; b != nil {
			used[b.str("userdevice")] = true
		}
	}
	ud := rec["userdevice"].(string)
	if ud == "autodetect" || ud == "" {
		for i := 0; ; i++ {
			if !used[strconv.Itoa(i)] {
				ud = strconv.Itoa(i)
				break
			}
		}
	} else if n, err := strconv.Atoi(ud); err != nil || n < 0 || n > 255 {
		return nil, apiErr(errInvalidDevice, ud)
	} else if used[ud] {
		return nil, apiErr(errDeviceAlreadyExists, ud)
	}
	rec["userdevice"] = ud
	if vm.str("power_state") == "Halted" {
		rec["currently_attached"] = false
	}
	rec["device"] = deviceName(ud)
	if vdi == nil {
		rec["VDI"] = nullRef
	}
	b := s.db.insert("VBD", rec)
	s.db.addRef(vm, "VBDs", b.Ref)
	if vdi != nil {
		s.db.addRef(vdi, "VBDs", b.Ref)
	}
	return b.Ref, s.saveLocked()
}

// deviceName is the guest device of a userdevice number (xvda, xvdb, ...).
func deviceName(ud string) string {
	n, err := strconv.Atoi(ud)
	if err != nil || n < 0 || n > 25 {
		return ""
	}
	return "xvd" + string(rune('a'+n))
}

func (s *Server) vbdDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.db.get("VBD", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if b.bool("currently_attached") {
		return nil, apiErr(errOperationNotAllowed, "VBD is currently attached")
	}
	s.removeVBDLocked(b)
	return "", s.saveLocked()
}

func (s *Server) removeVBDLocked(b *object) {
	if vm := s.db.objs[b.str("VM")]; vm != nil {
		s.db.delRef(vm, "VBDs", b.Ref)
	}
	if vdi := s.db.objs[b.str("VDI")]; vdi != nil {
		s.db.delRef(vdi, "VBDs", b.Ref)
	}
	s.db.remove(b)
}

func (s *Server) vifCreate(c *call) (any, error) {
	rec, err := s.ctorRecord("VIF", c.args[0].(map[string]any))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", rec["VM"].(string))
	if err != nil {
		return nil, err
	}
	net, err := s.db.get("network", rec["network"].(string))
	if err != nil {
		return nil, err
	}
	dev := rec["device"].(string)
	if n, err := strconv.Atoi(dev); err != nil || n < 0 {
		return nil, apiErr(errInvalidDevice, dev)
	}
	for _, r := range vm.refs("VIFs") {
		if v := s.db.objs[r]; v != nil && v.str("device") == dev {
			return nil, apiErr(errDeviceAlreadyExists, dev)
		}
	}
	if rec["MAC"] == "" {
		rec["MAC"] = randomMAC()
		rec["MAC_autogenerated"] = true
	}
	rec["currently_attached"] = vm.str("power_state") == "Running"
	v := s.db.insert("VIF", rec)
	s.db.addRef(vm, "VIFs", v.Ref)
	s.db.addRef(net, "VIFs", v.Ref)
	return v.Ref, s.saveLocked()
}

func randomMAC() string {
	u := newUUID()
	return "aa:" + u[0:2] + ":" + u[2:4] + ":" + u[4:6] + ":" + u[6:8] + ":" + u[9:11]
}

func (s *Server) vifDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VIF", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	s.removeVIFLocked(v)
	return "", s.saveLocked()
}

func (s *Server) removeVIFLocked(v *object) {
	if vm := s.db.objs[v.str("VM")]; vm != nil {
		s.db.delRef(vm, "VIFs", v.Ref)
	}
	if n := s.db.objs[v.str("network")]; n != nil {
		s.db.delRef(n, "VIFs", v.Ref)
	}
	s.db.remove(v)
}

func (s *Server) srScan(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sr, err := s.db.get("SR", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	s.refreshSRLocked(sr)
	s.db.touch(sr)
	return "", s.saveLocked()
}

// vbdPlug and vbdUnplug hot-plug a VBD of a running VM (the lab's QEMU
// guest keeps the disks it booted with).
func (s *Server) vbdPlug(c *call) (any, error) { return s.vbdSetAttached(c, true) }

func (s *Server) vbdUnplug(c *call) (any, error) { return s.vbdSetAttached(c, false) }

func (s *Server) vbdSetAttached(c *call, attach bool) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.db.get("VBD", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	vm, err := s.db.get("VM", b.str("VM"))
	if err != nil {
		return nil, err
	}
	if st := vm.str("power_state"); st != "Running" && st != "Paused" {
		return nil, badPower(vm, "Running")
	}
	switch {
	case attach && b.bool("currently_attached"):
		return nil, apiErr("DEVICE_ALREADY_ATTACHED", b.Ref)
	case !attach && !b.bool("currently_attached"):
		return nil, apiErr("DEVICE_ALREADY_DETACHED", b.Ref)
	}
	s.db.set(b, "currently_attached", attach)
	return "", s.saveLocked()
}
