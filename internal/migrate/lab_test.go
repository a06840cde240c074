package migrate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/lab/awslab"
	"github.com/ferry-project/ferry/internal/lab/xenlab"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws"
	"github.com/ferry-project/ferry/internal/provider/xen"
	"github.com/ferry-project/ferry/internal/store"
	"github.com/ferry-project/ferry/internal/xapi"
)

const (
	labUser, labPass  = "root", "s3cret"
	labKey, labSecret = "AKIDFERRYMIGRATE01", "migratesecret"
	labBucket         = "ferry-staging"
)

// siteMap is a Sites over providers opened by the test.
type siteMap map[core.SiteName]provider.Provider

func (m siteMap) Provider(_ context.Context, n core.SiteName) (provider.Provider, error) {
	if p, ok := m[n]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("site %s: %w", n, errs.ErrNotFound)
}

// labs are a XenServer lab and an EC2 lab region served in this process.
// EBS block PUTs are counted per block index, and can be held (hold >
// 0: after that many PUTs, further ones wait until release).
type labs struct {
	xenURL, awsURL string
	xenSrv         *xenlab.Server
	xenDir         string

	mu       sync.Mutex
	puts     map[string]int // "snapshot/block" -> acknowledged PUTs
	putBytes int64
	hold     int
	held     int
	release  chan struct{}
	reached  chan struct{}
	// imports counts import_raw_vdi calls; after holdImports of them,
	// the next ones wait for release (importsHeld is closed then).
	imports, holdImports int
	importsHeld          chan struct{}
	importsDone          int // import_raw_vdi calls that succeeded
}

// waitRelease holds a request until the test releases the labs; false if
// the client went away first.
func (l *labs) waitRelease(r *http.Request) bool {
	select {
	case <-l.release:
		return true
	case <-r.Context().Done():
		return false
	}
}

// serveLabelled serves r with h, its goroutine labelled side=side for CPU
// profiles, and returns the response's status.
func serveLabelled(h http.Handler, side string, w http.ResponseWriter, r *http.Request) int {
	sw := &statusWriter{ResponseWriter: w, status: 200}
	pprof.Do(r.Context(), pprof.Labels("side", side), func(context.Context) { h.ServeHTTP(sw, r) })
	return sw.status
}

func newLabs(t testing.TB) *labs {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	xenDir := t.TempDir()
	xs, err := xenlab.New(t.Context(), xenlab.Options{Dir: xenDir, Users: map[string]string{labUser: labPass}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	as, err := awslab.New(t.Context(), awslab.Options{Dir: t.TempDir(), AccessKey: labKey, SecretKey: labSecret, Region: "us-east-1", Logger: log, Delay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l := &labs{xenSrv: xs, xenDir: xenDir, puts: map[string]int{}, release: make(chan struct{}), reached: make(chan struct{}), importsHeld: make(chan struct{})}
	xhh := xs.Handler()
	xh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/import_raw_vdi" {
			l.mu.Lock()
			l.imports++
			wait := l.holdImports > 0 && l.imports > l.holdImports
			if l.holdImports > 0 && l.imports == l.holdImports+1 {
				close(l.importsHeld)
			}
			l.mu.Unlock()
			if wait && !l.waitRelease(r) {
				return
			}
		}
		status := serveLabelled(xhh, "xenlab", w, r)
		if r.URL.Path == "/import_raw_vdi" && status < 300 {
			l.mu.Lock()
			l.importsDone++
			l.mu.Unlock()
		}
	}))
	ah := as.Handler()
	awsHS := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isPut := r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/snapshots/") && strings.Contains(r.URL.Path, "/blocks/")
		if isPut {
			l.mu.Lock()
			wait := l.hold > 0 && l.held >= l.hold
			l.mu.Unlock()
			if wait && !l.waitRelease(r) {
				return
			}
		}
		status := serveLabelled(ah, "awslab", w, r)
		if isPut && status < 300 {
			l.mu.Lock()
			l.puts[r.URL.Path]++
			l.putBytes += r.ContentLength
			l.held++
			if l.hold > 0 && l.held == l.hold {
				close(l.reached)
			}
			l.mu.Unlock()
		}
	}))
	l.xenURL, l.awsURL = xh.URL, awsHS.URL
	t.Cleanup(func() {
		l.unhold()
		awsHS.Close()
		xh.Close()
		as.Close()
		xs.Close()
	})
	return l
}

