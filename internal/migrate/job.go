package migrate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws"
	"github.com/ferry-project/ferry/internal/provider/aws/ebsdirect"
	"github.com/ferry-project/ferry/internal/provider/xen"
)

// KindName is the migration job's kind.
const KindName = "vm.migrate"

// Tags on a migrated EC2 instance that keep the source VM's size.
const (
	TagCPUs   = "ferry:cpus"
	TagMemory = "ferry:memory-bytes"
)

// Resource is something a migration created, on the source (its
// snapshot) or the target; a cancelled or failed migration removes them
// all, newest first.
type Resource struct {
	Site core.SiteName `json:"site"`
	// Kind: snapshot (a VM snapshot, via the site's Snapshotter),
	// ebs-snapshot, ami, instance, vdi, vm.
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// DiskState is how far one disk got.
type DiskState struct {
	// Source is the snapshot's disk the data is read from.
	Source core.DiskID `json:"source,omitempty"`
	// Target is the EBS snapshot or the VDI written.
	Target string `json:"target,omitempty"`
	// EBS is the EBS direct upload's checkpoint (EC2 targets).
	EBS json.RawMessage `json:"ebs,omitempty"`
	// Committed is how far a VDI is written: every window below it was
	// accepted by the pool (XenServer targets).
	Committed int64 `json:"committed,omitempty"`
	Done      bool  `json:"done,omitempty"`
	// BytesRead is the data read from the source; BytesSent the data
	// sent to the target (both over every run of the job).
	BytesRead int64 `json:"bytes_read"`
	BytesSent int64 `json:"bytes_sent"`
	// BlocksSent and BlocksResumed (EC2 targets): blocks sent by the last
	// run, and blocks it found already committed by an earlier one.
	BlocksSent    int64   `json:"blocks_sent,omitempty"`
	BlocksResumed int64   `json:"blocks_resumed,omitempty"`
	Seconds       float64 `json:"seconds"`
}

// State is a migration job's state: its plan, and what it has done.
type State struct {
	Plan       Plan            `json:"plan"`
	SnapshotID core.SnapshotID `json:"snapshot_id,omitempty"`
	Disks      []DiskState     `json:"disks,omitempty"`
	Image      string          `json:"image,omitempty"` // the AMI (EC2 targets)
	TargetVM   core.VMID       `json:"target_vm,omitempty"`
	Created    []Resource      `json:"created,omitempty"`
	Verify     []Verification  `json:"verification,omitempty"`
	Started    time.Time       `json:"started,omitzero"`
	Finished   time.Time       `json:"finished,omitzero"`
}

// Result is what a finished migration reports.
type Result struct {
	Source       string         `json:"source"`
	Target       string         `json:"target"`
	TargetVM     core.VMID      `json:"target_vm"`
	Image        string         `json:"image,omitempty"`
	InstanceType string         `json:"instance_type,omitempty"`
	Monthly      float64        `json:"monthly_cost,omitempty"`
	DiskBytes    int64          `json:"disk_bytes"`
	BytesRead    int64          `json:"bytes_read"`
	BytesSent    int64          `json:"bytes_sent"`
	Seconds      float64        `json:"seconds"`
	TransferSecs float64        `json:"transfer_seconds"`
	Verification []Verification `json:"verification"`
	Verified     bool           `json:"verified"`
}

// Migrator runs migration jobs.
type Migrator struct {
	Sites Sites
	// Window is how much of a VDI's address space one import_raw_vdi
	// covers (a commit point); default 256 MiB, or a 16th of the disk
	// when that is larger.
	Window int64
	// SaveEvery is how many EBS blocks go between checkpoints; default 32.
	SaveEvery int
	// VerifyWorkers read blocks back at once; default 8.
	VerifyWorkers int

	mu   sync.Mutex
	sums map[string]*blockSums // by job ID and disk index
}

func (m *Migrator) blockSums(jobID string, disk int, fresh bool) *blockSums {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sums == nil {
		m.sums = map[string]*blockSums{}
	}
	k := fmt.Sprintf("%s/%d", jobID, disk)
	if fresh || m.sums[k] == nil {
		m.sums[k] = newBlockSums()
	}
	return m.sums[k]
}

func (m *Migrator) forget(jobID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.sums {
		if strings.HasPrefix(k, jobID+"/") {
			delete(m.sums, k)
		}
	}
}

func toAWS(s *State) bool { return s.Plan.TargetKind == provider.KindAWS }
func toXen(s *State) bool { return s.Plan.TargetKind == provider.KindXen }

// Kind is the migration job kind. Its arguments are a State holding only
// a Plan (see Planner.Plan).
func (m *Migrator) Kind() job.Kind[State] {
	return job.Kind[State]{
		Name:    KindName,
		Planned: true,
		Validate: func(s *State) error {
			p := s.Plan
			switch {
			case p.Request.Source == "" || p.Request.Target == "" || len(p.Disks) == 0:
				return fmt.Errorf("migration: the arguments hold no plan (plan with POST /api/v1/migrations): %w", errs.ErrInvalidArgument)
			case p.Direction() != "xen→aws" && p.Direction() != "aws→xen":
				return fmt.Errorf("migration %s: not supported: %w", p.Direction(), errs.ErrUnimplemented)
			}
			*s = State{Plan: p}
			return nil
		},
		Steps: []job.Step[State]{
			{Name: "check", Run: m.check, Undo: m.cleanup},
			{Name: "snapshot", Run: m.snapshot},
			{Name: "create disks", When: toXen, Run: m.createDisks},
			{Name: "transfer", Run: m.transfer},
			{Name: "verify", Run: m.verify},
			{Name: "register image", When: toAWS, Run: m.register},
			{Name: "create VM", Run: m.createVM},
			{Name: "start", When: func(s *State) bool { return toXen(s) && s.Plan.Start }, Run: m.start},
			{Name: "finish", Run: m.finish},
		},
		Result: func(s *State) any { return s.result() },
	}
}

func (s *State) result() Result {
	r := Result{
		Source: fmt.Sprintf("%s/%s", s.Plan.Request.Source, s.Plan.VM.ID), Target: string(s.Plan.Request.Target),
		TargetVM: s.TargetVM, Image: s.Image, DiskBytes: s.Plan.DiskBytes, Verification: s.Verify,
		Verified: len(s.Verify) == len(s.Plan.Disks),
	}
	if s.Plan.Instance != nil {
		r.InstanceType, r.Monthly = s.Plan.Instance.Type, s.Plan.Instance.Monthly
	}
	for _, d := range s.Disks {
		r.BytesRead += d.BytesRead
		r.BytesSent += d.BytesSent
		r.TransferSecs += d.Seconds
	}
	for _, v := range s.Verify {
		r.Verified = r.Verified && v.OK
	}
	if !s.Started.IsZero() && !s.Finished.IsZero() {
		r.Seconds = s.Finished.Sub(s.Started).Seconds()
	}
	return r
}

// record adds r to the ledger and checkpoints it at once, so that nothing
// created is forgotten by a crash that follows.
func record(ctx context.Context, e *job.Env, s *State, r Resource) error {
	for _, c := range s.Created {
		if c == r {
			return nil
		}
	}
	s.Created = append(s.Created, r)
	return e.Checkpoint(ctx)
}

func (m *Migrator) providers(ctx context.Context, s *State) (src, tgt provider.Provider, err error) {
	if src, err = m.Sites.Provider(ctx, s.Plan.Request.Source); err != nil {
		return nil, nil, fmt.Errorf("source site %s: %w", s.Plan.Request.Source, err)
	}
	if tgt, err = m.Sites.Provider(ctx, s.Plan.Request.Target); err != nil {
		return nil, nil, fmt.Errorf("target site %s: %w", s.Plan.Request.Target, err)
	}
	return src, tgt, nil
}

func (m *Migrator) awsTarget(ctx context.Context, s *State) (*aws.Provider, error) {
	return targetAs[*aws.Provider](ctx, m, s, "an EC2 region")
}

func (m *Migrator) xenTarget(ctx context.Context, s *State) (*xen.Provider, error) {
	return targetAs[*xen.Provider](ctx, m, s, "a XenServer pool")
}

// targetAs returns the target site's provider as P, the driver the plan
// was made for.
func targetAs[P provider.Provider](ctx context.Context, m *Migrator, s *State, what string) (P, error) {
	var zero P
	_, tgt, err := m.providers(ctx, s)
	if err != nil {
		return zero, err
	}
	p, ok := tgt.(P)
	if !ok {
		return zero, fmt.Errorf("target site %s is no longer %s: %w", s.Plan.Request.Target, what, errs.ErrFailedPrecondition)
	}
	return p, nil
}

// check makes sure the source VM is still there, as planned.
func (m *Migrator) check(ctx context.Context, e *job.Env, s *State) error {
	if s.Started.IsZero() {
		s.Started = time.Now().UTC()
	}
	src, _, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	vm, err := findVM(ctx, src, string(s.Plan.VM.ID))
	if err != nil {
		return fmt.Errorf("source VM: %w", err)
	}
	if len(vm.Disks) != len(s.Plan.Disks) {
		return fmt.Errorf("source VM %s has %d disks now, %d when planned; plan again: %w", vm.ID, len(vm.Disks), len(s.Plan.Disks), errs.ErrFailedPrecondition)
	}
	if vm.PowerState != core.Halted && vm.PowerState != core.Running {
		return fmt.Errorf("source VM %s is %s now: %w", vm.ID, vm.PowerState, errs.ErrFailedPrecondition)
	}
	e.Logger.Info("migration: starting", "direction", s.Plan.Direction(), "vm", vm.ID, "disks", len(vm.Disks), "disk_bytes", s.Plan.DiskBytes)
	return nil
}

// snapshot takes the source snapshot the disks are read from.
func (m *Migrator) snapshot(ctx context.Context, e *job.Env, s *State) error {
	if s.SnapshotID != "" {
		return nil
	}
	src, _, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	opts := &provider.SnapshotOptions{Name: "ferry migration " + e.JobID, Tags: map[string]string{"ferry:job": e.JobID}}
	var snap provider.Snapshot
	found := false
	if f, ok := src.(provider.SnapshotFinder); ok {
		// A crash after the snapshot call and before the checkpoint: take
		// up that snapshot rather than take another.
		if snap, found, err = f.FindSnapshot(ctx, s.Plan.VM.ID, opts); err != nil {
			return fmt.Errorf("look for the snapshot of an earlier run: %w", err)
		}
		if found {
			e.Logger.Info("migration: taking up the source snapshot an earlier run took", "snapshot", snap.ID)
		}
	}
	if !found {
		if snap, err = src.(provider.Snapshotter).Snapshot(ctx, s.Plan.VM.ID, opts); err != nil {
			return err
		}
	}
	if len(snap.Disks) != len(s.Plan.Disks) {
		return fmt.Errorf("the snapshot %s has %d disks, the plan %d: %w", snap.ID, len(snap.Disks), len(s.Plan.Disks), errs.ErrFailedPrecondition)
	}
	s.SnapshotID = snap.ID
	s.Disks = make([]DiskState, len(snap.Disks))
	for i, d := range snap.Disks {
		s.Disks[i].Source = d.ID
	}
	return record(ctx, e, s, Resource{Site: s.Plan.Request.Source, Kind: "snapshot", ID: string(snap.ID)})
}

// createDisks makes the target VDIs (XenServer targets).
func (m *Migrator) createDisks(ctx context.Context, e *job.Env, s *State) error {
	x, err := m.xenTarget(ctx, s)
	if err != nil {
		return err
	}
	for i, d := range s.Plan.Disks {
		if s.Disks[i].Target != "" {
			continue
		}
		// Tagged with the job and the disk: a VDI made before a crash cut
		// the job off from the answer is found, not made twice.
		tags := map[string]string{"ferry:job": e.JobID, "ferry:disk": strconv.Itoa(i)}
		id, err := x.FindDisk(ctx, tags)
		if err == nil && id == "" {
			id, err = x.CreateDisk(ctx, s.Plan.Storage, fmt.Sprintf("%s %s", s.Plan.Name, cmp.Or(d.Name, fmt.Sprint("disk ", i))), d.TargetSize, tags)
		}
		if err != nil {
			return err
		}
		s.Disks[i].Target = string(id)
		if err := record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "vdi", ID: string(id)}); err != nil {
			return err
		}
	}
	return nil
}

