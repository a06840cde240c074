package awslab

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/ova"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
)

// importFormats are the disk formats VM Import takes, by the names the
// API uses, with ferry's format names.
var importFormats = map[string]string{"VMDK": "vmdk", "VHD": "vhd", "VHDX": "vhdx", "RAW": "raw", "OVA": "ova"}

// clientError is an import or export failure reported in the task's
// StatusMessage, as VM Import/Export words them.
type clientError struct{ msg string }

func (e *clientError) Error() string { return e.msg }

func diskValidation(format string, a ...any) error {
	return &clientError{"ClientError: Disk validation failed [" + fmt.Sprintf(format, a...) + "]"}
}

// importDiskSpec reads one DiskContainer.
func (s *Server) importDiskSpec(dc params, image bool) (importDisk, error) {
	d := importDisk{
		Format: strings.ToUpper(dc.str("Format")), Description: dc.str("Description"), Device: dc.str("DeviceName"),
		Bucket: dc.str("UserBucket.S3Bucket"), Key: dc.str("UserBucket.S3Key"), URL: dc.str("Url"),
		Status: "active", Message: "pending",
	}
	if image {
		d.SourceSnapshot = dc.str("SnapshotId")
	}
	if d.Format != "" {
		allowed := []string{"VMDK", "VHD", "RAW"}
		if image {
			allowed = append(allowed, "VHDX", "OVA")
		}
		if !containsString(allowed, d.Format) {
			return d, ec2Err("InvalidParameter", "Unsupported disk image format %s: use one of %s.", d.Format, strings.Join(allowed, ", "))
		}
	}
	sources := 0
	for _, v := range []string{d.Bucket + d.Key, d.URL, d.SourceSnapshot} {
		if v != "" {
			sources++
		}
	}
	if sources != 1 {
		return d, ec2Err("InvalidParameter", "Give exactly one of DiskContainer.UserBucket, DiskContainer.Url and DiskContainer.SnapshotId.")
	}
	if d.SourceSnapshot != "" {
		if err := checkID("snap", d.SourceSnapshot); err != nil {
			return d, err
		}
		sn := s.st.Snapshots[d.SourceSnapshot]
		if sn == nil {
			return d, notFound("snap", d.SourceSnapshot)
		}
		if sn.Status != "completed" {
			return d, ec2Err("IncorrectState", "Snapshot %s is %s.", sn.ID, sn.Status)
		}
		return d, nil
	}
	if d.URL != "" {
		b, k, err := parseObjectURL(d.URL)
		if err != nil {
			return d, ec2Err("InvalidParameter", "DiskContainer.Url %q: %v", d.URL, err)
		}
		d.Bucket, d.Key = b, k
	}
	if d.Bucket == "" || d.Key == "" {
		return d, ec2Err("InvalidParameter", "DiskContainer.UserBucket needs S3Bucket and S3Key.")
	}
	if d.Format == "" {
		return d, ec2Err("InvalidParameter", "DiskContainer.Format is required.")
	}
	return d, nil
}

// parseObjectURL reads s3://bucket/key, or an http(s) URL in path style
// (/bucket/key, presigned or not) addressed to this lab.
func parseObjectURL(u string) (string, string, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", "", err
	}
	var b, k string
	switch pu.Scheme {
	case "s3":
		b, k = pu.Host, strings.TrimPrefix(pu.Path, "/")
	case "http", "https":
		b, k, _ = strings.Cut(strings.TrimPrefix(pu.Path, "/"), "/")
	default:
		return "", "", errors.New("want s3://bucket/key or a path-style URL")
	}
	if b == "" || k == "" {
		return "", "", errors.New("no bucket or key")
	}
	return b, k, nil
}

func (s *Server) importSnapshot(_ context.Context, p params) ([]*node, error) {
	d, err := s.importDiskSpec(p.sub("DiskContainer"), false)
	if err != nil {
		return nil, err
	}
	tags, err := p.tagSpecs("import-snapshot-task")
	if err != nil {
		return nil, err
	}
	if t := s.importByTokenLocked(p.str("ClientToken"), "snapshot"); t != nil {
		return s.importSnapshotNode(t, "x").kids, nil
	}
	now := s.now()
	t := &importTask{ID: newID("import-snap"), Kind: "snapshot", Description: p.str("Description"), Status: "active",
		Message: "pending", Until: now.Add(s.delay), Disks: []importDisk{d}, Token: p.str("ClientToken"), Created: now,
		Role: p.str("RoleName")}
	s.st.Imports[t.ID] = t
	if tg := tags["import-snapshot-task"]; len(tg) > 0 {
		s.st.Tags[t.ID] = cloneTags(tg)
	}
	s.dirty = true
	s.startImportLocked(t)
	s.log.Info("snapshot import started", "task", t.ID, "bucket", d.Bucket, "key", d.Key, "format", d.Format)
	return s.importSnapshotNode(t, "x").kids, nil
}

