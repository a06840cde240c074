package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/api/client"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
	"github.com/ferry-project/ferry/internal/lab/sample"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/xen"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
)

// The lab's fixed names and default endpoints.
const (
	labXenListen = "127.0.0.1:8480"
	labAWSListen = "127.0.0.1:8490"
	labRegion    = "us-east-1"
	labXenUser   = "root"
	labXenSite   = "lab-xen"
	labAWSSite   = "lab-aws"
	labStateFile = "lab.json"
	labTokenFile = "token"
)

// The three processes of a lab, in start order.
const (
	labXen     = "xen"
	labAWS     = "aws"
	labControl = "control"
)

var labParts = []string{labXen, labAWS, labControl}

// labTimeouts bound how long up waits for a process to answer and down
// for one to exit after SIGTERM.
const (
	labReadyTimeout = 60 * time.Second
	labStopTimeout  = 15 * time.Second
)

func defaultLabDir() string {
	if d := os.Getenv("FERRY_LAB"); d != "" {
		return d
	}
	return filepath.Join(defaultDataDir(), "lab")
}

// labState is LABDIR/lab.json (mode 0600): the credentials generated on
// the first up and the endpoints last used, so that up after down brings
// back the same lab.
type labState struct {
	Version      int    `json:"version"`
	XenPassword  string `json:"xen_password"`
	AWSAccessKey string `json:"aws_access_key"`
	AWSSecretKey string `json:"aws_secret_key"`
	Region       string `json:"region"`
	XenListen    string `json:"xen_listen"`
	AWSListen    string `json:"aws_listen"`
	Listen       string `json:"listen"`
}

// labProc is LABDIR/run/<part>.json (mode 0600: the arguments hold the
// lab's secrets): a process up started.
type labProc struct {
	PID     int       `json:"pid"`
	Args    []string  `json:"args"`
	Started time.Time `json:"started"`
}

// lab is a lab directory.
type lab struct {
	dir string
	st  labState
	log *slog.Logger
}

func (l *lab) path(elem ...string) string { return filepath.Join(append([]string{l.dir}, elem...)...) }

// loadLab reads LABDIR/lab.json; with create, a missing one is made with
// fresh credentials (not yet saved).
func loadLab(dir string, create bool, logger *slog.Logger) (*lab, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	l := &lab{dir: abs, log: logger}
	b, err := os.ReadFile(l.path(labStateFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &l.st); err != nil || l.st.XenPassword == "" || l.st.AWSAccessKey == "" || l.st.AWSSecretKey == "" {
			return nil, fmt.Errorf("lab state %s: unreadable or incomplete (ferry lab down --purge starts afresh): %w", l.path(labStateFile), errs.ErrCorrupt)
		}
	case errors.Is(err, os.ErrNotExist) && create:
		l.st = labState{
			Version:      1,
			XenPassword:  strings.ToLower(rand.Text()),
			AWSAccessKey: "AKIA" + rand.Text()[:16],
			AWSSecretKey: (rand.Text() + rand.Text())[:40],
			Region:       labRegion,
		}
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("no lab in %s (ferry lab up creates one): %w", abs, errs.ErrNotFound)
	default:
		return nil, err
	}
	l.st.Region = firstOf(l.st.Region, labRegion)
	l.st.XenListen = firstOf(l.st.XenListen, labXenListen)
	l.st.AWSListen = firstOf(l.st.AWSListen, labAWSListen)
	l.st.Listen = firstOf(l.st.Listen, DefaultListen)
	return l, nil
}

func (l *lab) save() error {
	b, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return err
	}
	return labkit.WriteFile(l.path(labStateFile), append(b, '\n'), 0o600)
}

// lock takes LABDIR/lab.lock so that two ups or downs do not interleave.
func (l *lab) lock() (func(), error) {
	release, held, err := tryLock(l.path("lab.lock"))
	if held {
		return nil, fmt.Errorf("another ferry lab up or down is working on %s: %w", l.dir, errs.ErrConflict)
	}
	return release, err
}

func (l *lab) listen(part string) string {
	switch part {
	case labXen:
		return l.st.XenListen
	case labAWS:
		return l.st.AWSListen
	}
	return l.st.Listen
}