// transfer streams every disk from the source snapshot into the target.
func (m *Migrator) transfer(ctx context.Context, e *job.Env, s *State) error {
	src, _, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	exp := src.(provider.DiskExporter)
	e.Progress.SetTotal(s.Plan.DiskBytes)
	for i := range s.Disks {
		d := &s.Disks[i]
		if d.Done {
			e.Progress.Add(s.Plan.Disks[i].Size)
			continue
		}
		e.Progress.Phase(fmt.Sprintf("transfer disk %d of %d", i+1, len(s.Disks)))
		img, err := exp.OpenDisk(ctx, d.Source, "")
		if err != nil {
			return fmt.Errorf("open source disk %s: %w", d.Source, err)
		}
		start := time.Now()
		if toAWS(s) {
			err = m.toEBS(ctx, e, s, i, img)
		} else {
			err = m.toVDI(ctx, e, s, i, img)
		}
		img.Close()
		d.Seconds += time.Since(start).Seconds()
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, s.Plan.Disks[i].Name, err)
		}
		d.Done = true
		if err := e.Checkpoint(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (m *Migrator) toEBS(ctx context.Context, e *job.Env, s *State, i int, img disk.Image) error {
	a, err := m.awsTarget(ctx, s)
	if err != nil {
		return err
	}
	if s.Plan.Method == MethodS3Import {
		return m.toS3Import(ctx, e, s, i, img, a)
	}
	d := &s.Disks[i]
	var resume *ebsdirect.Checkpoint
	if len(d.EBS) > 0 {
		resume = new(ebsdirect.Checkpoint)
		if err := resume.UnmarshalBinary(d.EBS); err != nil {
			return fmt.Errorf("the saved upload checkpoint: %w", err)
		}
	}
	sums := m.blockSums(e.JobID, i, true)
	var read atomic.Int64
	var mu sync.Mutex // serialises state changes from Save with this goroutine's
	res, err := a.UploadDisk(ctx, img, &aws.UploadOptions{
		Name: fmt.Sprintf("%s %s", s.Plan.Name, s.Plan.Disks[i].Name),
		Tags: map[string]string{"ferry:job": e.JobID}, Resume: resume, SaveEvery: cmp.Or(m.SaveEvery, 32),
		Sum: func(b int64, sum [32]byte) {
			sums.set(b, sum)
			read.Add(BlockSize)
		},
		Save: func(ctx context.Context, cp ebsdirect.Checkpoint) error {
			mu.Lock()
			defer mu.Unlock()
			raw, err := cp.MarshalBinary()
			if err != nil {
				return err
			}
			d.EBS = raw
			if cp.SnapshotID != "" && d.Target != cp.SnapshotID {
				d.Target = cp.SnapshotID
				return record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "ebs-snapshot", ID: cp.SnapshotID})
			}
			return e.Checkpoint(ctx)
		},
		Progress: progress.KeepTotal(e.Progress),
	})
	mu.Lock()
	defer mu.Unlock()
	d.BytesRead += read.Load()
	d.BytesSent += res.BytesSent
	d.BlocksSent, d.BlocksResumed = res.BlocksSent, res.Resumed
	if err != nil {
		return err
	}
	d.Target = res.SnapshotID
	sums.complete = res.Resumed == 0
	return nil
}