func (l *labs) holdAfter(n int) {
	l.mu.Lock()
	l.hold, l.held = n, 0
	l.mu.Unlock()
}

func (l *labs) unhold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.release:
	default:
		close(l.release)
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(s int) { w.status = s; w.ResponseWriter.WriteHeader(s) }

// openSites connects to both labs as sites "dc1" (xen) and "aws1" (aws),
// with workers EBS blocks in flight (0: the provider's default).
func openSites(ctx context.Context, xenURL, awsURL string, workers int) (siteMap, error) {
	x, err := xen.Open(ctx, xen.Config{URL: xenURL, User: labUser, Password: labPass}, nil)
	if err != nil {
		return nil, err
	}
	a, err := aws.Open(ctx, aws.Config{Name: "aws1", Region: "us-east-1", Endpoint: awsURL, AccessKey: labKey, SecretKey: aws.Secret(labSecret), Bucket: labBucket,
		PollEvery: 10 * time.Millisecond, PollMax: 100 * time.Millisecond, MaxAttempts: 3, Workers: workers}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return siteMap{"dc1": x, "aws1": a}, nil
}

func (l *labs) sites(t testing.TB) siteMap {
	t.Helper()
	s, err := openSites(t.Context(), l.xenURL, l.awsURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s["aws1"].(*aws.Provider).S3().CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: awssdk.String(labBucket)}); err != nil {
		t.Fatal(err)
	}
	return s
}