func (s *Server) importImage(_ context.Context, p params) ([]*node, error) {
	dcs := p.structs("DiskContainer")
	if len(dcs) == 0 {
		return nil, missing("DiskContainer")
	}
	var disks []importDisk
	for _, dc := range dcs {
		d, err := s.importDiskSpec(dc, true)
		if err != nil {
			return nil, err
		}
		if d.Format == "OVA" && len(dcs) > 1 {
			return nil, ec2Err("InvalidParameter", "An OVA is imported alone: give one DiskContainer.")
		}
		disks = append(disks, d)
	}
	arch := p.str("Architecture")
	if arch == "" {
		arch = "x86_64"
	}
	if !containsString([]string{"i386", "x86_64", "arm64"}, arch) {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter architecture is invalid.", arch)
	}
	bootMode := p.str("BootMode")
	if bootMode != "" && !containsString([]string{"legacy-bios", "uefi", "uefi-preferred"}, bootMode) {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter bootMode is invalid.", bootMode)
	}
	platform := p.str("Platform")
	if platform != "" && platform != "Windows" && platform != "Linux" {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter platform is invalid.", platform)
	}
	license := p.str("LicenseType")
	if license == "" {
		license = "BYOL"
	}
	tags, err := p.tagSpecs("import-image-task")
	if err != nil {
		return nil, err
	}
	if t := s.importByTokenLocked(p.str("ClientToken"), "image"); t != nil {
		return s.importImageNode(t, "x").kids, nil
	}
	now := s.now()
	t := &importTask{ID: newID("import-ami"), Kind: "image", Description: p.str("Description"), Status: "active",
		Message: "pending", Until: now.Add(s.delay), Disks: disks, Arch: arch, Platform: platform, License: license,
		BootMode: bootMode, Token: p.str("ClientToken"), Created: now, Role: p.str("RoleName"), Hypervisor: p.str("Hypervisor")}
	s.st.Imports[t.ID] = t
	if tg := tags["import-image-task"]; len(tg) > 0 {
		s.st.Tags[t.ID] = cloneTags(tg)
	}
	s.dirty = true
	s.startImportLocked(t)
	s.log.Info("image import started", "task", t.ID, "disks", len(disks))
	return s.importImageNode(t, "x").kids, nil
}

func (s *Server) importByTokenLocked(tok, kind string) *importTask {
	if tok == "" {
		return nil
	}
	for _, t := range sortedValues(s.st.Imports) {
		if t.Token == tok && t.Kind == kind {
			return t
		}
	}
	return nil
}

// startImportLocked converts a task's disks into snapshots in the
// background (from the start again after a restart).
func (s *Server) startImportLocked(t *importTask) {
	for i := range t.Disks {
		d := &t.Disks[i]
		if d.SnapshotID != "" && d.SnapshotID != d.SourceSnapshot {
			if sn := s.st.Snapshots[d.SnapshotID]; sn != nil {
				s.deleteSnapshotLocked(sn)
			}
			d.SnapshotID = ""
		}
	}
	id := t.ID
	s.goJobLocked(id, func(ctx context.Context) error { return s.runImport(ctx, id) }, func(err error) {
		t := s.st.Imports[id]
		if t == nil || t.Status != "active" {
			return // cancelled
		}
		if err != nil {
			var ce *clientError
			msg := "ServerError: " + err.Error()
			if errors.As(err, &ce) {
				msg = ce.msg
			}
			s.log.Info("import failed", "task", id, "err", msg)
			t.Failed = msg
			s.dropImportLocked(t)
		} else {
			s.log.Info("import converted", "task", id)
		}
		t.Done = true
		t.Until = later(t.Until, s.now())
	})
}

// dropImportLocked removes what a failed or cancelled import created.
func (s *Server) dropImportLocked(t *importTask) {
	for i := range t.Disks {
		d := &t.Disks[i]
		if d.SnapshotID != "" && d.SnapshotID != d.SourceSnapshot {
			if sn := s.st.Snapshots[d.SnapshotID]; sn != nil {
				s.deleteSnapshotLocked(sn)
			}
			d.SnapshotID = ""
		}
	}
	if im := s.st.Images[t.ImageID]; im != nil {
		delete(s.st.Images, im.ID)
		t.ImageID = ""
	}
}

