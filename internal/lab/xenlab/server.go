package xenlab

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/errs"
)

// Options configure a lab server.
type Options struct {
	// Dir holds the lab's state: state.json, the SR directories with the
	// VDIs' VHD files, CBT bitmaps and per-VM console logs. It is created
	// if missing.
	Dir string
	// Users are the accounts that may log in, name to password. They are
	// added to (or update) the users already stored in Dir; passwords are
	// stored as salted PBKDF2-SHA256 hashes.
	Users map[string]string
	// Logger receives the lab's log; nil discards it. Passwords and
	// session references are never logged.
	Logger *slog.Logger
	// QEMU is the path of qemu-system-x86_64, or "" to track power
	// states only. Use FindQEMU to look it up.
	QEMU string
	// Hosts is the number of hosts in the pool, 1 (the default) or 2. It
	// only matters when Dir is new.
	Hosts int
	// ShutdownTimeout bounds how long VM.clean_shutdown waits for a QEMU
	// guest to power off after the ACPI power button before killing it.
	// Default 20 s.
	ShutdownTimeout time.Duration
}

// FindQEMU returns the path of qemu-system-x86_64, or "" when it is not
// installed (Debian package qemu-system-x86).
func FindQEMU() string {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return ""
	}
	return p
}

// Secret is a value that must not appear in logs: a password or a session
// reference. String and LogValue redact it.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (s Secret) Reveal() string             { return string(s) }
func (Secret) GoString() string             { return `xenlab.Secret("[redacted]")` }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Server is a XenServer-compatible lab: XAPI's JSON-RPC and HTTP disk
// handlers over real, persistent state in a directory. See the package
// documentation for what it serves.
type Server struct {
	dir     string
	log     *slog.Logger
	qemu    string
	stopTO  time.Duration
	schema  *schema
	disks   *disk.Registry
	handler http.Handler
	api     map[string]handlerFunc

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards everything below
	db     *db
	tasks  map[string]context.CancelFunc // running tasks by ref
	vms    map[string]*vmProc            // running QEMU guests by VM ref
	closed bool
}

const pbkdf2Iterations = 20000

// New opens (or creates) the lab in o.Dir.
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("xen lab: no state directory given: %w", errs.ErrInvalidArgument)
	}
	if o.Hosts == 0 {
		o.Hosts = 1
	}
	if o.Hosts < 1 || o.Hosts > 2 {
		return nil, fmt.Errorf("xen lab: %d hosts: a lab pool has 1 or 2: %w", o.Hosts, errs.ErrInvalidArgument)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 20 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("xen lab: state directory %s: %w", o.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("xen lab: create state directory %s: %w", dir, err)
	}
	s := &Server{
		dir:    dir,
		log:    log,
		qemu:   o.QEMU,
		stopTO: o.ShutdownTimeout,
		schema: newSchema(),
		disks:  disk.NewRegistry(vhd.Format(), raw.Format()),
		tasks:  map[string]context.CancelFunc{},
		vms:    map[string]*vmProc{},
	}
	s.db = newDB(s.schema)
	found, err := s.db.load(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		if err := s.bootstrap(o.Hosts); err != nil {
			return nil, err
		}
	}
	for name, pw := range o.Users {
		if name == "" {
			return nil, fmt.Errorf("xen lab: a user has an empty name: %w", errs.ErrInvalidArgument)
		}
		u, err := hashPassword(pw)
		if err != nil {
			return nil, err
		}
		s.db.users[name] = u
	}
	s.recover(ctx)
	for _, sr := range s.db.all("SR") {
		if err := os.MkdirAll(s.srDir(sr), 0o755); err != nil {
			return nil, fmt.Errorf("xen lab: SR directory: %w", err)
		}
	}
	if err := s.db.save(dir); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.api = s.handlers()
	s.handler = s.routes()
	log.Info("xen lab ready", "dir", dir, "qemu", s.qemu != "", "users", len(s.db.users))
	return s, nil
}

// Handler serves XAPI: POST /jsonrpc, POST / (an XML-RPC fault: only
// JSON-RPC is served), the HTTP disk and VM transfer handlers and the
// lab-only /console.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops running guests (hard), waits for running tasks to end and
// saves the state. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errList []error
	for ref, p := range s.vms {
		errList = append(errList, s.stopGuestLocked(ref, p, true))
	}
	errList = append(errList, s.db.save(s.dir))
	return errors.Join(errList...)
}

func hashPassword(pw string) (userRec, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	h, err := pbkdf2.Key(sha256.New, pw, salt, pbkdf2Iterations, 32)
	if err != nil {
		return userRec{}, fmt.Errorf("xen lab: hash password: %w", err)
	}
	return userRec{Salt: salt, Hash: h, Iter: pbkdf2Iterations}, nil
}

// checkPassword reports whether user may log in with pw.
func (s *Server) checkPassword(user, pw string) bool {
	s.mu.Lock()
	u, ok := s.db.users[user]
	s.mu.Unlock()
	if !ok {
		// spend the same time as for a known user
		pbkdf2.Key(sha256.New, pw, make([]byte, 16), pbkdf2Iterations, 32)
		return false
	}
	h, err := pbkdf2.Key(sha256.New, pw, u.Salt, u.Iter, len(u.Hash))
	return err == nil && subtle.ConstantTimeCompare(h, u.Hash) == 1
}

// saveLocked writes the state if anything changed.
func (s *Server) saveLocked() error {
	if !s.db.dirty {
		return nil
	}
	if err := s.db.save(s.dir); err != nil {
		s.log.Error("save lab state", "err", err)
		return internalErr("save lab state: %v", err)
	}
	return nil
}