// addVM imports a VM into the XenServer lab with the given disks.
func addVM(t testing.TB, s siteMap, name string, disks ...disk.Image) core.VMID {
	t.Helper()
	spec := core.VMSpec{Name: name, CPUs: 2, MemoryBytes: 1 << 30, NICs: []core.NICSpec{{Name: "eth0"}}}
	if name == "web-1" {
		spec.CPUs, spec.MemoryBytes = 1, 768<<20 // smaller than its instance type
	}
	for i, d := range disks {
		spec.Disks = append(spec.Disks, core.DiskSpec{Name: fmt.Sprintf("disk%d", i), Size: d.Size(), Bootable: i == 0, Position: i})
	}
	id, err := s["dc1"].(provider.Importer).ImportVM(t.Context(), spec, disks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func pattern(name string, size int64, fill float64) synth.Image {
	return synth.Image{P: synth.MakePattern(name, size, fill, 7)}
}

// manager runs jobs with the migration kind over a SQLite store in dir.
func manager(t testing.TB, dir string, sites Sites, work bool) *job.Manager {
	t.Helper()
	loc, err := store.ParseLocation(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.Context(), loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := job.NewRegistry()
	job.Register(reg, (&Migrator{Sites: sites, Window: 16 << 20, SaveEvery: 4}).Kind())
	m, err := job.Open(t.Context(), loc, st, reg, &job.Options{Work: work, SingleNode: work, PollInterval: 20 * time.Millisecond,
		LeaseTTL: 2 * time.Second, ProgressInterval: 20 * time.Millisecond, RetryBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()); st.Close() })
	return m
}

func submit(t testing.TB, m *job.Manager, sites Sites, r Request) (Plan, job.Job) {
	t.Helper()
	pl := Planner{Sites: sites}
	plan, err := pl.Plan(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := jsonMarshal(State{Plan: plan})
	j, err := m.Submit(t.Context(), KindName, b, &job.SubmitOptions{Planned: true})
	if err != nil {
		t.Fatal(err)
	}
	return plan, j
}

// migrateOK runs a migration to its end and fails the test unless it
// succeeds.
func migrateOK(t testing.TB, m *job.Manager, sites Sites, r Request) (Plan, job.Job) {
	t.Helper()
	plan, j := submit(t, m, sites, r)
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("migrate %s/%s to %s: %s: %s", r.Source, r.VM, r.Target, j.State, j.Error)
	}
	return plan, j
}

func waitJob(t testing.TB, m *job.Manager, id string, states ...string) job.Job {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		j, err := m.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range states {
			if j.State == s {
				return j
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s (error %q), want %v", id, j.State, j.Error, states)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a timing assumption
	}
}

// cancelWhen cancels job j once at is closed (the transfer reached the
// point the test holds it at; never within 2 minutes fails with never) and
// waits until the job is cancelled.
func cancelWhen(t *testing.T, m *job.Manager, j job.Job, at <-chan struct{}, never string) {
	t.Helper()
	select {
	case <-at:
	case <-time.After(2 * time.Minute):
		t.Fatal(never)
	}
	if _, err := m.Cancel(t.Context(), j.ID, "test"); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, m, j.ID, store.JobCanceled, store.JobFailed, store.JobSucceeded)
	if j.State != store.JobCanceled {
		t.Fatalf("job %s: %s", j.State, j.Error)
	}
}

func result(t testing.TB, j job.Job) Result {
	t.Helper()
	var r Result
	if err := jsonUnmarshal(j.Result, &r); err != nil {
		t.Fatalf("result %s: %v", j.Result, err)
	}
	return r
}

// sameData fails unless a and b read the same everywhere either holds
// data (beyond the shorter one, the longer must read zeros).
func sameData(t testing.TB, a, b disk.Image) {
	t.Helper()
	check := func(x, y disk.Image) {
		buf1, buf2 := make([]byte, 1<<20), make([]byte, 1<<20)
		for e, err := range x.Extents(t.Context(), 0, x.Size()) {
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind != disk.Data {
				continue
			}
			for off := e.Off; off < e.End(); off += int64(len(buf1)) {
				n := min(int64(len(buf1)), e.End()-off)
				if _, err := x.ReadAt(buf1[:n], off); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				clear(buf2[:n])
				if m := min(n, y.Size()-off); m > 0 {
					if _, err := y.ReadAt(buf2[:m], off); err != nil && !errors.Is(err, io.EOF) {
						t.Fatal(err)
					}
				}
				if !bytes.Equal(buf1[:n], buf2[:n]) {
					t.Fatalf("the disks differ in [%d, %d)", off, off+n)
				}
			}
		}
	}
	check(a, b)
	check(b, a)
}

// sameAsDisk fails unless the site's disk id reads as want.
func sameAsDisk(t testing.TB, p provider.DiskExporter, id core.DiskID, want disk.Image) {
	t.Helper()
	got, err := p.OpenDisk(t.Context(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	sameData(t, want, got)
}

// nonZeroBlocks counts the EBS blocks of img that hold a non-zero byte.
func nonZeroBlocks(t testing.TB, img disk.Image) int64 {
	t.Helper()
	blocks, err := blockSet(t.Context(), img)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	buf := make([]byte, BlockSize)
	for _, i := range blocks {
		k := min(BlockSize, img.Size()-i*BlockSize)
		clear(buf)
		img.ReadAt(buf[:k], i*BlockSize)
		if !bytes.Equal(buf, zeroBlock) {
			n++
		}
	}
	return n
}

// TestMigrateBothWays moves a two-disk VM from the XenServer lab to the
// EC2 lab and back, through jobs, and checks the data end to end, the
// bytes on the wire, the verification record and the inventory.
func TestMigrateBothWays(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	root, data := pattern("root", 40<<20, 0.4), pattern("data", 8<<20+4096, 0.5)
	vm := addVM(t, s, "web-1", root, data)
	m := manager(t, t.TempDir(), s, true)

	plan, j := submit(t, m, s, Request{Source: "dc1", VM: "web-1", Target: "aws1"})
	if plan.Instance == nil || plan.Instance.Type != "t3.micro" || plan.Instance.Monthly <= 0 {
		t.Errorf("plan instance %+v, want the cheapest type with 2 vCPUs and 1 GiB (t3.micro), priced", plan.Instance)
	}
	if len(plan.Disks) != 2 || plan.Disks[1].TargetSize != 1<<30 {
		t.Errorf("plan disks %+v", plan.Disks)
	}
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("xen→aws: %s: %s", j.State, j.Error)
	}
	r := result(t, j)
	if !r.Verified || len(r.Verification) != 2 {
		t.Fatalf("xen→aws not verified: %+v", r)
	}
	wantBlocks := nonZeroBlocks(t, root) + nonZeroBlocks(t, data)
	if r.BytesSent != wantBlocks*BlockSize || l.putBytes != wantBlocks*BlockSize {
		t.Errorf("xen→aws sent %d bytes (lab saw %d), want %d: exactly the %d non-zero blocks", r.BytesSent, l.putBytes, wantBlocks*BlockSize, wantBlocks)
	}
	for _, v := range r.Verification {
		if v.SourceDigest != v.TargetDigest || v.Blocks == 0 || v.Reread != 0 {
			t.Errorf("verification %+v", v)
		}
	}
	a := s["aws1"].(*aws.Provider)
	var inst core.VM
	a.ListVMs(t.Context(), provider.Filter{IDs: []core.VMID{r.TargetVM}}, func(v core.VM) error { inst = v; return nil })
	if inst.PowerState != core.Running || inst.InstanceTyp != "t3.micro" || len(inst.Disks) != 2 {
		t.Fatalf("instance %+v", inst)
	}
	// the source is as it was: its snapshot is gone, the VM untouched
	x := s["dc1"].(*xen.Provider)
	recs, err := x.Client().VM().GetAllRecords(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if rec.IsASnapshot {
			t.Errorf("snapshot %q left on the source", rec.NameLabel)
		}
	}

	// and back: EC2 → XenServer
	plan, j = submit(t, m, s, Request{Source: "aws1", VM: string(r.TargetVM), Target: "dc1", Name: "web-1-back"})
	if plan.Warnings == nil {
		t.Errorf("migrating a running instance gives no warning")
	}
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("aws→xen: %s: %s", j.State, j.Error)
	}
	r2 := result(t, j)
	if !r2.Verified {
		t.Fatalf("aws→xen not verified: %+v", r2)
	}
	var back core.VM
	x.ListVMs(t.Context(), provider.Filter{IDs: []core.VMID{r2.TargetVM}}, func(v core.VM) error { back = v; return nil })
	if back.Name != "web-1-back" || back.PowerState != core.Running || back.CPUs != 1 || back.MemoryBytes != 768<<20 || len(back.Disks) != 2 || len(back.NICs) != 1 {
		t.Fatalf("VM after the round trip: %+v", back)
	}
	for i, want := range []disk.Image{root, data} {
		sameAsDisk(t, x, back.Disks[i].ID, want)
	}
	_ = vm
}

// TestCancelRemovesEverything cancels a migration in the middle of the
// transfer: nothing it created is left on either site.
func TestCancelRemovesEverything(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	addVM(t, s, "db-1", pattern("root", 48<<20, 0.6))
	m := manager(t, t.TempDir(), s, true)
	l.holdAfter(10)
	_, j := submit(t, m, s, Request{Source: "dc1", VM: "db-1", Target: "aws1"})
	cancelWhen(t, m, j, l.reached, "the transfer never started")
	a := s["aws1"].(*aws.Provider)
	snaps, err := a.ListSnapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	imgs, _ := a.ListImages(t.Context())
	var insts []core.VM
	a.ListVMs(t.Context(), provider.Filter{}, func(v core.VM) error { insts = append(insts, v); return nil })
	if len(snaps) != 0 || len(imgs) != 0 || len(insts) != 0 {
		t.Errorf("left on the target: snapshots %v, images %v, instances %v", snaps, imgs, insts)
	}
	recs, _ := s["dc1"].(*xen.Provider).Client().VM().GetAllRecords(t.Context())
	for _, rec := range recs {
		if rec.IsASnapshot {
			t.Errorf("snapshot %q left on the source", rec.NameLabel)
		}
	}
}

// TestPlanRefusals: migrations refused in planning, with the reason.
func TestPlanRefusals(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	addVM(t, s, "app", pattern("root", 4<<20, 0.5))
	addVM(t, s, "twin", pattern("a", 1<<20, 0.5))
	addVM(t, s, "twin", pattern("b", 1<<20, 0.5))
	pl := Planner{Sites: s}
	tests := []struct {
		name string
		r    Request
		code error
		says string
	}{
		{"unknown target site", Request{Source: "dc1", VM: "app", Target: "mars"}, errs.ErrNotFound, "target site mars"},
		{"unknown source site", Request{Source: "nowhere", VM: "app", Target: "aws1"}, errs.ErrNotFound, "source site nowhere"},
		{"unknown VM", Request{Source: "dc1", VM: "ghost", Target: "aws1"}, errs.ErrNotFound, `"ghost"`},
		{"ambiguous name", Request{Source: "dc1", VM: "twin", Target: "aws1"}, errs.ErrInvalidArgument, "2 VMs are named"},
		{"same site", Request{Source: "dc1", VM: "app", Target: "dc1"}, errs.ErrInvalidArgument, "both dc1"},
		{"unknown subnet", Request{Source: "dc1", VM: "app", Target: "aws1", Subnet: "subnet-nope"}, errs.ErrNotFound, "subnet-nope"},
		{"unknown security group", Request{Source: "dc1", VM: "app", Target: "aws1", SecurityGroups: []string{"sg-nope"}}, errs.ErrNotFound, "sg-nope"},
		{"bad method", Request{Source: "dc1", VM: "app", Target: "aws1", Method: "carrier-pigeon"}, errs.ErrInvalidArgument, "carrier-pigeon"},
		{"SR on an EC2 target", Request{Source: "dc1", VM: "app", Target: "aws1", SR: "Local storage"}, errs.ErrInvalidArgument, "--sr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pl.Plan(t.Context(), tc.r)
			if !errors.Is(err, tc.code) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Plan = %v; want %v saying %q", err, tc.code, tc.says)
			}
		})
	}
	// disks too large for the target
	for _, tc := range []struct {
		target provider.Kind
		size   int64
		says   string
	}{
		{provider.KindAWS, 17 << 40, "at most 16 TiB"},
		{provider.KindXen, 3 << 40, "at most 2040 GiB"},
	} {
		p := Plan{TargetKind: tc.target, VM: core.VM{Disks: []core.Disk{{ID: "d1", Name: "huge", Size: tc.size}}}}
		err := pl.planDisks(&p)
		if !errors.Is(err, errs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "huge") {
			t.Errorf("%s target, %d-byte disk: %v; want a refusal saying %q", tc.target, tc.size, err, tc.says)
		}
	}
}