// toS3Import stages the disk in S3 and imports it with ImportSnapshot:
// the fallback where EBS direct is not allowed. A crash restarts the
// disk's import (the staged multipart upload is cleaned up by the
// provider on failure).
func (m *Migrator) toS3Import(ctx context.Context, e *job.Env, s *State, i int, img disk.Image, a *aws.Provider) error {
	d := &s.Disks[i]
	sums := m.blockSums(e.JobID, i, true)
	var read int64
	h := &hashingImage{Image: img, sums: sums, read: &read}
	snap, err := a.ImportSnapshotS3(ctx, h, &aws.ClassicOptions{StageOptions: aws.StageOptions{
		Key: fmt.Sprintf("ferry/%s/disk%d.vmdk", e.JobID, i), Progress: progress.KeepTotal(e.Progress),
	}})
	d.BytesRead += read
	if err != nil {
		return err
	}
	d.BytesSent += read
	d.Target = snap
	// The whole disk was read here, this run: its checksums need not be
	// taken again (unless a read missed whole blocks: sums.partial).
	sums.complete = true
	return record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "ebs-snapshot", ID: snap})
}

// toVDI writes the disk into its VDI a window at a time, checkpointing
// after each window the pool accepted.
func (m *Migrator) toVDI(ctx context.Context, e *job.Env, s *State, i int, img disk.Image) error {
	x, err := m.xenTarget(ctx, s)
	if err != nil {
		return err
	}
	d := &s.Disks[i]
	// At most 16 windows per disk (a pool may rewrite more than the
	// window per call), each whole VHD blocks.
	size := img.Size()
	win := cmp.Or(m.Window, max(256<<20, size/16))
	win = max(win/(2<<20)*(2<<20), 2<<20)
	fresh := d.Committed == 0
	sums := m.blockSums(e.JobID, i, fresh)
	e.Progress.Add(min(d.Committed, size))
	for d.Committed < size {
		var read int64
		h := &hashingImage{Image: img, sums: sums, read: &read}
		end := min(d.Committed+win, size)
		w := &window{Image: h, from: d.Committed, to: end}
		empty, err := w.empty(ctx)
		if err != nil {
			return fmt.Errorf("read the extents of the source: %w", err)
		}
		if !empty {
			if err := x.WriteDisk(ctx, core.DiskID(d.Target), w, progress.Nop()); err != nil {
				return err
			}
		}
		e.Progress.Add(end - d.Committed)
		d.BytesRead += read
		d.BytesSent += read
		d.Committed = end
		if err := e.Checkpoint(ctx); err != nil {
			return err
		}
	}
	sums.complete = fresh
	return nil
}

