package awslab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/ova"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

// exportFormats are the disk formats VM Export writes, with ferry's
// format name, the options it writes them with and the file extension.
var exportFormats = map[string]struct {
	name string
	opts map[string]string
	ext  string
}{
	"VMDK": {"vmdk", map[string]string{"subformat": "streamOptimized"}, "vmdk"},
	"VHD":  {"vhd", map[string]string{"subformat": "dynamic"}, "vhd"},
	"RAW":  {"raw", nil, "raw"},
}

// exportSource is one disk to export: a snapshot's blocks or a volume's
// file.
type exportSource struct {
	snapshot string
	volume   string
	size     int64 // bytes
	name     string
}

func (s *Server) exportImage(_ context.Context, p params) ([]*node, error) {
	im, err := s.imageLocked(p.str("ImageId"))
	if err != nil {
		return nil, err
	}
	format := strings.ToUpper(p.str("DiskImageFormat"))
	if format == "" {
		return nil, missing("DiskImageFormat")
	}
	if _, ok := exportFormats[format]; !ok {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter DiskImageFormat is invalid: use VMDK, RAW or VHD.", p.str("DiskImageFormat"))
	}
	bucketName, prefix := p.str("S3ExportLocation.S3Bucket"), p.str("S3ExportLocation.S3Prefix")
	if bucketName == "" {
		return nil, missing("S3ExportLocation.S3Bucket")
	}
	if s.buckets[bucketName] == nil {
		return nil, ec2Err("InvalidParameter", "The S3 bucket %s does not exist or the lab cannot write to it.", bucketName)
	}
	if im.State != "available" {
		return nil, ec2Err("IncorrectState", "Image %s is %s, not available.", im.ID, im.State)
	}
	tags, err := p.tagSpecs("export-image-task")
	if err != nil {
		return nil, err
	}
	if tok := p.str("ClientToken"); tok != "" {
		for _, t := range sortedValues(s.st.Exports) {
			if t.Token == tok && t.Kind == "image" {
				return s.exportImageNode(t, "x", true).kids, nil
			}
		}
	}
	role := p.str("RoleName")
	if role == "" {
		role = "vmimport"
	}
	now := s.now()
	t := &exportTask{ID: newID("export-ami"), Kind: "image", ImageID: im.ID, Format: format, Bucket: bucketName, Prefix: prefix,
		Description: p.str("Description"), Role: role, Status: "active", Message: "validating", Until: now.Add(s.delay),
		Token: p.str("ClientToken"), Created: now}
	t.Key = prefix + t.ID + "." + exportFormats[format].ext
	s.st.Exports[t.ID] = t
	if tg := tags["export-image-task"]; len(tg) > 0 {
		s.st.Tags[t.ID] = cloneTags(tg)
	}
	s.dirty = true
	s.startExportLocked(t)
	s.log.Info("image export started", "task", t.ID, "image", im.ID, "format", format, "bucket", bucketName, "key", t.Key)
	return s.exportImageNode(t, "x", true).kids, nil
}