// TestMain doubles as a server process running migration jobs
// (FERRY_TEST_MAIN=migratenode), which TestResumeAfterKill kills with
// SIGKILL in the middle of a transfer.
func TestMain(m *testing.M) {
	if os.Getenv("FERRY_TEST_MAIN") == "migratenode" {
		os.Exit(migrateNode())
	}
	os.Exit(m.Run())
}

func migrateNode() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	s, err := openSites(ctx, os.Getenv("FERRY_TEST_XEN"), os.Getenv("FERRY_TEST_AWS"), 4)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	loc, _ := store.ParseLocation(os.Getenv("FERRY_TEST_DATA"), "")
	st, err := store.Open(ctx, loc, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg := job.NewRegistry()
	window, _ := strconv.ParseInt(os.Getenv("FERRY_TEST_WINDOW"), 10, 64)
	job.Register(reg, (&Migrator{Sites: s, SaveEvery: 4, Window: window}).Kind())
	jm, err := job.Open(ctx, loc, st, reg, &job.Options{Work: true, SingleNode: true, PollInterval: 20 * time.Millisecond,
		LeaseTTL: 2 * time.Second, ProgressInterval: 20 * time.Millisecond})
	if err == nil {
		err = jm.Start(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	<-ctx.Done()
	jm.Stop(context.Background())
	return 0
}

type node struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startNode(t testing.TB, env ...string) *node {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"FERRY_TEST_MAIN=migratenode"}, env...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ready <- sc.Scan() && sc.Text() == "ready"
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(n.kill)
	if !<-ready {
		<-n.exited
		t.Fatalf("migration node did not start: %s", stderr.String())
	}
	return n
}

func (n *node) kill() {
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// TestResumeAfterKill kills the server (kill -9) in the middle of a
// xen→aws transfer; a new server resumes the job, and only blocks not
// committed by the first run are sent again.
func TestResumeAfterKill(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	root := pattern("root", 64<<20, 0.7)
	addVM(t, s, "crm-1", root)
	dir := t.TempDir()
	env := []string{"FERRY_TEST_DATA=" + dir, "FERRY_TEST_XEN=" + l.xenURL, "FERRY_TEST_AWS=" + l.awsURL}
	n1 := startNode(t, env...)
	m := manager(t, dir, s, false)
	l.holdAfter(40)
	_, j := submit(t, m, s, Request{Source: "dc1", VM: "crm-1", Target: "aws1"})
	select {
	case <-l.reached:
	case <-time.After(2 * time.Minute):
		t.Fatal("the transfer never started")
	}
	n1.kill()
	l.mu.Lock()
	first := map[string]int{}
	for k, v := range l.puts {
		first[k] = v
	}
	l.mu.Unlock()
	l.unhold()
	startNode(t, env...)
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("job %s: %s", j.State, j.Error)
	}
	r := result(t, j)
	if !r.Verified || r.Verification[0].Reread == 0 {
		t.Errorf("after the resume: verified %v, source blocks read again %d (want > 0: the first run's checksums died with it)", r.Verified, r.Verification[0].Reread)
	}
	want := nonZeroBlocks(t, root)
	l.mu.Lock()
	defer l.mu.Unlock()
	var again int
	for _, c := range l.puts {
		if c > 1 {
			again++
		}
	}
	if int64(len(l.puts)) != want {
		t.Errorf("%d distinct blocks written, want the %d non-zero ones", len(l.puts), want)
	}
	// The first run committed its checkpoint every 4 blocks with 4
	// workers: at most 4+4 acknowledged blocks can be sent twice.
	if again > 8 || len(first) < 40 {
		t.Errorf("%d of the %d blocks the first run sent were sent again", again, len(first))
	}
	t.Logf("first run: %d blocks; sent again after the resume: %d; blocks in total %d", len(first), again, want)
}

func jsonMarshal(v any) ([]byte, error)   { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestMigrateS3Import moves a VM into EC2 the fallback way: a VMDK staged
// in S3 and ImportSnapshot; the staged object is gone afterwards.
func TestMigrateS3Import(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	root := pattern("root", 24<<20, 0.5)
	addVM(t, s, "legacy-1", root)
	m := manager(t, t.TempDir(), s, true)
	plan, j := submit(t, m, s, Request{Source: "dc1", VM: "legacy-1", Target: "aws1", Method: MethodS3Import})
	if plan.Method != MethodS3Import {
		t.Fatalf("plan method %q", plan.Method)
	}
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("job %s: %s", j.State, j.Error)
	}
	r := result(t, j)
	if !r.Verified || l.putBytes != 0 {
		t.Fatalf("verified %v, EBS direct bytes %d (want none): %+v", r.Verified, l.putBytes, r)
	}
	a := s["aws1"].(*aws.Provider)
	out, err := a.S3().ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: awssdk.String(labBucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Contents) != 0 {
		t.Errorf("%d staged objects left in the bucket", len(out.Contents))
	}
	sameAsDisk(t, a, core.DiskID(r.Verification[0].Target), root)
}

// TestCancelToXen cancels a migration into XenServer while a window is
// being written: the VDIs it made are gone, and so is the source snapshot.
func TestCancelToXen(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	addVM(t, s, "web-2", pattern("root", 40<<20, 0.5))
	m := manager(t, t.TempDir(), s, true)
	_, j := migrateOK(t, m, s, Request{Source: "dc1", VM: "web-2", Target: "aws1"})
	inst := result(t, j).TargetVM
	x := s["dc1"].(*xen.Provider)
	vdisBefore := countVDIs(t, x)
	l.mu.Lock()
	l.holdImports, l.imports, l.importsDone = 1, 0, 0 // the first window goes in, the second waits
	l.mu.Unlock()
	_, j = submit(t, m, s, Request{Source: "aws1", VM: string(inst), Target: "dc1"})
	cancelWhen(t, m, j, l.importsHeld, "the transfer never reached its second window")
	if n := countVDIs(t, x); n != vdisBefore {
		t.Errorf("%d VDIs in the pool after the cancel, %d before", n, vdisBefore)
	}
	snaps, err := s["aws1"].(*aws.Provider).ListSnapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps {
		if sn.Tags["ferry:job"] == j.ID {
			t.Errorf("the source snapshot %s of the cancelled job is left", sn.ID)
		}
	}
}

func countVDIs(t *testing.T, x *xen.Provider) int {
	t.Helper()
	recs, err := x.Client().VDI().GetAllRecords(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// TestResumeAfterKillToXen kills the server while a migration into
// XenServer writes its second window; the resumed job writes the windows
// not committed, and not the one that was.
func TestResumeAfterKillToXen(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	root := pattern("root", 40<<20, 0.6)
	addVM(t, s, "erp-1", root)
	m0 := manager(t, t.TempDir(), s, true)
	_, j := migrateOK(t, m0, s, Request{Source: "dc1", VM: "erp-1", Target: "aws1"})
	inst := result(t, j).TargetVM

	dir := t.TempDir()
	env := []string{"FERRY_TEST_DATA=" + dir, "FERRY_TEST_XEN=" + l.xenURL, "FERRY_TEST_AWS=" + l.awsURL, "FERRY_TEST_WINDOW=" + strconv.Itoa(16<<20)}
	n1 := startNode(t, env...)
	m := manager(t, dir, s, false)
	l.mu.Lock()
	l.holdImports, l.imports, l.importsDone = 1, 0, 0 // count this migration's windows only
	l.mu.Unlock()
	_, j = submit(t, m, s, Request{Source: "aws1", VM: string(inst), Target: "dc1", Name: "erp-1-back"})
	select {
	case <-l.importsHeld:
	case <-time.After(2 * time.Minute):
		t.Fatal("the transfer never reached its second window")
	}
	n1.kill()
	l.mu.Lock()
	first := l.importsDone
	l.mu.Unlock()
	l.unhold()
	startNode(t, env...)
	j = waitJob(t, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
	if j.State != store.JobSucceeded {
		t.Fatalf("job %s: %s", j.State, j.Error)
	}
	r := result(t, j)
	if !r.Verified {
		t.Fatalf("not verified: %+v", r)
	}
	// 40 MiB of data in 16 MiB windows: three windows hold data.
	l.mu.Lock()
	defer l.mu.Unlock()
	if first != 1 || l.importsDone != 3 {
		t.Errorf("windows written: %d before the kill, %d in all; want 1 and 3 (none twice)", first, l.importsDone)
	}
	x := s["dc1"].(*xen.Provider)
	var back core.VM
	x.ListVMs(t.Context(), provider.Filter{IDs: []core.VMID{r.TargetVM}}, func(v core.VM) error { back = v; return nil })
	sameAsDisk(t, x, back.Disks[0].ID, root)
}

// TestRegisterAfterCrash: register and launch steps run again after a
// crash that came between the call and the checkpoint take up the AMI and
// the instance the job made, instead of failing on the duplicate name or
// launching a second instance.
func TestRegisterAfterCrash(t *testing.T) {
	l := newLabs(t)
	s := l.sites(t)
	addVM(t, s, "api-1", pattern("root", 8<<20, 0.5))
	m := manager(t, t.TempDir(), s, true)
	plan, j := migrateOK(t, m, s, Request{Source: "dc1", VM: "api-1", Target: "aws1"})
	r := result(t, j)
	st := State{Plan: plan, Disks: []DiskState{{Target: r.Verification[0].Target}}}
	mig := &Migrator{Sites: s}
	env := &job.Env{JobID: j.ID, Logger: slog.New(slog.DiscardHandler), Progress: progress.Nop()}
	if err := mig.register(t.Context(), env, &st); err != nil {
		t.Fatal(err)
	}
	if st.Image != r.Image {
		t.Fatalf("register again: image %q, want the job's %q", st.Image, r.Image)
	}
	// and a launch run again gets the job's instance
	st.TargetVM = ""
	if err := mig.createVM(t.Context(), env, &st); err != nil {
		t.Fatal(err)
	}
	if st.TargetVM != r.TargetVM {
		t.Fatalf("launch again: instance %q, want the job's %q", st.TargetVM, r.TargetVM)
	}
	// a VDI created again for a job finds the one it made
	x := s["dc1"].(*xen.Provider)
	xst := State{Plan: Plan{Request: Request{Source: "aws1", Target: "dc1"}, TargetKind: provider.KindXen, Name: "again",
		Disks: []PlanDisk{{Disk: core.Disk{Name: "d"}, TargetSize: 1 << 20}}}, Disks: make([]DiskState, 1)}
	if err := mig.createDisks(t.Context(), env, &xst); err != nil {
		t.Fatal(err)
	}
	first := xst.Disks[0].Target
	xst.Disks[0].Target = ""
	if err := mig.createDisks(t.Context(), env, &xst); err != nil || xst.Disks[0].Target != first {
		t.Fatalf("create disks again: %q, %v; want the job's %q", xst.Disks[0].Target, err, first)
	}
	if n := countVDIsTagged(t, x, env.JobID); n != 1 {
		t.Fatalf("%d VDIs of the job, want 1", n)
	}
	// a VM created again for a job replaces the one an earlier run left,
	// and keeps the job's VDI; a VM of the job that runs is not touched
	xst.Plan.VM = core.VM{ID: "vm-src", CPUs: 1, MemoryBytes: 256 << 20}
	var vms []core.VMID
	for range 2 {
		xst.TargetVM = ""
		if err := mig.createVM(t.Context(), env, &xst); err != nil {
			t.Fatal(err)
		}
		vms = append(vms, xst.TargetVM)
	}
	if vms[0] == vms[1] || countVMsTagged(t, x, env.JobID) != 1 || countVDIsTagged(t, x, env.JobID) != 1 {
		t.Fatalf("create VM twice: VMs %v, %d of the job left (want 1), %d VDIs", vms, countVMsTagged(t, x, env.JobID), countVDIsTagged(t, x, env.JobID))
	}
	if err := x.PowerVM(t.Context(), vms[1], provider.Start); err != nil {
		t.Fatal(err)
	}
	xst.TargetVM = ""
	if err := mig.createVM(t.Context(), env, &xst); !errs.Is(err, errs.FailedPrecondition) {
		t.Fatalf("create VM again beside the job's running VM: %v, want FailedPrecondition", err)
	}
	x.PowerVM(t.Context(), vms[1], provider.Stop)
	// a source snapshot taken again finds the one the first run took,
	// also when the crash came before it was tagged (found by its name)
	vm, err := findVM(t.Context(), x, "api-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, untagged := range []bool{false, true} {
		env.JobID = fmt.Sprintf("j-snap-%v", untagged)
		sst := State{Plan: Plan{Request: Request{Source: "dc1", Target: "aws1"}, VM: vm, Disks: plan.Disks}}
		if err := mig.snapshot(t.Context(), env, &sst); err != nil {
			t.Fatal(err)
		}
		first := sst.SnapshotID
		if untagged {
			ref, err := x.Client().VM().GetByUUID(t.Context(), string(first))
			if err != nil {
				t.Fatal(err)
			}
			if err := x.Client().VM().SetTags(t.Context(), ref, nil); err != nil {
				t.Fatal(err)
			}
		}
		sst.SnapshotID, sst.Disks, sst.Created = "", nil, nil
		if err := mig.snapshot(t.Context(), env, &sst); err != nil || sst.SnapshotID != first || len(sst.Disks) != len(plan.Disks) {
			t.Fatalf("snapshot again (untagged %v): %q, %v; want the first run's %q", untagged, sst.SnapshotID, err, first)
		}
		rec, err := x.Client().VM().GetRecord(t.Context(), mustRef(t, x, vm.ID))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, sref := range rec.Snapshots {
			if sr, err := x.Client().VM().GetRecord(t.Context(), sref); err == nil && slices.Contains(sr.Tags, "ferry:job="+env.JobID) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d snapshots of the job (untagged %v), want 1", n, untagged)
		}
	}
	// another job's register does not take it
	st2 := State{Plan: plan, Disks: st.Disks}
	env.JobID = "j-someone-else"
	if err := mig.register(t.Context(), env, &st2); err == nil && st2.Image == r.Image {
		t.Fatal("another job took up this job's image")
	}
}

func mustRef(t *testing.T, x *xen.Provider, id core.VMID) xapi.VMRef {
	t.Helper()
	ref, err := x.Client().VM().GetByUUID(t.Context(), string(id))
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func countVMsTagged(t *testing.T, x *xen.Provider, jobID string) int {
	t.Helper()
	recs, err := x.Client().VM().GetAllRecords(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if !r.IsASnapshot && !r.IsATemplate && slices.Contains(r.Tags, "ferry:job="+jobID) {
			n++
		}
	}
	return n
}

func countVDIsTagged(t *testing.T, x *xen.Provider, jobID string) int {
	t.Helper()
	recs, err := x.Client().VDI().GetAllRecords(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if slices.Contains(r.Tags, "ferry:job="+jobID) {
			n++
		}
	}
	return n
}