// verify reads every target disk back and compares block checksums.
func (m *Migrator) verify(ctx context.Context, e *job.Env, s *State) error {
	src, tgt, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	exp := src.(provider.DiskExporter)
	texp, ok := tgt.(provider.DiskExporter)
	if !ok {
		return fmt.Errorf("target site %s cannot read disks back: %w", s.Plan.Request.Target, errs.ErrUnimplemented)
	}
	s.Verify = nil
	for i, d := range s.Disks {
		e.Progress.Phase(fmt.Sprintf("verify disk %d of %d", i+1, len(s.Disks)))
		t, err := texp.OpenDisk(ctx, core.DiskID(d.Target), "")
		if err != nil {
			return fmt.Errorf("verify disk %d: open the target %s: %w", i, d.Target, err)
		}
		v, err := verify(ctx, s.Plan.Disks[i].Name, m.blockSums(e.JobID, i, false),
			func(ctx context.Context) (disk.Image, error) { return exp.OpenDisk(ctx, d.Source, "") }, t, cmp.Or(m.VerifyWorkers, 8))
		t.Close()
		if err != nil {
			return err
		}
		v.Target = d.Target
		s.Verify = append(s.Verify, v)
		e.Event("verified", v)
		if !v.OK {
			return fmt.Errorf("verify disk %d (%s): %d of %d blocks differ between source and target, first at block %d (offset %d): %w",
				i, v.Disk, v.Mismatches, v.Blocks, v.FirstMismatch, v.FirstMismatch*BlockSize, errs.ErrCorrupt)
		}
	}
	return nil
}

