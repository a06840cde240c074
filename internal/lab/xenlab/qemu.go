package xenlab

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// qemuMarker in a VM's other_config says a QEMU guest runs it, so that a
// restarted lab knows the guest died with the previous one.
const qemuMarker = "ferry_lab_qemu"

// vmProc is a QEMU guest.
type vmProc struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
	sock     string        // QMP socket
	stopping atomic.Bool   // the lab is stopping it: the exit is expected
}

// vmDir holds a VM's console log, QEMU log and CBT hash files.
func (s *Server) vmDir(vm *object) string { return filepath.Join(s.dir, "vms", vm.str("uuid")) }

// consoleNote appends a line of the lab's own to a VM's console log.
func (s *Server) consoleNote(vm *object, msg string) {
	path := s.consolePath(vm)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "[ferry lab %s] %s\n", time.Now().UTC().Format(time.RFC3339), msg)
}

// guestDisks returns the VDIs to attach to a guest, the bootable one
// first, then by userdevice.
func (s *Server) guestDisksLocked(vm *object) []*object {
	type d struct {
		boot bool
		pos  int
		vdi  *object
	}
	var ds []d
	for _, r := range vm.refs("VBDs") {
		b := s.db.objs[r]
		if b == nil || b.str("type") != "Disk" {
			continue
		}
		v := s.db.objs[b.str("VDI")]
		if v == nil || v.str("type") == "cbt_metadata" {
			continue
		}
		pos, _ := strconv.Atoi(b.str("userdevice"))
		ds = append(ds, d{b.bool("bootable"), pos, v})
	}
	slices.SortFunc(ds, func(a, b d) int {
		if a.boot != b.boot {
			if a.boot {
				return -1
			}
			return 1
		}
		return a.pos - b.pos
	})
	if len(ds) == 0 || !ds[0].boot {
		return nil
	}
	var out []*object
	for _, x := range ds {
		out = append(out, x.vdi)
	}
	return out
}

// startGuestLocked boots a VM under QEMU (TCG) when QEMU is configured and
// the VM has a bootable disk; otherwise only the power state moves.
func (s *Server) startGuestLocked(ctx context.Context, vm *object, paused bool) error {
	if s.closed {
		return internalErr("the lab is shutting down")
	}
	if s.qemu == "" {
		s.consoleNote(vm, "VM started (the lab tracks the power state only: no QEMU configured)")
		return nil
	}
	disks := s.guestDisksLocked(vm)
	if len(disks) == 0 {
		s.consoleNote(vm, "VM started (no bootable disk: the lab tracks the power state only)")
		return nil
	}
	if len(disks) > 4 {
		disks = disks[:4] // IDE holds four
	}
	dir := s.vmDir(vm)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return internalErr("VM directory: %v", err)
	}
	// The guest writes its disks in place: a disk sharing its file with a
	// snapshot gets its own first.
	for _, v := range disks {
		if err := s.unshare(ctx, s.vdiPathLocked(v)); err != nil {
			return internalErr("VDI %s before boot: %v", v.str("uuid"), err)
		}
	}
	// Remember every CBT-enabled disk's content to find the guest's writes
	// at shutdown.
	for _, v := range disks {
		if !v.bool("cbt_enabled") {
			continue
		}
		hs, err := s.blockHashes(ctx, s.vdiPathLocked(v))
		if err != nil {
			return internalErr("hash VDI %s before boot: %v", v.str("uuid"), err)
		}
		b := make([]byte, 8*len(hs))
		for i, h := range hs {
			binary.LittleEndian.PutUint64(b[8*i:], h)
		}
		if err := labkit.WriteFile(filepath.Join(dir, "hashes-"+v.str("uuid")+".bin"), b, 0o600); err != nil {
			return internalErr("%v", err)
		}
	}
	sock := filepath.Join(os.TempDir(), "xenlab-"+newUUID()[:13]+".qmp")
	mem := max(vm.int("memory_static_max")>>20, 16)
	cpus := max(vm.int("VCPUs_at_startup"), 1)
	args := []string{
		"-machine", "pc,accel=tcg", "-cpu", "max", "-m", strconv.FormatInt(mem, 10), "-smp", strconv.FormatInt(cpus, 10),
		"-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
		"-chardev", "file,id=ser0,path=" + s.consolePath(vm) + ",append=on", "-serial", "chardev:ser0",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-boot", "order=c",
	}
	for i, v := range disks {
		args = append(args, "-drive", fmt.Sprintf("file=%s,format=vpc,if=ide,index=%d,media=disk", s.vdiPathLocked(v), i))
	}
	if paused {
		args = append(args, "-S")
	}
	logf, err := os.OpenFile(filepath.Join(dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return internalErr("QEMU log: %v", err)
	}
	cmd := exec.Command(s.qemu, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s.consoleNote(vm, "VM starting under QEMU (TCG)")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return internalErr("start QEMU: %v", err)
	}
	logf.Close()
	p := &vmProc{cmd: cmd, done: make(chan struct{}), sock: sock}
	ref := vm.Ref
	go func() {
		cmd.Wait()
		close(p.done)
		if p.stopping.Load() {
			return
		}
		s.guestExited(ref, p)
	}()
	// QEMU creates the QMP socket before it runs the guest.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
			return internalErr("QEMU exited at start: %s", strings.TrimSpace(string(b)))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stopping.Store(true)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
			return internalErr("QEMU did not open its monitor socket in 10 s")
		}
	}
	s.vms[ref] = p
	vm.smap("other_config")[qemuMarker] = strconv.Itoa(cmd.Process.Pid)
	s.log.Info("guest started", "vm", vm.str("uuid"), "pid", cmd.Process.Pid)
	return nil
}

