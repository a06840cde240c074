package aws

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
	"github.com/ferry-project/ferry/internal/provider/aws/s3stage"
)

// The classic paths: disks staged in S3 and imported or exported by EC2's
// VM Import/Export tasks.

// Staging formats EC2 imports and exports.
const (
	FormatVMDK = "vmdk" // streamOptimized
	FormatVHD  = "vhd"  // dynamic
	FormatRaw  = "raw"
)

// StageOptions tune StageImage.
type StageOptions struct {
	// Format is vmdk (streamOptimized, the default), vhd or raw.
	Format string
	// Key is the object key; default <Prefix><random>.<format>.
	Key string
	// Tags are set on the object with ferry's own.
	Tags map[string]string
	// Resume and Save make the upload resumable after a crash (see
	// s3stage); with Save set, a failed upload keeps its parts.
	Resume   *s3stage.Checkpoint
	Save     func(ctx context.Context, cp s3stage.Checkpoint) error
	PartSize int64
	Progress progress.Reporter
}

func (o *StageOptions) format() (string, map[string]string, error) {
	switch f := cmp.Or(o.Format, FormatVMDK); f {
	case FormatVMDK:
		return f, map[string]string{"subformat": "streamOptimized"}, nil
	case FormatVHD:
		return f, map[string]string{"subformat": "dynamic"}, nil
	case FormatRaw:
		return f, nil, nil
	default:
		return "", nil, fmt.Errorf("aws: staging format %q: want vmdk, vhd or raw: %w", o.Format, errs.ErrInvalidArgument)
	}
}

// ec2Format is the DiskContainer format name.
func ec2Format(f string) string { return strings.ToUpper(f) }

// StageImage converts img to the staging format on the fly and uploads it
// to the staging bucket with a resumable multipart upload: the image is
// written into a pipe, never staged on local disk. It returns the upload's
// result (bucket and key).
func (p *Provider) StageImage(ctx context.Context, img disk.Image, o *StageOptions) (s3stage.Result, error) {
	if o == nil {
		o = &StageOptions{}
	}
	if p.cfg.Bucket == "" {
		return s3stage.Result{}, fmt.Errorf("aws: stage image: no staging bucket configured: %w", errs.ErrFailedPrecondition)
	}
	format, fopts, err := o.format()
	if err != nil {
		return s3stage.Result{}, err
	}
	key := o.Key
	if key == "" {
		key = p.cfg.Prefix + "stage-" + randomSuffix() + randomSuffix() + "." + format
	}
	if o.Resume != nil && o.Resume.Key != "" {
		key = o.Resume.Key
	}
	pr, pw := io.Pipe()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	convErr := make(chan error, 1)
	go func() {
		err := writeImage(cctx, pw, img, format, fopts)
		pw.CloseWithError(cmp.Or(err, io.EOF))
		convErr <- err
	}()
	res, err := s3stage.Upload(ctx, p.s3, p.cfg.Bucket, key, pr, &s3stage.UploadOptions{
		PartSize: o.PartSize, SizeHint: img.Size(), Tags: ferryTags(o.Tags), Resume: o.Resume, Save: o.Save,
		Progress: o.Progress, Logger: p.log, Retry: p.retry,
		ContentType: "application/octet-stream",
	})
	pr.CloseWithError(errors.New("upload stopped"))
	cancel()
	cerr := <-convErr
	if err != nil {
		if cerr != nil && !errors.Is(cerr, context.Canceled) && !strings.Contains(cerr.Error(), "upload stopped") {
			err = cerr
		}
		return res, fmt.Errorf("aws: stage image as %s: %w", key, err)
	}
	if cerr != nil {
		return res, fmt.Errorf("aws: stage image as %s: %w", key, cerr)
	}
	return res, nil
}

// writeImage writes img in format to w.
func writeImage(ctx context.Context, w io.Writer, img disk.Image, format string, fopts map[string]string) error {
	reg := formats.Registry()
	dw, err := reg.CreateTo(ctx, disk.PlainTarget(w), format, img.Size(), &disk.CreateOptions{Options: fopts, Source: img})
	if err != nil {
		return err
	}
	defer dw.Close()
	if _, err := disk.Convert(ctx, dw, img, nil); err != nil {
		return err
	}
	return dw.Commit(ctx)
}