// bootstrap creates a new pool: hosts, the local SR, the default network.
func (s *Server) bootstrap(hosts int) error {
	d := s.db
	now := xapiTime(time.Now())
	net := d.insert("network", map[string]any{
		"name_label":       "Pool-wide network associated with eth0",
		"name_description": "",
		"bridge":           "xenbr0",
		"MTU":              int64(1500),
		"managed":          true,
		"other_config":     map[string]any{},
	})
	sr := d.insert("SR", map[string]any{
		"name_label":       "Local storage",
		"name_description": "ferry lab storage: a directory of VHD files",
		"type":             "ext",
		"content_type":     "user",
		"shared":           hosts > 1,
		"other_config":     map[string]any{"i18n-key": "local-storage"},
		"sm_config":        map[string]any{"devserial": "ferry-lab"},
		"allowed_operations": []any{"vdi_create", "vdi_destroy", "vdi_snapshot", "vdi_clone", "vdi_resize",
			"vdi_enable_cbt", "vdi_disable_cbt", "vdi_data_destroy", "vdi_list_changed_blocks", "vdi_set_on_boot",
			"vdi_introduce", "scan", "update", "plug", "unplug"},
		"clustered": false,
	})
	var master *object
	for i := range hosts {
		cpus := int64(runtime.NumCPU())
		mem := int64(16 << 30)
		hm := d.insert("host_metrics", map[string]any{
			"memory_total": mem, "memory_free": mem, "live": true, "last_updated": now,
		})
		name := fmt.Sprintf("ferry-lab-%d", i)
		h := d.insert("host", map[string]any{
			"name_label":         name,
			"name_description":   "ferry XenServer-compatible lab host",
			"hostname":           name,
			"address":            "127.0.0.1",
			"API_version_major":  int64(2),
			"API_version_minor":  int64(21),
			"API_version_vendor": "XenSource",
			"software_version": map[string]any{
				"product_brand": "ferry lab", "product_version": "8.3.0", "platform_name": "XCP",
				"platform_version": "3.4.0", "xapi": "24.11", "xapi_build": "24.11.0", "xen": "4.17.0",
				"build_number": "ferry-lab", "hostname": name,
			},
			"enabled":          true,
			"metrics":          hm.Ref,
			"cpu_info":         map[string]any{"cpu_count": fmt.Sprint(cpus), "socket_count": "1", "vendor": "GenuineIntel", "modelname": "ferry lab virtual CPU", "speed": "2000.000"},
			"capabilities":     []any{"xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"},
			"memory_overhead":  int64(0),
			"other_config":     map[string]any{},
			"suspend_image_sr": sr.Ref,
			"crash_dump_sr":    sr.Ref,
		})
		pbd := d.insert("PBD", map[string]any{
			"host": h.Ref, "SR": sr.Ref, "currently_attached": true,
			"device_config": map[string]any{"location": "sr/" + sr.str("uuid")},
		})
		d.addRef(h, "PBDs", pbd.Ref)
		d.addRef(sr, "PBDs", pbd.Ref)
		if master == nil {
			master = h
		}
	}
	d.insert("pool", map[string]any{
		"name_label": "ferry lab", "master": master.Ref, "default_SR": sr.Ref,
		"suspend_image_SR": sr.Ref, "crash_dump_SR": sr.Ref, "other_config": map[string]any{},
	})
	_ = net
	return nil
}

// master returns the pool master host.
func (s *Server) masterLocked() *object {
	for _, p := range s.db.all("pool") {
		if h := s.db.objs[p.str("master")]; h != nil {
			return h
		}
	}
	return nil
}

// srDir is the directory that holds an SR's VDIs.
func (s *Server) srDir(sr *object) string {
	return filepath.Join(s.dir, "sr", sr.str("uuid"))
}

// vdiPath is the VHD file of a VDI.
func (s *Server) vdiPathLocked(vdi *object) string {
	sr := s.db.objs[vdi.str("SR")]
	if sr == nil {
		return ""
	}
	return filepath.Join(s.srDir(sr), vdi.str("uuid")+".vhd")
}

// refreshSRLocked recomputes an SR's sizes from its file system and VDIs.
// It does not count as a modification.
func (s *Server) refreshSRLocked(sr *object) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.srDir(sr), &st); err == nil {
		size := int64(st.Blocks) * int64(st.Bsize)
		free := int64(st.Bavail) * int64(st.Bsize)
		sr.Rec["physical_size"] = size
		sr.Rec["physical_utilisation"] = size - free
	}
	var virt int64
	for _, v := range sr.refs("VDIs") {
		if o := s.db.objs[v]; o != nil {
			virt += o.int("virtual_size")
		}
	}
	sr.Rec["virtual_allocation"] = virt
}

// recover brings the state in line with a fresh start: tasks that were
// running are failed, guests that were running under QEMU are halted
// (their processes died with the previous lab).
func (s *Server) recover(ctx context.Context) {
	for _, t := range s.db.all("task") {
		if t.str("status") == "pending" || t.str("status") == "cancelling" {
			s.db.set(t, "status", "failure", "progress", 1.0, "finished", xapiTime(time.Now()),
				"error_info", []any{errInternal, "the lab restarted while the task ran"})
		}
	}
	for _, vm := range s.db.all("VM") {
		if vm.str("power_state") == "Halted" {
			continue
		}
		if _, ok := vm.Rec["other_config"].(map[string]any)[qemuMarker]; ok {
			s.trackGuestWritesLocked(ctx, vm)
			delete(vm.smap("other_config"), qemuMarker)
			s.setPowerStateLocked(vm, "Halted")
			s.consoleNote(vm, "guest stopped: the lab restarted")
		}
	}
}