func (s *Server) createInstanceExportTask(_ context.Context, p params) ([]*node, error) {
	if p.str("InstanceId") == "" {
		return nil, missing("InstanceId")
	}
	in, err := s.instanceLocked(p.str("InstanceId"))
	if err != nil {
		return nil, err
	}
	target := p.str("TargetEnvironment")
	if target == "" {
		return nil, missing("TargetEnvironment")
	}
	if !containsString([]string{"citrix", "vmware", "microsoft"}, target) {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter TargetEnvironment is invalid: use citrix, vmware or microsoft.", target)
	}
	format := strings.ToUpper(p.str("ExportToS3.DiskImageFormat"))
	if format == "" {
		format = "VMDK"
	}
	if _, ok := exportFormats[format]; !ok {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter DiskImageFormat is invalid: use VMDK, RAW or VHD.", format)
	}
	container := strings.ToLower(p.str("ExportToS3.ContainerFormat"))
	if container != "" && container != "ova" {
		return nil, ec2Err("InvalidParameterValue", "Value (%s) for parameter ContainerFormat is invalid: use ova.", container)
	}
	if container == "ova" && format != "VMDK" {
		return nil, ec2Err("InvalidParameter", "An OVA holds VMDK disks: use DiskImageFormat VMDK with ContainerFormat ova.")
	}
	bucketName := p.str("ExportToS3.S3Bucket")
	if bucketName == "" {
		return nil, missing("ExportToS3.S3Bucket")
	}
	if s.buckets[bucketName] == nil {
		return nil, ec2Err("InvalidParameter", "The S3 bucket %s does not exist or the lab cannot write to it.", bucketName)
	}
	if in.State == "terminated" || in.State == "shutting-down" || in.State == "pending" {
		return nil, ec2Err("IncorrectInstanceState", "The instance '%s' is %s; it can be exported when running or stopped.", in.ID, in.State)
	}
	if !s.volumesReadyLocked(in) {
		return nil, ec2Err("IncorrectState", "The volumes of instance %s are still being created.", in.ID)
	}
	tags, err := p.tagSpecs("export-instance-task")
	if err != nil {
		return nil, err
	}
	now := s.now()
	t := &exportTask{ID: newID("export-i"), Kind: "instance", InstanceID: in.ID, Target: target, Format: format, Container: container,
		Bucket: bucketName, Prefix: p.str("ExportToS3.S3Prefix"), Description: p.str("Description"), Status: "active",
		Message: "Preparing the instance for export", Until: now.Add(s.delay), Created: now}
	ext := exportFormats[format].ext
	if container != "" {
		ext = container
	}
	t.Key = t.Prefix + t.ID + "." + ext
	s.st.Exports[t.ID] = t
	if tg := tags["export-instance-task"]; len(tg) > 0 {
		s.st.Tags[t.ID] = cloneTags(tg)
	}
	s.dirty = true
	s.startExportLocked(t)
	s.log.Info("instance export started", "task", t.ID, "instance", in.ID, "format", format, "container", container)
	return []*node{s.exportTaskNode(t, "exportTask")}, nil
}

// startExportLocked writes a task's disk image into its bucket in the
// background (from the start again after a restart).
func (s *Server) startExportLocked(t *exportTask) {
	id := t.ID
	s.goJobLocked(id, func(ctx context.Context) error { return s.runExport(ctx, id) }, func(err error) {
		t := s.st.Exports[id]
		if t == nil || t.Status != "active" {
			if t != nil && t.Status == "cancelling" {
				t.Done = true
			}
			return
		}
		if err != nil {
			var ce *clientError
			msg := "ServerError: " + err.Error()
			if errors.As(err, &ce) {
				msg = ce.msg
			}
			s.log.Info("export failed", "task", id, "err", msg)
			t.Failed = msg
		} else {
			s.log.Info("export written", "task", id, "bucket", t.Bucket, "key", t.Key)
		}
		t.Done = true
		t.Until = later(t.Until, s.now())
	})
}

func (s *Server) setExport(id string, fn func(t *exportTask)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.st.Exports[id]
	if t == nil || t.Status != "active" {
		return false
	}
	fn(t)
	s.dirty = true
	return true
}

// exportSourcesLocked finds what a task exports: an image's root
// snapshot, or an instance's volumes (the root only unless in an OVA).
func (s *Server) exportSourcesLocked(t *exportTask) ([]exportSource, *core.VMSpec, error) {
	if t.Kind == "image" {
		im := s.st.Images[t.ImageID]
		if im == nil {
			return nil, nil, &clientError{"ClientError: the image " + t.ImageID + " was deregistered"}
		}
		for _, m := range im.Mappings {
			if m.Device == im.RootDevice {
				sn := s.st.Snapshots[m.SnapshotID]
				if sn == nil || sn.Status != "completed" {
					return nil, nil, &clientError{"ClientError: the root snapshot of " + im.ID + " is not available"}
				}
				return []exportSource{{snapshot: sn.ID, size: max(m.VolumeSize, sn.Size) * gib, name: im.Name}}, nil, nil
			}
		}
		return nil, nil, &clientError{"ClientError: image " + im.ID + " has no root volume"}
	}
	in := s.st.Instances[t.InstanceID]
	if in == nil {
		return nil, nil, &clientError{"ClientError: the instance " + t.InstanceID + " is gone"}
	}
	it := instanceTypes[in.Type]
	vm := &core.VMSpec{Name: in.ID, Description: "exported from " + in.ID, CPUs: it.CPUs, MemoryBytes: it.MiB << 20,
		Firmware: core.BIOS, OSType: "linux"}
	if in.BootMode == "uefi" {
		vm.Firmware = core.UEFI
	}
	var out []exportSource
	for i, v := range s.instanceVolumesLocked(in.ID) {
		root := v.Attach.Device == in.RootDevice
		if t.Container == "" && !root {
			continue
		}
		src := exportSource{volume: v.ID, size: v.Size * gib, name: v.ID}
		if root {
			out = append([]exportSource{src}, out...)
		} else {
			out = append(out, src)
		}
		vm.Disks = append(vm.Disks, core.DiskSpec{Name: v.ID, Size: v.Size * gib, Position: i})
	}
	if len(out) == 0 {
		return nil, nil, &clientError{"ClientError: instance " + in.ID + " has no root volume"}
	}
	// the OVA lists the root disk first and bootable
	for i := range vm.Disks {
		vm.Disks[i].Bootable = vm.Disks[i].Name == out[0].volume
		if vm.Disks[i].Bootable && i > 0 {
			vm.Disks[0], vm.Disks[i] = vm.Disks[i], vm.Disks[0]
		}
	}
	for i := range vm.Disks {
		vm.Disks[i].Position = i
	}
	return out, vm, nil
}