// setImport updates a task under the lock.
func (s *Server) setImport(id string, fn func(t *importTask)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.st.Imports[id]
	if t == nil || t.Status != "active" {
		return false
	}
	fn(t)
	s.dirty = true
	return true
}

// openedDisk is one disk of an import source, ready to read.
type openedDisk struct {
	img    disk.Image
	format string // upper case, as reported
	size   int64  // bytes of the source file or member
}

// openImportSource opens the object behind a disk spec: a disk image, or
// the disks of an OVA. The caller closes what close returns.
func (s *Server) openImportSource(ctx context.Context, d importDisk) ([]openedDisk, func(), error) {
	s.mu.Lock()
	path, size, err := s.objectFileLocked(d.Bucket, d.Key)
	s.mu.Unlock()
	if err != nil {
		return nil, nil, diskValidation("Invalid S3 source location")
	}
	f, err := disk.OpenFile(path)
	if err != nil {
		return nil, nil, diskValidation("Invalid S3 source location")
	}
	if d.Format == "OVA" {
		af := ova.Format()
		if !af.Probe(f) {
			f.Close()
			return nil, nil, diskValidation("Unsupported OVA format")
		}
		ar, err := af.Open(ctx, f, &archive.OpenOptions{Disks: s.disks})
		if err != nil {
			f.Close()
			return nil, nil, diskValidation("Invalid OVA: %v", err)
		}
		if err := ar.Verify(ctx); err != nil {
			ar.Close()
			return nil, nil, diskValidation("OVA manifest check failed: %v", err)
		}
		var out []openedDisk
		for i, di := range ar.Info().Disks {
			img, err := ar.OpenDisk(ctx, i)
			if err != nil {
				ar.Close()
				return nil, nil, diskValidation("Invalid disk %s in the OVA: %v", di.Name, err)
			}
			out = append(out, openedDisk{img: img, format: strings.ToUpper(di.Format), size: di.StoredSize})
		}
		if len(out) == 0 {
			ar.Close()
			return nil, nil, diskValidation("The OVA holds no disk")
		}
		return out, func() { ar.Close() }, nil
	}
	want := importFormats[d.Format]
	var ft *disk.Format
	if want == "raw" {
		ft = raw.Format()
	} else {
		ft, err = s.disks.Probe(f)
		if err != nil || ft.Name != want {
			f.Close()
			return nil, nil, diskValidation("Unsupported %s File Format", d.Format)
		}
	}
	img, err := ft.Open(ctx, f, &disk.OpenOptions{Logger: s.log})
	if err != nil {
		f.Close()
		if errs.Is(err, errs.FailedPrecondition) || strings.Contains(err.Error(), "backing") {
			return nil, nil, diskValidation("Unsupported %s File Format: a differencing disk needs its parent", d.Format)
		}
		return nil, nil, diskValidation("Unsupported %s File Format: %v", d.Format, err)
	}
	if want == "vmdk" {
		if ct, _ := img.Info().Specific["create-type"].(string); ct != "streamOptimized" {
			img.Close()
			return nil, nil, diskValidation("Unsupported VMDK File Format: %s; VM Import takes stream-optimized VMDK", ct)
		}
	}
	return []openedDisk{{img: img, format: d.Format, size: size}}, func() { img.Close() }, nil
}