// register registers the AMI over the disks' snapshots (EC2 targets).
func (m *Migrator) register(ctx context.Context, e *job.Env, s *State) error {
	a, err := m.awsTarget(ctx, s)
	if err != nil {
		return err
	}
	if s.Image != "" {
		return a.WaitImage(ctx, s.Image)
	}
	spec := aws.RegisterSpec{
		Name:        fmt.Sprintf("%s-%s", amiName(s.Plan.Name), e.JobID),
		Description: fmt.Sprintf("migrated by ferry from %s/%s", s.Plan.Request.Source, s.Plan.VM.ID),
		Firmware:    s.Plan.VM.Firmware, Tags: map[string]string{"ferry:job": e.JobID},
	}
	order := rootFirst(s.Plan.Disks)
	for _, i := range order {
		spec.Snapshots = append(spec.Snapshots, s.Disks[i].Target)
		spec.SizesGiB = append(spec.SizesGiB, s.Plan.Disks[i].TargetSize>>30)
	}
	ami, err := a.RegisterImage(ctx, spec)
	if errs.Is(err, errs.AlreadyExists) {
		// The name holds the job's ID: this job registered it before a
		// crash cut it off from the answer. Take it up again.
		ami, err = m.findImage(ctx, a, spec.Name, e.JobID)
	}
	if err != nil {
		return err
	}
	s.Image = ami
	if err := record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "ami", ID: ami}); err != nil {
		return err
	}
	return a.WaitImage(ctx, ami)
}