// openExportSource opens a snapshot or volume as an image.
func (s *Server) openExportSource(ctx context.Context, src exportSource) (disk.Image, error) {
	if src.snapshot != "" {
		x, err := s.snapIndex(src.snapshot)
		if err != nil {
			return nil, err
		}
		return newSnapImage(s.blocks, x, src.size), nil
	}
	f, err := disk.OpenFile(s.volumePath(src.volume))
	if err != nil {
		return nil, err
	}
	img, err := raw.Format().Open(ctx, f, nil)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

func (s *Server) runExport(ctx context.Context, id string) error {
	s.mu.Lock()
	t := s.st.Exports[id]
	if t == nil {
		s.mu.Unlock()
		return nil
	}
	srcs, vm, err := s.exportSourcesLocked(t)
	format, container, bucketName, key := t.Format, t.Container, t.Bucket, t.Key
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.setExport(id, func(t *exportTask) { t.Message = "exporting" })
	var total int64
	var done atomic.Int64
	for _, src := range srcs {
		total += src.size
	}
	last := atomic.Int64{}
	progress := func(n int64) {
		pct := done.Add(n) * 95 / max(total, 1)
		if last.Swap(pct) != pct {
			s.setExport(id, func(t *exportTask) { t.Progress = int(pct) })
		}
	}
	ef := exportFormats[format]
	out := filepath.Join(s.dir, "tmp", id+"."+ef.ext)
	if container == "ova" {
		out = filepath.Join(s.dir, "tmp", id+".ova")
	}
	defer os.Remove(out)
	if container == "ova" {
		err = s.writeOVA(ctx, out, *vm, srcs, progress)
	} else {
		err = s.writeDisk(ctx, out, ef.name, ef.opts, srcs[0], progress)
	}
	if err != nil {
		return err
	}
	if !s.setExport(id, func(t *exportTask) { t.Message, t.Progress = "uploading", 95 }) {
		return context.Canceled
	}
	if err := s.putObjectFile(bucketName, key, out, "application/octet-stream"); err != nil {
		return &clientError{fmt.Sprintf("ClientError: cannot write s3://%s/%s: %v", bucketName, key, err)}
	}
	return nil
}

// countingReporter feeds Convert's progress to a callback.
type countingReporter struct{ add func(int64) }

func (c countingReporter) SetTotal(int64) {}
func (c countingReporter) Add(n int64)    { c.add(n) }
func (c countingReporter) Phase(string)   {}

// exportWorkers bounds the parallelism of an export's conversion.
func (s *Server) exportWorkers() int { return 2 }

// writeDisk converts one source into a disk image file.
func (s *Server) writeDisk(ctx context.Context, path, format string, opts map[string]string, src exportSource, progress func(int64)) error {
	img, err := s.openExportSource(ctx, src)
	if err != nil {
		return err
	}
	defer img.Close()
	w, err := s.disks.Create(ctx, path, format, img.Size(), &disk.CreateOptions{Options: opts, Source: img, Logger: s.log})
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := disk.Convert(ctx, w, img, &disk.ConvertOptions{Workers: s.exportWorkers(), Progress: countingReporter{progress}}); err != nil {
		return err
	}
	return w.Commit(ctx)
}

// writeOVA writes an OVA of the sources (stream-optimized VMDKs).
func (s *Server) writeOVA(ctx context.Context, path string, vm core.VMSpec, srcs []exportSource, progress func(int64)) error {
	out, err := disk.CreateOutputFile(path)
	if err != nil {
		return err
	}
	aw, err := ova.Format().Create(ctx, out, vm, &archive.CreateOptions{Disks: s.disks})
	if err != nil {
		out.Abort()
		return err
	}
	defer aw.Close()
	for _, src := range srcs {
		img, err := s.openExportSource(ctx, src)
		if err != nil {
			out.Abort()
			return err
		}
		dw, err := aw.NextDisk(ctx)
		if err == nil {
			_, err = disk.Convert(ctx, dw, img, &disk.ConvertOptions{Workers: s.exportWorkers(), Progress: countingReporter{progress}})
		}
		if err == nil {
			err = dw.Commit(ctx)
		}
		img.Close()
		if err != nil {
			out.Abort()
			return err
		}
	}
	if err := aw.Commit(ctx); err != nil {
		out.Abort()
		return err
	}
	return out.Commit()
}

func (s *Server) exportImageNode(t *exportTask, name string, full bool) *node {
	kids := []*node{
		opt("description", t.Description),
		el("exportImageTaskId", t.ID),
		el("imageId", t.ImageID),
		progressNode(t.Status, t.Progress),
		el("s3ExportLocation", el("s3Bucket", t.Bucket), opt("s3Prefix", t.Prefix)),
		el("status", t.Status),
		opt("statusMessage", t.Message),
		tagSet(s.st.Tags[t.ID]),
	}
	if full {
		kids = append(kids, el("diskImageFormat", t.Format), el("roleName", t.Role))
	}
	return el(name, kids)
}

func (s *Server) exportTaskNode(t *exportTask, name string) *node {
	return el(name,
		opt("description", t.Description),
		el("exportTaskId", t.ID),
		el("state", t.Status),
		opt("statusMessage", t.Message),
		el("instanceExport", el("instanceId", t.InstanceID), el("targetEnvironment", t.Target)),
		el("exportToS3", opt("containerFormat", t.Container), el("diskImageFormat", strings.ToLower(t.Format)),
			el("s3Bucket", t.Bucket), el("s3Key", t.Key)),
		tagSet(s.st.Tags[t.ID]),
	)
}

func (s *Server) describeExportImageTasks(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids := p.list("ExportImageTaskId")
	var hits []*node
	for _, id := range ids {
		if t := s.st.Exports[id]; t == nil || t.Kind != "image" {
			return nil, ec2Err("InvalidExportImageTaskId.NotFound", "The export image task ID '%s' does not exist", id)
		}
	}
	for _, t := range sortedValues(s.st.Exports) {
		if t.Kind != "image" || len(ids) > 0 && !containsString(ids, t.ID) {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[t.ID], func(string) ([]string, bool) { return nil, false })
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, s.exportImageNode(t, "item", false))
		}
	}
	from, to, next, err := page(p, len(hits), 1, 500)
	if err != nil {
		return nil, err
	}
	return []*node{set("exportImageTaskSet", hits[from:to]), opt("nextToken", next)}, nil
}