func (l *lab) url(part string) string { return "http://" + l.listen(part) }

// The lab servers take their secrets from the environment, which only
// their user can read (/proc/PID/environ), not from the command line,
// which everyone can (ps).
const (
	envLabXenUser   = "FERRY_LAB_XEN_USER"
	envLabAWSSecret = "FERRY_LAB_AWS_SECRET_KEY"
)

// args are the command line of a part (after the executable's name).
func (l *lab) args(part string, noQEMU bool) []string {
	var a []string
	switch part {
	case labXen:
		a = []string{"lab", "xen", "--data", l.path("xen"), "--listen", l.st.XenListen}
	case labAWS:
		a = []string{"lab", "aws", "--data", l.path("aws"), "--listen", l.st.AWSListen,
			"--access-key", l.st.AWSAccessKey, "--region", l.st.Region}
	case labControl:
		return []string{"serve", "--data", l.path("control"), "--database=", "--listen", l.st.Listen}
	}
	if noQEMU {
		a = append(a, "--no-qemu")
	}
	return a
}

// env is what a part's environment adds to ours: its secrets.
func (l *lab) env(part string) []string {
	switch part {
	case labXen:
		return []string{envLabXenUser + "=" + labXenUser + ":" + l.st.XenPassword}
	case labAWS:
		return []string{envLabAWSSecret + "=" + l.st.AWSSecretKey}
	}
	return nil
}

// running returns the record of part when its process still runs (the
// same pid with the same command line: a reused pid is not ours).
func (l *lab) running(part string) (labProc, bool) {
	b, err := os.ReadFile(l.path("run", part+".json"))
	if err != nil {
		return labProc{}, false
	}
	var p labProc
	if json.Unmarshal(b, &p) != nil || p.PID <= 0 {
		return labProc{}, false
	}
	return p, p.alive()
}

// alive reports whether the process runs with the recorded arguments. A
// zombie counts as gone; a process that is exiting (its command line
// already empty, but its files, listening sockets among them, not yet
// closed) still counts as alive, so that down returns only once the
// ports are free.
func (p labProc) alive() bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return false
	}
	if len(b) == 0 {
		return true // exiting
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	return slices.Equal(args[1:], p.Args)
}

// stop ends a process group: SIGTERM, then SIGKILL after timeout. It
// reports whether the process had to be killed.
func (p labProc) stop(timeout time.Duration) (killed bool) {
	syscall.Kill(-p.PID, syscall.SIGTERM)
	if p.waitGone(timeout) {
		return false
	}
	syscall.Kill(-p.PID, syscall.SIGKILL)
	p.waitGone(5 * time.Second)
	return true
}

// waitGone polls until the process is gone or timeout passes.
func (p labProc) waitGone(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond) // poll interval while a process exits
	}
	return true
}