// ClassicOptions tune the S3 import paths.
type ClassicOptions struct {
	StageOptions
	// KeepStaged keeps the staged objects after a successful import.
	KeepStaged bool
	// RoleName is the service role VM Import uses; default vmimport.
	RoleName string
}

// ImportSnapshotS3 stages img in S3 and imports it with ImportSnapshot,
// waiting for the task; it returns the snapshot ID. On failure or
// cancellation the staged object (or the multipart upload, unless a Save
// callback keeps it for a resume) and the import task are removed.
func (p *Provider) ImportSnapshotS3(ctx context.Context, img disk.Image, o *ClassicOptions) (string, error) {
	if o == nil {
		o = &ClassicOptions{}
	}
	format, _, err := o.format()
	if err != nil {
		return "", err
	}
	u := undo{log: p.log}
	staged, err := p.StageImage(ctx, img, &o.StageOptions)
	if err != nil {
		return "", err
	}
	u.add("delete s3://"+staged.Bucket+"/"+staged.Key, func(ctx context.Context) error { return s3stage.Delete(ctx, p.s3, staged.Bucket, staged.Key) })
	tags := ferryTags(o.Tags)
	in := &ec2.ImportSnapshotInput{
		Description: aws.String("ferry import of " + staged.Key),
		DiskContainer: &ec2types.SnapshotDiskContainer{Format: aws.String(ec2Format(format)),
			UserBucket: &ec2types.UserBucket{S3Bucket: aws.String(staged.Bucket), S3Key: aws.String(staged.Key)}},
		TagSpecifications: tagSpecs(tags, ec2types.ResourceTypeImportSnapshotTask),
	}
	if o.RoleName != "" {
		in.RoleName = aws.String(o.RoleName)
	}
	out, err := p.ec2.ImportSnapshot(ctx, in)
	if err != nil {
		u.run(ctx)
		return "", wrap(err, "import snapshot from s3://%s/%s", staged.Bucket, staged.Key)
	}
	task := aws.ToString(out.ImportTaskId)
	u.add("cancel import task "+task, func(ctx context.Context) error { return p.cancelImportTask(ctx, task) })
	var snapID string
	err = awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		out, err := p.ec2.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{task}})
		if err != nil {
			return false, wrap(err, "describe import snapshot task %s", task)
		}
		if len(out.ImportSnapshotTasks) == 0 || out.ImportSnapshotTasks[0].SnapshotTaskDetail == nil {
			return false, fmt.Errorf("aws: import snapshot task %s: not found: %w", task, errs.ErrNotFound)
		}
		d := out.ImportSnapshotTasks[0].SnapshotTaskDetail
		switch st := aws.ToString(d.Status); st {
		case "completed":
			snapID = aws.ToString(d.SnapshotId)
			return true, nil
		case "deleting", "deleted", "error", "failed", "cancelled":
			return false, fmt.Errorf("aws: import snapshot task %s %s: %s: %w", task, st, aws.ToString(d.StatusMessage), errs.ErrFailedPrecondition)
		}
		return false, nil
	})
	if err != nil {
		u.run(ctx)
		return "", err
	}
	u.add("delete snapshot "+snapID, func(ctx context.Context) error { return p.deleteOne(ctx, snapID) })
	if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{snapID}, Tags: ec2Tags(tags)}); err != nil {
		u.run(ctx)
		return "", wrap(err, "tag snapshot %s", snapID)
	}
	if !o.KeepStaged {
		if err := s3stage.Delete(ctx, p.s3, staged.Bucket, staged.Key); err != nil {
			p.log.Warn("aws: remove staged image", "key", staged.Key, "err", err)
		}
	}
	p.log.Info("aws: snapshot imported", "snapshot", snapID, "task", task)
	return snapID, nil
}

func (p *Provider) cancelImportTask(ctx context.Context, task string) error {
	_, err := p.ec2.CancelImportTask(ctx, &ec2.CancelImportTaskInput{ImportTaskId: aws.String(task)})
	if err != nil && (isNotFound(err) || awserr.CodeOf(err) == errs.FailedPrecondition || awserr.CodeOf(err) == errs.InvalidArgument) {
		return nil // finished or gone already
	}
	return wrap(err, "cancel import task %s", task)
}

