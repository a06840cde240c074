package awslab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// guest is a QEMU process running an instance.
type guest struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
	sock     string        // QMP socket
	stopping atomic.Bool   // the lab is stopping it: the exit is expected
}

func (s *Server) instanceDir(id string) string { return filepath.Join(s.dir, "instances", id) }
func (s *Server) consolePath(id string) string {
	return filepath.Join(s.instanceDir(id), "console.log")
}
func (s *Server) volumePath(id string) string  { return filepath.Join(s.dir, "volumes", id+".raw") }
func (s *Server) qemuLogPath(id string) string { return filepath.Join(s.instanceDir(id), "qemu.log") }
func (s *Server) guestSocket(id string) string {
	return filepath.Join(os.TempDir(), "awslab-"+id+"-"+randHex(6)+".qmp")
}
func (s *Server) instanceMiB(in *instance) int64 {
	return min(max(instanceTypes[in.Type].MiB, 64), 1024)
}

// consoleNote appends a line of the lab's own to an instance's console log.
func (s *Server) consoleNote(id, msg string) {
	path := s.consolePath(id)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "[ferry lab %s] %s\r\n", s.now().UTC().Format(time.RFC3339), msg)
}

// maybeBootLocked boots an instance's guest once it is pending or running
// and its volumes hold their content.
func (s *Server) maybeBootLocked(in *instance) {
	if in.State != "pending" && in.State != "running" || s.guests[in.ID] != nil || !s.volumesReadyLocked(in) {
		return
	}
	s.bootGuestLocked(in)
}

// bootGuestLocked starts QEMU (TCG) on an instance's volumes, the root
// volume first, as NVMe drives as on Nitro instances, with the serial
// console appended to the console log and QMP on a socket. Without QEMU
// only the state moves.
func (s *Server) bootGuestLocked(in *instance) {
	if s.closed || s.guests[in.ID] != nil {
		return
	}
	if s.qemu == "" {
		s.consoleNote(in.ID, "instance booting (the lab tracks the state only: no QEMU configured)")
		return
	}
	if !s.volumesReadyLocked(in) {
		return
	}
	vols := s.instanceVolumesLocked(in.ID)
	root := -1
	for i, v := range vols {
		if v.Attach.Device == in.RootDevice {
			root = i
		}
	}
	if root < 0 {
		s.consoleNote(in.ID, "instance booting (no root volume: the lab tracks the state only)")
		return
	}
	vols[0], vols[root] = vols[root], vols[0]
	sock := s.guestSocket(in.ID)
	args := []string{
		"-machine", "pc,accel=tcg", "-cpu", "max", "-m", strconv.FormatInt(s.instanceMiB(in), 10), "-smp", "1",
		"-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
		"-chardev", "file,id=ser0,path=" + s.consolePath(in.ID) + ",append=on", "-serial", "chardev:ser0",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
	}
	for i, v := range vols {
		args = append(args,
			"-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=d%d,cache=writeback", s.volumePath(v.ID), i),
			"-device", fmt.Sprintf("nvme,drive=d%d,serial=%s,bootindex=%d", i, strings.ReplaceAll(v.ID, "-", ""), i))
	}
	if err := os.MkdirAll(s.instanceDir(in.ID), 0o755); err != nil {
		s.consoleNote(in.ID, "cannot boot: "+err.Error())
		return
	}
	logf, err := os.OpenFile(s.qemuLogPath(in.ID), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		s.consoleNote(in.ID, "cannot boot: "+err.Error())
		return
	}
	defer logf.Close()
	cmd := exec.Command(s.qemu, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s.consoleNote(in.ID, "instance booting under QEMU (TCG)")
	if err := cmd.Start(); err != nil {
		s.consoleNote(in.ID, "cannot start QEMU: "+err.Error())
		return
	}
	g := &guest{cmd: cmd, done: make(chan struct{}), sock: sock}
	s.guests[in.ID] = g
	id := in.ID
	go func() {
		cmd.Wait()
		close(g.done)
		os.Remove(sock)
		if !g.stopping.Load() {
			s.guestExited(id, g)
		}
	}()
	s.log.Info("guest started", "instance", in.ID, "pid", cmd.Process.Pid)
}

// guestExited handles a guest that stopped by itself (the OS shut down,
// a reboot under -no-reboot, a crash): the instance stops, as EC2 stops
// an instance whose OS shuts down.
func (s *Server) guestExited(id string, g *guest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guests[id] != g {
		return
	}
	delete(s.guests, id)
	in := s.st.Instances[id]
	if in == nil || (in.State != "running" && in.State != "pending") {
		return
	}
	b, _ := os.ReadFile(s.qemuLogPath(id))
	note := "guest powered off"
	if msg := strings.TrimSpace(string(b)); msg != "" {
		note += ": " + msg
	}
	s.consoleNote(id, note)
	in.State, in.Until = "stopping", s.now().Add(s.delay)
	in.ReasonCode, in.ReasonMessage = "Client.InstanceInitiatedShutdown", "Client.InstanceInitiatedShutdown: Instance initiated shutdown"
	s.dirty = true
	s.saveLocked()
}

// beginStopLocked moves an instance to stopping or shutting-down and stops
// its guest in the background: the ACPI power button, then a kill after
// the shutdown timeout (at once when force).
func (s *Server) beginStopLocked(in *instance, state string, force bool, now time.Time) {
	in.State, in.Until = state, now.Add(s.delay)
	s.dirty = true
	g := s.guests[in.ID]
	if g == nil {
		s.consoleNote(in.ID, "instance "+state)
		return
	}
	g.stopping.Store(true)
	id := in.ID
	timeout := s.stopTO
	s.goJobLocked(id, func(ctx context.Context) error {
		if !force {
			if err := g.qmp("system_powerdown"); err == nil {
				t := time.NewTimer(timeout)
				select {
				case <-g.done:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
		}
		g.kill()
		return nil
	}, func(error) {
		if s.guests[id] == g {
			delete(s.guests, id)
		}
		s.consoleNote(id, "guest stopped")
	})
}

// rebootGuestLocked resets a running guest.
func (s *Server) rebootGuestLocked(in *instance) {
	g := s.guests[in.ID]
	if g == nil {
		s.consoleNote(in.ID, "instance rebooted")
		return
	}
	if err := g.qmp("system_reset"); err != nil {
		s.consoleNote(in.ID, "reboot failed: "+err.Error())
		return
	}
	s.consoleNote(in.ID, "instance rebooted (QEMU system_reset)")
}

// stopGuestLocked kills a guest at once (the lab is closing).
func (s *Server) stopGuestLocked(id string, g *guest) {
	g.stopping.Store(true)
	g.kill()
	delete(s.guests, id)
}

func (g *guest) kill() {
	select {
	case <-g.done:
	default:
		syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
		<-g.done
	}
}

// qmp runs one QMP command without arguments.
func (g *guest) qmp(command string) error {
	var conn net.Conn
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err = net.DialTimeout("unix", g.sock, time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-g.done:
			return fmt.Errorf("QMP: the guest has exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
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