// start runs part as a detached child (its own session, output appended
// to LABDIR/logs/<part>.log) and records its pid. exited closes when
// the child ends (while this process lives).
func (l *lab) start(part string, noQEMU bool) (p labProc, logOffset int64, exited <-chan struct{}, err error) {
	self, err := os.Executable()
	if err != nil {
		return p, 0, nil, fmt.Errorf("find ferry's executable: %w", err)
	}
	for _, d := range []string{"logs", "run", part} {
		if err := os.MkdirAll(l.path(d), 0o700); err != nil {
			return p, 0, nil, err
		}
	}
	logPath := l.path("logs", part+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return p, 0, nil, err
	}
	defer logf.Close()
	if st, err := logf.Stat(); err == nil {
		logOffset = st.Size()
	}
	fmt.Fprintf(logf, "---- %s: ferry lab up starts the %s\n", time.Now().Format(time.RFC3339), labTitle(part))
	cmd := exec.Command(self, l.args(part, noQEMU)...)
	cmd.Env = append(os.Environ(), l.env(part)...)
	cmd.Dir = l.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return p, 0, nil, fmt.Errorf("start the %s: %w", labTitle(part), err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p = labProc{PID: cmd.Process.Pid, Args: l.args(part, noQEMU), Started: time.Now().UTC()}
	b, _ := json.Marshal(p)
	if err := labkit.WriteFile(l.path("run", part+".json"), b, 0o600); err != nil {
		p.stop(labStopTimeout)
		return p, 0, nil, err
	}
	return p, logOffset, done, nil
}

func labTitle(part string) string {
	switch part {
	case labXen:
		return "xen lab"
	case labAWS:
		return "aws lab"
	}
	return "control plane"
}

// logTail returns the end of part's log from offset on.
func (l *lab) logTail(part string, offset int64) string {
	b, err := os.ReadFile(l.path("logs", part+".log"))
	if err != nil {
		return ""
	}
	if offset < int64(len(b)) {
		b = b[offset:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// waitReady polls part's endpoint until it answers HTTP, the process
// exits or the timeout passes.
func (l *lab) waitReady(ctx context.Context, part string, exited <-chan struct{}) error {
	u := l.url(part) + "/"
	if part == labControl {
		u = l.url(part) + api.Prefix + "/health"
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(labReadyTimeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if part != labControl || resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("the %s exited at start", labTitle(part))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // poll interval while the child starts
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s did not answer on %s in %v", labTitle(part), l.listen(part), labReadyTimeout)
		}
	}
}

// checkListen validates a fixed loopback-or-other TCP address and reports
// whether something already listens there.
func checkListen(flag, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" || port == "" {
		return fmt.Errorf("--%s %q: want HOST:PORT with a fixed port: %w", flag, addr, errs.ErrInvalidArgument)
	}
	// A port a lab process gave up a moment ago (lab down, then up) can
	// stay unbindable for a short while as the kernel tears its
	// connections down: try for a few seconds before blaming another
	// program.
	deadline := time.Now().Add(3 * time.Second)
	for {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
		if err == nil {
			return ln.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %s is taken by another program, not by this lab: stop it or choose another with --%s: %w", addr, flag, errs.ErrFailedPrecondition)
		}
		time.Sleep(100 * time.Millisecond) // retry interval while the port frees up
	}
}

type labUpOptions struct {
	dir       string
	listen    string
	xenListen string
	awsListen string
	noQEMU    bool
	noSample  bool
}

func newLabUpCommand(g *Globals) *cobra.Command {
	var o labUpOptions
	cmd := &cobra.Command{
		Use:   "up [--dir LABDIR] [--listen ADDR] [--no-qemu] [--no-sample]",
		Short: "Start a whole lab: a XenServer pool, an EC2 region and a control plane with both as sites",
		Long: `Start three background processes of this ferry, each in its own session,
with their output in LABDIR/logs: a XenServer lab pool (ferry lab xen), an
EC2 lab region (ferry lab aws) and a control plane (ferry serve), all on
loopback. Register the pool and the region with the control plane as sites
lab-xen and lab-aws, and import a small Linux VM, sample-linux, into the
pool (halted; it boots under QEMU and prints ` + sample.Marker + ` on its
console). Then print how to point the CLI at the control plane.

State lives in LABDIR ($FERRY_LAB, default DATA/lab): the credentials
generated on the first start (lab.json, mode 0600), an admin token (token,
mode 0600), each server's state, logs and pid records. Up after down brings
the same lab back; up while the lab runs starts only what is missing and
prints the summary. The sample disk is built once from Debian packages
(apt-get download; needs dosfstools, mtools, syslinux, syslinux-common and
fdisk) into $FERRY_CACHE/sample or ~/.cache/ferry/sample.`,
		Example: `  ferry lab up
  export FERRY_SERVER=http://127.0.0.1:8443 FERRY_TOKEN_FILE=~/.local/share/ferry/lab/token
  ferry vm ls
  ferry lab down`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			return runLabUp(cmd.Context(), g, o, map[string]bool{
				labXen: f.Changed("xen-listen"), labAWS: f.Changed("aws-listen"), labControl: f.Changed("listen"),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", defaultLabDir(), "lab directory ($FERRY_LAB)")
	f.StringVar(&o.listen, "listen", DefaultListen, "address of the control plane (unless given, the one used last time)")
	f.StringVar(&o.xenListen, "xen-listen", labXenListen, "address of the XenServer lab pool (unless given, the one used last time)")
	f.StringVar(&o.awsListen, "aws-listen", labAWSListen, "address of the EC2 lab region (unless given, the one used last time)")
	f.BoolVar(&o.noQEMU, "no-qemu", false, "the labs boot no guests (power states only)")
	f.BoolVar(&o.noSample, "no-sample", false, "do not build and import the sample Linux VM")
	return cmd
}

func runLabUp(ctx context.Context, g *Globals, o labUpOptions, changed map[string]bool) error {
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return err
	}
	l, err := loadLab(o.dir, true, g.Logger)
	if err != nil {
		return err
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()

	// Endpoints: a flag given now, else the last ones used, else the
	// defaults. A running part keeps its endpoint.
	want := map[string]*string{labXen: &l.st.XenListen, labAWS: &l.st.AWSListen, labControl: &l.st.Listen}
	given := map[string]string{labXen: o.xenListen, labAWS: o.awsListen, labControl: o.listen}
	flags := map[string]string{labXen: "xen-listen", labAWS: "aws-listen", labControl: "listen"}
	procs := map[string]labProc{}
	for _, part := range labParts {
		p, up := l.running(part)
		if up {
			procs[part] = p
		}
		if !changed[part] || given[part] == *want[part] {
			continue
		}
		if up {
			return fmt.Errorf("the %s runs on %s, not %s: ferry lab down first to move it: %w", labTitle(part), *want[part], given[part], errs.ErrFailedPrecondition)
		}
		*want[part] = given[part]
	}
	for _, part := range labParts {
		if _, up := procs[part]; up {
			continue
		}
		if err := checkListen(flags[part], l.listen(part)); err != nil {
			return err
		}
	}
	if err := l.save(); err != nil {
		return err
	}

	token, err := l.ensureToken(ctx, g, procs[labControl].PID != 0)
	if err != nil {
		return err
	}

	// Start what is missing; on any failure stop what this run started.
	var started []string
	fail := func(err error) error {
		for _, part := range slices.Backward(started) {
			if p, up := l.running(part); up {
				p.stop(labStopTimeout)
			}
			os.Remove(l.path("run", part+".json"))
		}
		return err
	}
	for _, part := range labParts {
		if _, up := procs[part]; up {
			continue
		}
		fmt.Fprintf(g.Stdout, "starting the %s on %s\n", labTitle(part), l.url(part))
		p, off, exited, err := l.start(part, o.noQEMU)
		if err != nil {
			return fail(err)
		}
		started = append(started, part)
		if err := l.waitReady(ctx, part, exited); err != nil {
			return fail(fmt.Errorf("%w; the end of %s:\n%s", err, l.path("logs", part+".log"), l.logTail(part, off)))
		}
		procs[part] = p
	}

	c, err := client.New(l.url(labControl), &client.Options{Token: token})
	if err != nil {
		return err
	}
	if err := l.registerSites(ctx, g, c); err != nil {
		return err
	}
	var sampleErr error
	if !o.noSample {
		sampleErr = l.importSample(ctx, g)
	}
	for _, s := range []string{labXenSite, labAWSSite} {
		if _, err := c.RefreshSite(ctx, s); err != nil {
			return fmt.Errorf("refresh site %s: %w", s, err)
		}
	}
	fmt.Fprintln(g.Stdout)
	l.printStatus(ctx, g.Stdout, c)
	fmt.Fprintf(g.Stdout, "\nUse the CLI with:\n  export FERRY_SERVER=%s FERRY_TOKEN_FILE=%s\n  ferry vm ls\n",
		l.url(labControl), l.path(labTokenFile))
	if sampleErr != nil {
		return fmt.Errorf("sample VM: %w (the lab runs without it; --no-sample skips it)", sampleErr)
	}
	return nil
}

// ensureToken returns the admin token in LABDIR/token, creating one
// offline in the control plane's store when the file is missing.
func (l *lab) ensureToken(ctx context.Context, g *Globals, controlRuns bool) (string, error) {
	path := l.path(labTokenFile)
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	if controlRuns {
		return "", fmt.Errorf("the lab's control plane runs but %s is missing: ferry lab down, then up again, makes a new one: %w", path, errs.ErrFailedPrecondition)
	}
	data := dataOptions{dir: l.path("control")}
	if err := os.MkdirAll(data.dir, 0o700); err != nil {
		return "", err
	}
	unlock, err := lockDataDir(data.dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	gl := *g
	gl.Logger = l.log
	st, _, err := data.open(ctx, &gl)
	if err != nil {
		return "", err
	}
	defer st.Close()
	tok, _, err := service.BootstrapToken(ctx, st, "lab", true, "ferry lab up")
	if err != nil {
		return "", err
	}
	if err := labkit.WriteFile(path, []byte(tok.Secret+"\n"), 0o600); err != nil {
		return "", err
	}
	fmt.Fprintf(g.Stdout, "created an admin token for the lab in %s\n", path)
	return tok.Secret, nil
}

// registerSites adds lab-xen and lab-aws unless they exist.
func (l *lab) registerSites(ctx context.Context, g *Globals, c *client.Client) error {
	have, err := c.Sites(ctx)
	if err != nil {
		return fmt.Errorf("list sites: %w", err)
	}
	reqs := []api.AddSiteRequest{
		{Name: labXenSite, Kind: string(provider.KindXen), Endpoint: l.url(labXen),
			Settings: map[string]string{"user": labXenUser},
			Secrets:  map[string]site.Secret{"password": site.Secret(l.st.XenPassword)}},
		{Name: labAWSSite, Kind: string(provider.KindAWS), Endpoint: l.url(labAWS),
			Settings: map[string]string{"region": l.st.Region},
			Secrets: map[string]site.Secret{"access_key_id": site.Secret(l.st.AWSAccessKey),
				"secret_access_key": site.Secret(l.st.AWSSecretKey)}},
	}
	for _, r := range reqs {
		i := slices.IndexFunc(have, func(v site.View) bool { return string(v.Name) == r.Name })
		if i >= 0 {
			if have[i].Endpoint != r.Endpoint {
				fmt.Fprintf(g.Stdout, "note: site %s points at %s, not at the lab's %s (ferry site rm %s, then lab up, re-registers it)\n",
					r.Name, have[i].Endpoint, r.Endpoint, r.Name)
			}
			continue
		}
		if _, err := c.AddSite(ctx, r); err != nil {
			return fmt.Errorf("register site %s: %w", r.Name, err)
		}
		fmt.Fprintf(g.Stdout, "registered site %s (%s, %s)\n", r.Name, r.Kind, r.Endpoint)
	}
	return nil
}

// importSample builds the sample disk and imports it into the pool as a
// halted VM, unless the pool has a VM of that name.
func (l *lab) importSample(ctx context.Context, g *Globals) error {
	p, err := xen.Open(ctx, xen.Config{Name: labXenSite, URL: l.url(labXen), User: labXenUser, Password: xen.Secret(l.st.XenPassword)}, l.log)
	if err != nil {
		return err
	}
	defer p.Close()
	var found bool
	if err := p.ListVMs(ctx, provider.Filter{Name: sample.Name}, func(core.VM) error { found = true; return nil }); err != nil {
		return err
	}
	if found {
		return nil
	}
	cache := sample.DefaultCacheDir()
	if err := sample.Check(); err == nil {
		fmt.Fprintf(g.Stdout, "preparing the sample disk in %s (built once from Debian packages)\n", cache)
	}
	res, err := sample.Build(ctx, sample.Options{CacheDir: cache, Logger: l.log})
	if err != nil {
		return err
	}
	img, err := formats.Registry().Open(ctx, res.Path, &disk.RegistryOpenOptions{Format: "raw"})
	if err != nil {
		return err
	}
	defer img.Close()
	spec := core.VMSpec{
		Name: sample.Name, Description: "ferry lab sample: Debian kernel " + res.Kernel + " and busybox; prints " + sample.Marker + " on its serial console",
		CPUs: 1, MemoryBytes: 256 << 20, Firmware: core.BIOS, OSType: "linux",
		Disks: []core.DiskSpec{{Name: sample.Name + " disk", Size: res.Size, Bootable: true, Position: 0}},
		NICs:  []core.NICSpec{{}}, // the pool's first network
	}
	id, err := p.ImportVM(ctx, spec, []disk.Image{img}, &provider.ImportOptions{Tags: map[string]string{"ferry_lab": "sample"}})
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "imported %s into %s: VM %s (halted)\n", sample.Name, labXenSite, id)
	return nil
}

// printStatus writes which parts run, their endpoints and, when the
// control plane answers, the sites and the sample VM.
func (l *lab) printStatus(ctx context.Context, w io.Writer, c *client.Client) {
	fmt.Fprintf(w, "lab %s\n", l.dir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, part := range labParts {
		state, pid := "stopped", ""
		if p, up := l.running(part); up {
			state, pid = "running", "pid "+strconv.Itoa(p.PID)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", labTitle(part), state, l.url(part), pid, l.path("logs", part+".log"))
	}
	tw.Flush()
	if c == nil {
		return
	}
	sites, err := c.Sites(ctx)
	if err != nil {
		fmt.Fprintf(w, "sites: %v\n", err)
		return
	}
	fmt.Fprintln(w, "sites:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range sites {
		health, vms := "-", "-"
		if h := s.Health; h != nil {
			vms, health = strconv.Itoa(h.VMs)+" VMs", "ok"
			if !h.OK {
				health = "error: " + h.Error
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.Name, s.Kind, firstOf(s.Endpoint, s.Settings["region"]), vms, health)
	}
	tw.Flush()
	rows, err := c.VMs(ctx, service.VMQuery{Site: labXenSite, Name: sample.Name})
	switch {
	case err != nil:
	case len(rows) == 0:
		fmt.Fprintf(w, "sample VM: none on %s\n", labXenSite)
	default:
		fmt.Fprintf(w, "sample VM: %s/%s (%s, %s)\n", rows[0].Site, rows[0].ID, rows[0].Name, rows[0].PowerState)
	}
}

func newLabDownCommand(g *Globals) *cobra.Command {
	var dir string
	var purge bool
	cmd := &cobra.Command{
		Use:   "down [--dir LABDIR] [--purge]",
		Short: "Stop the lab's processes (and, with --purge, delete its directory)",
		Long: `Stop the processes ferry lab up started, the control plane first: SIGTERM
to each one's process group, SIGKILL after 15 s; QEMU guests die with their
lab. The lab's state stays in LABDIR for the next up; --purge deletes
LABDIR. Stopping a lab that does not run succeeds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLabDown(g, dir, purge)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultLabDir(), "lab directory ($FERRY_LAB)")
	cmd.Flags().BoolVar(&purge, "purge", false, "delete the lab directory: state, credentials, token, logs")
	return cmd
}

func runLabDown(g *Globals, dir string, purge bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(g.Stdout, "no lab in %s: nothing to stop\n", abs)
		return nil
	}
	l := &lab{dir: abs}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	stopped := 0
	for _, part := range slices.Backward(labParts) {
		p, up := l.running(part)
		if up {
			how := "stopped"
			if p.stop(labStopTimeout) {
				how = "killed (no exit in 15 s after SIGTERM)"
			}
			fmt.Fprintf(g.Stdout, "%s the %s (pid %d)\n", how, labTitle(part), p.PID)
			stopped++
		}
		if err := os.Remove(l.path("run", part+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if stopped == 0 {
		fmt.Fprintf(g.Stdout, "nothing runs in %s\n", abs)
	}
	if !purge {
		return nil
	}
	if _, err := os.Stat(l.path(labStateFile)); err != nil {
		entries, _ := os.ReadDir(abs)
		if slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() != "lab.lock" && e.Name() != "run" }) {
			return fmt.Errorf("%s holds no %s: not a lab directory, not deleting it: %w", abs, labStateFile, errs.ErrFailedPrecondition)
		}
	}
	if err := os.RemoveAll(abs); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "deleted %s\n", abs)
	return nil
}

func newLabStatusCommand(g *Globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "status [--dir LABDIR]",
		Short: "Show which of the lab's processes run, their endpoints and the sites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := loadLab(dir, false, g.Logger)
			if err != nil {
				return err
			}
			var c *client.Client
			if _, up := l.running(labControl); up {
				if b, err := os.ReadFile(l.path(labTokenFile)); err == nil {
					c, _ = client.New(l.url(labControl), &client.Options{Token: strings.TrimSpace(string(b))})
				}
			}
			l.printStatus(cmd.Context(), g.Stdout, c)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultLabDir(), "lab directory ($FERRY_LAB)")
	return cmd
}