// runImport converts every disk of an import task into a snapshot and,
// for an image import, registers the AMI.
func (s *Server) runImport(ctx context.Context, id string) error {
	s.mu.Lock()
	t := s.st.Imports[id]
	if t == nil {
		s.mu.Unlock()
		return nil
	}
	specs := append([]importDisk(nil), t.Disks...)
	kind := t.Kind
	s.mu.Unlock()
	// expand an OVA into its disks
	type work struct {
		spec importDisk
		od   *openedDisk
	}
	var todo []work
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for _, d := range specs {
		if d.SourceSnapshot != "" {
			todo = append(todo, work{spec: d})
			continue
		}
		s.setImport(id, func(t *importTask) { t.Message = "validating" })
		ods, closeFn, err := s.openImportSource(ctx, d)
		if err != nil {
			return err
		}
		closers = append(closers, closeFn)
		for i := range ods {
			nd := d
			nd.Format, nd.Size = ods[i].format, ods[i].size
			if nd.Format == "" {
				nd.Format = d.Format
			}
			todo = append(todo, work{spec: nd, od: &ods[i]})
		}
	}
	if !s.setImport(id, func(t *importTask) {
		t.Disks = nil
		for _, w := range todo {
			t.Disks = append(t.Disks, w.spec)
		}
		if kind == "image" {
			t.Message = "validated"
		}
	}) {
		return context.Canceled
	}
	var total int64
	for _, w := range todo {
		if w.od != nil {
			total += w.od.img.Size()
		}
	}
	var before int64
	for i, w := range todo {
		if w.od == nil {
			s.setImport(id, func(t *importTask) { t.Disks[i].SnapshotID, t.Disks[i].Progress = w.spec.SourceSnapshot, 100 })
			continue
		}
		img := w.od.img
		s.setImport(id, func(t *importTask) { t.Message, t.Disks[i].Message = "converting", "converting" })
		base := before
		s.blocks.gc.RLock()
		x, stored, err := storeImage(ctx, s.blocks, img, func(done, n int64) {
			s.setImport(id, func(t *importTask) {
				t.Disks[i].Progress = int(done * 100 / max(n, 1))
				t.Progress = int((base + done) * 90 / max(total, 1))
			})
		})
		if err != nil {
			s.blocks.gc.RUnlock()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return diskValidation("Unsupported %s File Format: %v", w.spec.Format, err)
		}
		size := max((img.Size()+gib-1)/gib, 1)
		s.mu.Lock()
		t := s.st.Imports[id]
		if t == nil || t.Status != "active" {
			s.mu.Unlock()
			s.blocks.gc.RUnlock()
			return context.Canceled
		}
		sn := s.newSnapshotLocked("import", noVolume, size, "Created by AWS-VMImport service for "+id, "")
		sn.Bytes = stored
		t.Disks[i].SnapshotID = sn.ID
		s.mu.Unlock()
		err = writeIndex(s.indexPath(sn.ID), x)
		s.blocks.gc.RUnlock()
		if err != nil {
			return err
		}
		s.mu.Lock()
		if s.st.Snapshots[sn.ID] == sn {
			sn.Ready = true
			sn.Progress = 100
			s.dirty = true
		} else {
			os.Remove(s.indexPath(sn.ID)) // cancelled meanwhile
		}
		s.mu.Unlock()
		before += img.Size()
	}
	if kind != "image" {
		s.setImport(id, func(t *importTask) { t.Progress = 95 })
		return nil
	}
	var err error
	ok := s.setImport(id, func(t *importTask) {
		t.Message, t.Progress = "preparing ami", 95
		spec := imageSpec{Name: t.ID, Description: t.Description, Arch: t.Arch, Virt: "hvm", BootMode: t.BootMode,
			RootDevice: "/dev/sda1", EnaSupport: true}
		if t.Platform == "Windows" {
			spec.Platform = "windows"
		}
		used := map[string]bool{}
		for i, d := range t.Disks {
			dev := d.Device
			switch {
			case dev == "" && i == 0:
				dev = "/dev/sda1"
			case dev == "":
				dev = nextDevice(used)
			}
			if i == 0 {
				spec.RootDevice = dev
			}
			used[dev] = true
			sn := s.st.Snapshots[d.SnapshotID]
			if sn == nil {
				err = fmt.Errorf("snapshot %s of disk %d is gone", d.SnapshotID, i)
				return
			}
			spec.Mappings = append(spec.Mappings, blockMapping{Device: dev, SnapshotID: sn.ID, VolumeSize: sn.Size, VolumeType: "gp2", DeleteOnTermination: true})
		}
		var im *image
		if im, err = s.registerImageLocked(spec); err == nil {
			t.ImageID = im.ID
		}
	})
	if !ok {
		return context.Canceled
	}
	return err
}

// importSettledLocked reports whether what an import produced is ready:
// its snapshots completed and, for an image, the AMI available.
func (s *Server) importSettledLocked(t *importTask) bool {
	for _, d := range t.Disks {
		if sn := s.st.Snapshots[d.SnapshotID]; sn == nil || sn.Status != "completed" {
			return false
		}
	}
	if t.Kind == "image" {
		im := s.st.Images[t.ImageID]
		return im != nil && im.State == "available"
	}
	return true
}

func diskSize(d importDisk) string {
	if d.Size == 0 {
		return ""
	}
	return strconv.FormatFloat(float64(d.Size), 'f', 1, 64)
}

func userBucketNode(d importDisk) *node {
	if d.Bucket == "" {
		return nil
	}
	return el("userBucket", el("s3Bucket", d.Bucket), el("s3Key", d.Key))
}

func progressNode(status string, progress int) *node {
	if status != "active" {
		return nil
	}
	return el("progress", strconv.Itoa(progress))
}