// ImportImageS3 stages every disk in S3 and imports them as one AMI with
// ImportImage (x86_64, boot mode from the spec, BYOL), waiting for the
// task; it returns the AMI ID. On failure or cancellation it removes what
// it created.
func (p *Provider) ImportImageS3(ctx context.Context, spec core.VMSpec, disks []disk.Image, o *ClassicOptions) (string, error) {
	if o == nil {
		o = &ClassicOptions{}
	}
	if len(disks) == 0 {
		return "", fmt.Errorf("aws: import image %q: no disks: %w", spec.Name, errs.ErrInvalidArgument)
	}
	format, _, err := o.format()
	if err != nil {
		return "", err
	}
	u := undo{log: p.log}
	var containers []ec2types.ImageDiskContainer
	var staged []s3stage.Result
	for i, img := range disks {
		so := o.StageOptions
		so.Resume, so.Save, so.Key = nil, nil, ""
		res, err := p.StageImage(ctx, img, &so)
		if err != nil {
			u.run(ctx)
			return "", fmt.Errorf("aws: import image %q: disk %d: %w", spec.Name, i, err)
		}
		staged = append(staged, res)
		u.add("delete s3://"+res.Bucket+"/"+res.Key, func(ctx context.Context) error { return s3stage.Delete(ctx, p.s3, res.Bucket, res.Key) })
		containers = append(containers, ec2types.ImageDiskContainer{Format: aws.String(ec2Format(format)),
			UserBucket: &ec2types.UserBucket{S3Bucket: aws.String(res.Bucket), S3Key: aws.String(res.Key)}})
	}
	tags := ferryTags(o.Tags)
	bootMode := ec2types.BootModeValuesLegacyBios
	if spec.Firmware == core.UEFI {
		bootMode = ec2types.BootModeValuesUefi
	}
	in := &ec2.ImportImageInput{
		Description: aws.String(cmp.Or(spec.Description, "ferry import of "+spec.Name)), DiskContainers: containers,
		Architecture: aws.String("x86_64"), BootMode: bootMode, LicenseType: aws.String("BYOL"),
		TagSpecifications: tagSpecs(tags, ec2types.ResourceTypeImportImageTask),
	}
	if strings.Contains(strings.ToLower(spec.OSType), "windows") {
		in.Platform = aws.String("Windows")
	} else {
		in.Platform = aws.String("Linux")
	}
	if o.RoleName != "" {
		in.RoleName = aws.String(o.RoleName)
	}
	out, err := p.ec2.ImportImage(ctx, in)
	if err != nil {
		u.run(ctx)
		return "", wrap(err, "import image %q", spec.Name)
	}
	task := aws.ToString(out.ImportTaskId)
	u.add("cancel import task "+task, func(ctx context.Context) error { return p.cancelImportTask(ctx, task) })
	var ami string
	err = awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		out, err := p.ec2.DescribeImportImageTasks(ctx, &ec2.DescribeImportImageTasksInput{ImportTaskIds: []string{task}})
		if err != nil {
			return false, wrap(err, "describe import image task %s", task)
		}
		if len(out.ImportImageTasks) == 0 {
			return false, fmt.Errorf("aws: import image task %s: not found: %w", task, errs.ErrNotFound)
		}
		t := out.ImportImageTasks[0]
		switch st := aws.ToString(t.Status); st {
		case "completed":
			ami = aws.ToString(t.ImageId)
			return true, nil
		case "deleting", "deleted", "error", "failed", "cancelled":
			return false, fmt.Errorf("aws: import image task %s %s: %s: %w", task, st, aws.ToString(t.StatusMessage), errs.ErrFailedPrecondition)
		}
		return false, nil
	})
	if err != nil {
		u.run(ctx)
		return "", err
	}
	u.add("deregister image "+ami, func(ctx context.Context) error { return p.DeregisterImage(ctx, ami) })
	if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{ami}, Tags: ec2Tags(tags)}); err != nil {
		u.run(ctx)
		return "", wrap(err, "tag image %s", ami)
	}
	if !o.KeepStaged {
		for _, s := range staged {
			if err := s3stage.Delete(ctx, p.s3, s.Bucket, s.Key); err != nil {
				p.log.Warn("aws: remove staged image", "key", s.Key, "err", err)
			}
		}
	}
	p.log.Info("aws: image imported", "ami", ami, "task", task)
	return ami, nil
}