// guestExited handles a guest that stopped by itself (powered off,
// rebooted under -no-reboot, crashed): the VM halts.
func (s *Server) guestExited(ref string, p *vmProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vms[ref] != p {
		return
	}
	delete(s.vms, ref)
	os.Remove(p.sock)
	vm := s.db.objs[ref]
	if vm == nil {
		return
	}
	s.trackGuestWritesLocked(s.ctx, vm)
	delete(vm.smap("other_config"), qemuMarker)
	s.consoleNote(vm, "guest powered off")
	s.setPowerStateLocked(vm, "Halted")
	s.saveLocked()
}

// stopGuestLocked kills a guest and records its disk writes.
func (s *Server) stopGuestLocked(ref string, p *vmProc, kill bool) error {
	p.stopping.Store(true)
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	delete(s.vms, ref)
	os.Remove(p.sock)
	if vm := s.db.objs[ref]; vm != nil {
		s.trackGuestWritesLocked(s.ctx, vm)
		delete(vm.smap("other_config"), qemuMarker)
		s.db.touch(vm)
	}
	return nil
}

// powerdown presses the guest's ACPI power button and waits up to timeout
// for it to power off. The caller then kills it if it has not.
func (p *vmProc) powerdown(ctx context.Context, timeout time.Duration) {
	p.stopping.Store(true)
	if err := p.qmp("system_powerdown"); err != nil {
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// qmp runs one QMP command without arguments.
func (p *vmProc) qmp(command string) error {
	conn, err := net.DialTimeout("unix", p.sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("QMP greeting: %w", err)
	}
	for _, c := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(conn, `{"execute":%q}`+"\n", c); err != nil {
			return fmt.Errorf("QMP %s: %w", c, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("QMP %s: %w", c, err)
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if e, ok := m["error"]; ok {
				return fmt.Errorf("QMP %s: %s", c, e)
			}
			if _, ok := m["return"]; ok {
				break
			}
		}
	}
	return nil
}

// trackGuestWritesLocked compares the CBT-enabled disks of a VM with the
// block hashes taken at boot and records the blocks the guest changed.
func (s *Server) trackGuestWritesLocked(ctx context.Context, vm *object) {
	dir := s.vmDir(vm)
	files, _ := filepath.Glob(filepath.Join(dir, "hashes-*.bin"))
	for _, f := range files {
		uuid := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "hashes-"), ".bin")
		v := s.db.byUUID("VDI", uuid)
		b, err := os.ReadFile(f)
		os.Remove(f)
		if v == nil || err != nil {
			continue
		}
		now, err := s.blockHashes(ctx, s.vdiPathLocked(v))
		if err != nil {
			s.log.Error("hash VDI after guest stopped", "vdi", uuid, "err", err)
			continue
		}
		changed := newBitmap(v.int("virtual_size"))
		for i, h := range now {
			var before uint64
			if 8*i+8 <= len(b) {
				before = binary.LittleEndian.Uint64(b[8*i:])
			}
			if h != before {
				changed.set(int64(i))
			}
		}
		if err := s.recordWritesLocked(v, changed); err != nil {
			s.log.Error("record guest writes", "vdi", uuid, "err", err)
		}
		s.updateUtilisationLocked(v)
		s.db.touch(v)
	}
}