func (s *Server) importSnapshotNode(t *importTask, name string) *node {
	d := t.Disks[0]
	detail := el("snapshotTaskDetail",
		opt("description", d.Description),
		opt("diskImageSize", diskSize(d)),
		el("encrypted", false),
		opt("format", d.Format),
		progressNode(t.Status, t.Disks[0].Progress),
		opt("snapshotId", d.SnapshotID),
		el("status", t.Status),
		opt("statusMessage", t.Message),
		opt("url", d.URL),
		userBucketNode(d),
	)
	return el(name, el("importTaskId", t.ID), opt("description", t.Description), detail, tagSet(s.st.Tags[t.ID]))
}

func (s *Server) importImageNode(t *importTask, name string) *node {
	var snaps []*node
	for _, d := range t.Disks {
		snaps = append(snaps, el("item",
			opt("description", d.Description),
			opt("deviceName", d.Device),
			opt("diskImageSize", diskSize(d)),
			opt("format", d.Format),
			progressNode(d.Status, d.Progress),
			opt("snapshotId", d.SnapshotID),
			el("status", d.Status),
			opt("statusMessage", d.Message),
			opt("url", d.URL),
			userBucketNode(d),
		))
	}
	return el(name,
		el("importTaskId", t.ID),
		el("architecture", t.Arch),
		opt("description", t.Description),
		el("encrypted", false),
		opt("hypervisor", t.Hypervisor),
		opt("imageId", t.ImageID),
		el("licenseType", t.License),
		opt("platform", t.Platform),
		progressNode(t.Status, t.Progress),
		set("snapshotDetailSet", snaps),
		el("status", t.Status),
		opt("statusMessage", t.Message),
		opt("bootMode", t.BootMode),
		tagSet(s.st.Tags[t.ID]),
	)
}

// describeImports lists import tasks of one kind by ImportTaskId.N and
// Filters.
func (s *Server) describeImports(p params, kind string) ([]*importTask, string, error) {
	fs, err := p.filters("Filters")
	if err != nil {
		return nil, "", err
	}
	ids := p.list("ImportTaskId")
	var list []*importTask
	if len(ids) > 0 {
		for _, id := range ids {
			t := s.st.Imports[id]
			if t == nil || t.Kind != kind {
				return nil, "", ec2Err("InvalidConversionTaskId.Malformed", "The import task ID '%s' does not exist", id)
			}
			list = append(list, t)
		}
	} else {
		list = sortedValues(s.st.Imports)
	}
	var hits []*importTask
	for _, t := range list {
		if t.Kind != kind {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[t.ID], func(name string) ([]string, bool) {
			switch name {
			case "task-state":
				return []string{t.Status}, true
			case "import-task-id":
				return []string{t.ID}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, "", err
		}
		if ok {
			hits = append(hits, t)
		}
	}
	from, to, next, err := page(p, len(hits), 1, 1000)
	if err != nil {
		return nil, "", err
	}
	return hits[from:to], next, nil
}

func (s *Server) describeImportSnapshotTasks(_ context.Context, p params) ([]*node, error) {
	ts, next, err := s.describeImports(p, "snapshot")
	if err != nil {
		return nil, err
	}
	var items []*node
	for _, t := range ts {
		items = append(items, s.importSnapshotNode(t, "item"))
	}
	return []*node{set("importSnapshotTaskSet", items), opt("nextToken", next)}, nil
}

func (s *Server) describeImportImageTasks(_ context.Context, p params) ([]*node, error) {
	ts, next, err := s.describeImports(p, "image")
	if err != nil {
		return nil, err
	}
	var items []*node
	for _, t := range ts {
		items = append(items, s.importImageNode(t, "item"))
	}
	return []*node{set("importImageTaskSet", items), opt("nextToken", next)}, nil
}

func (s *Server) cancelImportTask(_ context.Context, p params) ([]*node, error) {
	id := p.str("ImportTaskId")
	if id == "" {
		return nil, missing("ImportTaskId")
	}
	t := s.st.Imports[id]
	if t == nil {
		return nil, ec2Err("InvalidConversionTaskId", "The import task ID '%s' does not exist", id)
	}
	if t.Status != "active" {
		return nil, ec2Err("IncorrectState", "The import task %s cannot be cancelled: it is %s.", id, t.Status)
	}
	s.cancelJobLocked(id)
	msg := p.str("CancelReason")
	if msg == "" {
		msg = "User Cancelled"
	}
	prev := t.Status
	t.Status, t.Message, t.Until, t.Done = "deleting", msg, s.now().Add(s.delay), true
	for i := range t.Disks {
		t.Disks[i].Status, t.Disks[i].Message = "deleting", msg
	}
	s.dropImportLocked(t)
	s.dirty = true
	s.log.Info("import cancelled", "task", id)
	return []*node{el("importTaskId", id), el("previousState", prev), el("state", t.Status)}, nil
}