// ExportOptions tune the S3 export paths.
type ExportOptions struct {
	// Format is vmdk (default), vhd or raw.
	Format string
	// Prefix is the key prefix in the staging bucket; default
	// <Prefix>exports/.
	Prefix string
	Tags   map[string]string
}

func (p *Provider) exportFormat(o *ExportOptions) (ec2types.DiskImageFormat, string, error) {
	switch f := cmp.Or(o.Format, FormatVMDK); f {
	case FormatVMDK:
		return ec2types.DiskImageFormatVmdk, f, nil
	case FormatVHD:
		return ec2types.DiskImageFormatVhd, f, nil
	case FormatRaw:
		return ec2types.DiskImageFormatRaw, f, nil
	default:
		return "", "", fmt.Errorf("aws: export format %q: want vmdk, vhd or raw: %w", o.Format, errs.ErrInvalidArgument)
	}
}

// ExportImageS3 exports an AMI to the staging bucket with ExportImage and
// waits for the task; it returns the object's key
// (<prefix><task ID>.<format>).
func (p *Provider) ExportImageS3(ctx context.Context, ami string, o *ExportOptions) (string, error) {
	if o == nil {
		o = &ExportOptions{}
	}
	if p.cfg.Bucket == "" {
		return "", fmt.Errorf("aws: export image %s: no staging bucket configured: %w", ami, errs.ErrFailedPrecondition)
	}
	dif, ext, err := p.exportFormat(o)
	if err != nil {
		return "", err
	}
	prefix := cmp.Or(o.Prefix, p.cfg.Prefix+"exports/")
	in := &ec2.ExportImageInput{ImageId: aws.String(ami), DiskImageFormat: dif,
		S3ExportLocation:  &ec2types.ExportTaskS3LocationRequest{S3Bucket: aws.String(p.cfg.Bucket), S3Prefix: aws.String(prefix)},
		TagSpecifications: tagSpecs(ferryTags(o.Tags), ec2types.ResourceTypeExportImageTask)}
	if p.cfg.ExportRole != "" {
		in.RoleName = aws.String(p.cfg.ExportRole)
	}
	out, err := p.ec2.ExportImage(ctx, in)
	if err != nil {
		return "", wrap(err, "export image %s", ami)
	}
	task := aws.ToString(out.ExportImageTaskId)
	err = awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		out, err := p.ec2.DescribeExportImageTasks(ctx, &ec2.DescribeExportImageTasksInput{ExportImageTaskIds: []string{task}})
		if err != nil {
			return false, wrap(err, "describe export image task %s", task)
		}
		if len(out.ExportImageTasks) == 0 {
			return false, fmt.Errorf("aws: export image task %s: not found: %w", task, errs.ErrNotFound)
		}
		t := out.ExportImageTasks[0]
		switch st := aws.ToString(t.Status); st {
		case "completed":
			return true, nil
		case "deleting", "deleted", "error", "failed", "cancelled":
			return false, fmt.Errorf("aws: export image task %s %s: %s: %w", task, st, aws.ToString(t.StatusMessage), errs.ErrFailedPrecondition)
		}
		return false, nil
	})
	if err != nil {
		p.cancelExport(ctx, task)
		return "", err
	}
	return prefix + task + "." + ext, nil
}

func (p *Provider) cancelExport(ctx context.Context, task string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if _, err := p.ec2.CancelExportTask(ctx, &ec2.CancelExportTaskInput{ExportTaskId: aws.String(task)}); err != nil && !isNotFound(err) {
		p.log.Debug("aws: cancel export task", "task", task, "err", awserr.Classify(err))
	}
}