// findImage returns the AMI named name that job registered.
func (m *Migrator) findImage(ctx context.Context, a *aws.Provider, name, jobID string) (string, error) {
	imgs, err := a.ListImages(ctx)
	if err != nil {
		return "", err
	}
	for _, im := range imgs {
		if im.Name == name && im.Tags["ferry:job"] == jobID {
			return im.ID, nil
		}
	}
	return "", fmt.Errorf("image %q exists but was not registered by job %s: %w", name, jobID, errs.ErrAlreadyExists)
}

// rootFirst orders the disks with the bootable one first.
func rootFirst(disks []PlanDisk) []int {
	order := make([]int, len(disks))
	for i := range order {
		order[i] = i
	}
	for i, d := range disks {
		if d.Bootable {
			order[0], order[i] = i, 0
			break
		}
	}
	return order
}

func amiName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("()[] ./-'@_", r):
			return r
		}
		return '-'
	}, s)
}

// createVM launches the instance (EC2) or creates the VM over the VDIs
// (XenServer).
func (m *Migrator) createVM(ctx context.Context, e *job.Env, s *State) error {
	if s.TargetVM != "" {
		return nil
	}
	tags := map[string]string{"ferry:job": e.JobID, "ferry:migrated-from": fmt.Sprintf("%s/%s", s.Plan.Request.Source, s.Plan.VM.ID)}
	if toAWS(s) {
		a, err := m.awsTarget(ctx, s)
		if err != nil {
			return err
		}
		it := ""
		if s.Plan.Instance != nil {
			it = s.Plan.Instance.Type
		}
		// The VM's own size rides along, so that a migration back gives
		// it its CPUs and memory, not the instance type's.
		tags[TagCPUs] = strconv.Itoa(s.Plan.VM.CPUs)
		tags[TagMemory] = strconv.FormatInt(s.Plan.VM.MemoryBytes, 10)
		// The job's ID as the client token: a launch run again after a
		// crash gets the instance the first one started.
		id, err := a.Launch(ctx, aws.LaunchSpec{AMI: s.Image, InstanceType: it, SubnetID: s.Plan.Subnet,
			SecurityGroupIDs: s.Plan.SecurityGroups, Name: s.Plan.Name, Tags: tags, ClientToken: "ferry-" + e.JobID})
		if err != nil {
			return err
		}
		s.TargetVM = core.VMID(id)
		if err := record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "instance", ID: id}); err != nil {
			return err
		}
		if !s.Plan.Start {
			return a.PowerVM(ctx, s.TargetVM, provider.Stop)
		}
		return nil
	}
	x, err := m.xenTarget(ctx, s)
	if err != nil {
		return err
	}
	spec := core.VMSpec{Name: s.Plan.Name, Description: fmt.Sprintf("migrated by ferry from %s/%s", s.Plan.Request.Source, s.Plan.VM.ID),
		CPUs: s.Plan.VM.CPUs, MemoryBytes: s.Plan.VM.MemoryBytes, Firmware: s.Plan.VM.Firmware}
	var disks []core.DiskID
	for i, d := range s.Plan.Disks {
		spec.Disks = append(spec.Disks, core.DiskSpec{Name: d.Name, Size: d.TargetSize, Bootable: d.Bootable || (i == 0 && !anyBootable(s.Plan.Disks)), Position: i})
		disks = append(disks, core.DiskID(s.Disks[i].Target))
	}
	nets := map[string]string{}
	for _, n := range s.Plan.Networks {
		src := fmt.Sprintf("nic%d", n.NIC)
		spec.NICs = append(spec.NICs, core.NICSpec{Name: src, Network: src})
		nets[src] = n.Target
	}
	// VM.create and the attachments after it are not idempotent: a VM a
	// crash cut off before the checkpoint goes first (its disks stay).
	if n, err := x.DiscardVMs(ctx, map[string]string{"ferry:job": e.JobID}); err != nil {
		return err
	} else if n > 0 {
		e.Logger.Warn("migration: removed the VM an earlier run of this step left", "vms", n)
	}
	id, err := x.CreateVM(ctx, spec, disks, nets, tags)
	if err != nil {
		return err
	}
	s.TargetVM = id
	return record(ctx, e, s, Resource{Site: s.Plan.Request.Target, Kind: "vm", ID: string(id)})
}