func (s *Server) describeExportTasks(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	ids := p.list("ExportTaskId")
	for _, id := range ids {
		if t := s.st.Exports[id]; t == nil || t.Kind != "instance" {
			return nil, ec2Err("InvalidExportTaskID.NotFound", "The export task ID '%s' does not exist", id)
		}
	}
	var items []*node
	for _, t := range sortedValues(s.st.Exports) {
		if t.Kind != "instance" || len(ids) > 0 && !containsString(ids, t.ID) {
			continue
		}
		ok, err := matchFilters(fs, s.st.Tags[t.ID], func(name string) ([]string, bool) {
			switch name {
			case "export-task-id":
				return []string{t.ID}, true
			case "state":
				return []string{t.Status}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if ok {
			items = append(items, s.exportTaskNode(t, "item"))
		}
	}
	return []*node{set("exportTaskSet", items)}, nil
}

func (s *Server) cancelExportTask(_ context.Context, p params) ([]*node, error) {
	id := p.str("ExportTaskId")
	if id == "" {
		return nil, missing("ExportTaskId")
	}
	t := s.st.Exports[id]
	if t == nil {
		return nil, ec2Err("InvalidExportTaskID.NotFound", "The export task ID '%s' does not exist", id)
	}
	if t.Status != "active" {
		return nil, ec2Err("IncorrectState", "Export task %s is %s and cannot be cancelled.", id, t.Status)
	}
	s.cancelJobLocked(id)
	t.Message = "Cancelled by the user"
	if t.Kind == "instance" {
		t.Status, t.Done = "cancelled", true
	} else {
		t.Status, t.Until, t.Done = "deleting", s.now().Add(s.delay), true
	}
	s.dirty = true
	return []*node{el("return", true)}, nil
}