// ExportInstanceS3 exports an instance's root volume to the staging bucket
// with CreateInstanceExportTask (target environment vmware for VMDK,
// citrix for VHD, microsoft otherwise) and waits; it returns the object's
// key.
func (p *Provider) ExportInstanceS3(ctx context.Context, instanceID string, o *ExportOptions) (string, error) {
	if o == nil {
		o = &ExportOptions{}
	}
	if p.cfg.Bucket == "" {
		return "", fmt.Errorf("aws: export instance %s: no staging bucket configured: %w", instanceID, errs.ErrFailedPrecondition)
	}
	dif, ext, err := p.exportFormat(o)
	if err != nil {
		return "", err
	}
	env := ec2types.ExportEnvironmentMicrosoft
	switch dif {
	case ec2types.DiskImageFormatVmdk:
		env = ec2types.ExportEnvironmentVmware
	case ec2types.DiskImageFormatVhd:
		env = ec2types.ExportEnvironmentCitrix
	}
	prefix := cmp.Or(o.Prefix, p.cfg.Prefix+"exports/")
	out, err := p.ec2.CreateInstanceExportTask(ctx, &ec2.CreateInstanceExportTaskInput{
		InstanceId: aws.String(instanceID), TargetEnvironment: env,
		ExportToS3Task:    &ec2types.ExportToS3TaskSpecification{DiskImageFormat: dif, S3Bucket: aws.String(p.cfg.Bucket), S3Prefix: aws.String(prefix)},
		TagSpecifications: tagSpecs(ferryTags(o.Tags), ec2types.ResourceTypeExportInstanceTask),
	})
	if err != nil {
		return "", wrap(err, "export instance %s", instanceID)
	}
	if out.ExportTask == nil {
		return "", fmt.Errorf("aws: export instance %s: no task returned: %w", instanceID, errs.ErrCorrupt)
	}
	task := aws.ToString(out.ExportTask.ExportTaskId)
	key := prefix + task + "." + ext
	if t := out.ExportTask.ExportToS3Task; t != nil && aws.ToString(t.S3Key) != "" {
		key = aws.ToString(t.S3Key)
	}
	err = awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		out, err := p.ec2.DescribeExportTasks(ctx, &ec2.DescribeExportTasksInput{ExportTaskIds: []string{task}})
		if err != nil {
			return false, wrap(err, "describe export task %s", task)
		}
		if len(out.ExportTasks) == 0 {
			return false, fmt.Errorf("aws: export task %s: not found: %w", task, errs.ErrNotFound)
		}
		t := out.ExportTasks[0]
		if s := t.ExportToS3Task; s != nil && aws.ToString(s.S3Key) != "" {
			key = aws.ToString(s.S3Key)
		}
		switch t.State {
		case ec2types.ExportTaskStateCompleted:
			return true, nil
		case ec2types.ExportTaskStateCancelled, ec2types.ExportTaskStateCancelling:
			return false, fmt.Errorf("aws: export task %s %s: %s: %w", task, t.State, aws.ToString(t.StatusMessage), errs.ErrFailedPrecondition)
		}
		return false, nil
	})
	if err != nil {
		p.cancelExport(ctx, task)
		return "", err
	}
	return key, nil
}

// OpenS3Image opens an image object in the staging bucket (an export) as
// a disk.Image, its format probed, read with ranged GETs.
func (p *Provider) OpenS3Image(ctx context.Context, key string) (disk.Image, error) {
	if p.cfg.Bucket == "" {
		return nil, fmt.Errorf("aws: open %s: no staging bucket configured: %w", key, errs.ErrFailedPrecondition)
	}
	obj, err := s3stage.OpenObject(ctx, p.s3, p.cfg.Bucket, key, p.retry)
	if err != nil {
		return nil, fmt.Errorf("aws: %w", err)
	}
	reg := formats.Registry()
	ft, err := reg.Probe(obj)
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("aws: open %s: %w", path.Base(key), err)
	}
	img, err := ft.Open(ctx, obj, &disk.OpenOptions{Logger: p.log})
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("aws: open %s: %w", obj.Name(), err)
	}
	return img, nil
}

// DownloadS3 copies an object of the staging bucket (an export) to w with
// parallel ranged GETs (the SDK's transfer manager) and returns its size.
func (p *Provider) DownloadS3(ctx context.Context, key string, w io.WriterAt) (int64, error) {
	if p.cfg.Bucket == "" {
		return 0, fmt.Errorf("aws: download %s: no staging bucket configured: %w", key, errs.ErrFailedPrecondition)
	}
	d := manager.NewDownloader(p.s3, func(d *manager.Downloader) { d.PartSize = 16 << 20; d.Concurrency = 4 })
	n, err := d.Download(ctx, w, &s3.GetObjectInput{Bucket: aws.String(p.cfg.Bucket), Key: aws.String(key)})
	if err != nil {
		return n, wrap(err, "download s3://%s/%s", p.cfg.Bucket, key)
	}
	return n, nil
}