func anyBootable(ds []PlanDisk) bool {
	for _, d := range ds {
		if d.Bootable {
			return true
		}
	}
	return false
}

// start powers the new VM on (XenServer targets; an EC2 instance runs
// once launched).
func (m *Migrator) start(ctx context.Context, e *job.Env, s *State) error {
	_, tgt, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	return tgt.PowerVM(ctx, s.TargetVM, provider.Start)
}

// finish removes the source snapshot: the source is left as it was.
func (m *Migrator) finish(ctx context.Context, e *job.Env, s *State) error {
	src, _, err := m.providers(ctx, s)
	if err != nil {
		return err
	}
	if s.SnapshotID != "" {
		if err := src.(provider.Snapshotter).DeleteSnapshot(ctx, s.SnapshotID); err != nil && !errs.Is(err, errs.NotFound) {
			return fmt.Errorf("remove the source snapshot %s: %w", s.SnapshotID, err)
		}
		var kept []Resource
		for _, r := range s.Created {
			if !(r.Kind == "snapshot" && r.ID == string(s.SnapshotID)) {
				kept = append(kept, r)
			}
		}
		s.Created = kept
	}
	s.Finished = time.Now().UTC()
	m.forget(e.JobID)
	r := s.result()
	e.Logger.Info("migration: done", "target_vm", s.TargetVM, "bytes_sent", r.BytesSent, "disk_bytes", r.DiskBytes, "verified", r.Verified)
	return nil
}

// cleanup removes everything the migration created, newest first. It is
// the undo of the first step, so it runs last of all undos, whatever step
// the job stopped in.
func (m *Migrator) cleanup(ctx context.Context, e *job.Env, s *State) error {
	m.forget(e.JobID)
	var failed []error
	for i := len(s.Created) - 1; i >= 0; i-- {
		r := s.Created[i]
		if err := m.remove(ctx, r); err != nil && !errs.Is(err, errs.NotFound) {
			e.Logger.Warn("migration: cleanup failed", "site", r.Site, "kind", r.Kind, "id", r.ID, "err", err)
			failed = append(failed, fmt.Errorf("%s %s on %s: %w", r.Kind, r.ID, r.Site, err))
			continue
		}
		e.Logger.Info("migration: removed", "site", r.Site, "kind", r.Kind, "id", r.ID)
		s.Created = s.Created[:i]
	}
	return errors.Join(failed...)
}

func (m *Migrator) remove(ctx context.Context, r Resource) error {
	p, err := m.Sites.Provider(ctx, r.Site)
	if err != nil {
		return err
	}
	a, _ := p.(*aws.Provider)
	x, _ := p.(*xen.Provider)
	switch {
	case r.Kind == "snapshot":
		sn, ok := p.(provider.Snapshotter)
		if !ok {
			return fmt.Errorf("site %s cannot delete snapshots: %w", r.Site, errs.ErrUnimplemented)
		}
		return sn.DeleteSnapshot(ctx, core.SnapshotID(r.ID))
	case r.Kind == "ebs-snapshot" && a != nil:
		return a.DeleteSnapshot(ctx, core.SnapshotID(r.ID))
	case r.Kind == "ami" && a != nil:
		return a.DeregisterImage(ctx, r.ID)
	case r.Kind == "instance" && a != nil:
		if err := a.TerminateInstances(ctx, r.ID); err != nil {
			return err
		}
		return a.WaitInstance(ctx, r.ID, "terminated")
	case r.Kind == "vdi" && x != nil:
		return x.DestroyDisk(ctx, core.DiskID(r.ID))
	case r.Kind == "vm" && x != nil:
		return x.DeleteVM(ctx, core.VMID(r.ID))
	}
	return fmt.Errorf("cannot remove a %s from site %s (%s): %w", r.Kind, r.Site, p.Info().Kind, errs.ErrUnimplemented)
}
