package awslab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/disk/ova"
	"github.com/ferry-project/ferry/internal/disk/synth"
)

// sourceDisk is a synthetic disk: 9 MiB and a bit, half of it data.
func sourceDisk() disk.Image {
	return synth.Image{P: synth.MakePattern("source", 9<<20+3*512, 0.5, 11)}
}

// writeImage writes src as a file of the given format.
func writeImage(t *testing.T, src disk.Image, format string, opts map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk."+format)
	reg := formats.Registry()
	w, err := reg.Create(t.Context(), path, format, src.Size(), &disk.CreateOptions{Options: opts, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := disk.Convert(t.Context(), w, src, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeOVA writes src as the one disk of an OVA.
func writeOVA(t *testing.T, src disk.Image) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vm.ova")
	out, err := disk.CreateOutputFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vm := core.VMSpec{Name: "lab-vm", CPUs: 1, MemoryBytes: 256 << 20, Disks: []core.DiskSpec{{Name: "root", Size: src.Size(), Bootable: true}}}
	aw, err := ova.Format().Create(t.Context(), out, vm, &archive.CreateOptions{Disks: formats.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := aw.NextDisk(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), dw, src, nil); err != nil {
		t.Fatal(err)
	}
	if err := dw.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := aw.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	return path
}

// upload puts a file into a bucket with the transfer manager (multipart
// in 5 MiB parts when it is bigger).
func (l *testLab) upload(ctx context.Context, bucket, key, path string) {
	l.t.Helper()
	f, err := os.Open(path)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	up := manager.NewUploader(l.s3, func(u *manager.Uploader) { u.PartSize = 5 << 20 })
	if _, err := up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: f}); err != nil {
		l.t.Fatalf("upload s3://%s/%s: %v", bucket, key, err)
	}
}

// download fetches an object into a file with the transfer manager.
func (l *testLab) download(ctx context.Context, bucket, key string) string {
	l.t.Helper()
	path := filepath.Join(l.t.TempDir(), filepath.Base(key))
	f, err := os.Create(path)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	dl := manager.NewDownloader(l.s3, func(d *manager.Downloader) { d.PartSize = 8 << 20; d.Concurrency = 2 })
	if _, err := dl.Download(ctx, f, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		l.t.Fatalf("download s3://%s/%s: %v", bucket, key, err)
	}
	return path
}

func (l *testLab) importSnapshotTask(ctx context.Context, id string) types.ImportSnapshotTask {
	l.t.Helper()
	out := must[*ec2.DescribeImportSnapshotTasksOutput](l.t)(l.ec2.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{id}}))
	return out.ImportSnapshotTasks[0]
}

func TestImportSnapshot(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	l.makeBucket(ctx, "imports")
	src := sourceDisk()
	tests := []struct {
		name, format, file string
		multipart          bool
	}{
		{"raw", "RAW", writeImage(t, src, "raw", nil), true},
		{"vhd", "VHD", writeImage(t, src, "vhd", nil), false},
		{"vmdk", "VMDK", writeImage(t, src, "vmdk", map[string]string{"subformat": "streamOptimized"}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "disks/" + tt.name
			if tt.multipart {
				l.upload(ctx, "imports", key, tt.file)
			} else {
				l.putFile(ctx, "imports", key, tt.file)
			}
			out, err := l.ec2.ImportSnapshot(ctx, &ec2.ImportSnapshotInput{
				Description: aws.String("import " + tt.name),
				DiskContainer: &types.SnapshotDiskContainer{Format: aws.String(tt.format),
					UserBucket: &types.UserBucket{S3Bucket: aws.String("imports"), S3Key: aws.String(key)}},
				TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeImportSnapshotTask, Tags: []types.Tag{{Key: aws.String("ferry:job"), Value: aws.String("j")}}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			id := *out.ImportTaskId
			if !strings.HasPrefix(id, "import-snap-0") || *out.SnapshotTaskDetail.Status != "active" || *out.SnapshotTaskDetail.StatusMessage != "pending" || len(out.Tags) != 1 {
				t.Fatalf("import response %+v", out.SnapshotTaskDetail)
			}
			var task types.ImportSnapshotTask
			l.settle("import completed", func() bool {
				task = l.importSnapshotTask(ctx, id)
				return *task.SnapshotTaskDetail.Status == "completed"
			})
			d := task.SnapshotTaskDetail
			fi, _ := os.Stat(tt.file)
			if d.SnapshotId == nil || *d.Format != tt.format || int64(*d.DiskImageSize) != fi.Size() || d.Progress != nil || *d.UserBucket.S3Key != key {
				t.Fatalf("completed task %+v", d)
			}
			snaps := must[*ec2.DescribeSnapshotsOutput](t)(l.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{*d.SnapshotId}}))
			if sn := snaps.Snapshots[0]; *sn.VolumeSize != 1 || sn.State != types.SnapshotStateCompleted || !strings.Contains(*sn.Description, id) {
				t.Fatalf("snapshot %+v", sn)
			}
			compareImages(t, src, l.readSnapshot(ctx, *d.SnapshotId, gib))
		})
	}
}

func TestImportFailures(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	l.makeBucket(ctx, "imports")
	src := sourceDisk()
	corrupt := writeImage(t, src, "vmdk", map[string]string{"subformat": "streamOptimized"})
	b, _ := os.ReadFile(corrupt)
	for i := 512; i < len(b)-1024; i += 997 {
		b[i] ^= 0x5a // damage the grains and their markers
	}
	os.WriteFile(corrupt, b, 0o644)
	tests := []struct {
		name, format, file, key, want string
	}{
		{"corrupt vmdk", "VMDK", corrupt, "corrupt.vmdk", "ClientError: Disk validation failed"},
		{"monolithic sparse vmdk", "VMDK", writeImage(t, src, "vmdk", nil), "sparse.vmdk", "stream-optimized"},
		{"raw declared as vhd", "VHD", writeImage(t, src, "raw", nil), "raw.img", "Unsupported VHD File Format"},
		{"missing object", "RAW", "", "nothing-here", "Invalid S3 source location"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.file != "" {
				l.putFile(ctx, "imports", tt.key, tt.file)
			}
			out := must[*ec2.ImportSnapshotOutput](t)(l.ec2.ImportSnapshot(ctx, &ec2.ImportSnapshotInput{DiskContainer: &types.SnapshotDiskContainer{
				Format: aws.String(tt.format), UserBucket: &types.UserBucket{S3Bucket: aws.String("imports"), S3Key: aws.String(tt.key)}}}))
			id := *out.ImportTaskId
			var task types.ImportSnapshotTask
			l.settle("import deleting", func() bool {
				task = l.importSnapshotTask(ctx, id)
				return *task.SnapshotTaskDetail.Status != "active"
			})
			d := task.SnapshotTaskDetail
			if *d.Status != "deleting" || !strings.Contains(*d.StatusMessage, tt.want) || d.SnapshotId != nil {
				t.Fatalf("failed task: status %s, message %q, snapshot %v; want deleting, %q", *d.Status, aws.ToString(d.StatusMessage), d.SnapshotId, tt.want)
			}
			l.settle("import deleted", func() bool { return *l.importSnapshotTask(ctx, id).SnapshotTaskDetail.Status == "deleted" })
		})
	}
	// nothing was left behind
	snaps := must[*ec2.DescribeSnapshotsOutput](t)(l.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{}))
	if len(snaps.Snapshots) != 0 {
		t.Fatalf("failed imports left %d snapshots", len(snaps.Snapshots))
	}
	// requests the API refuses at once
	_, err := l.ec2.ImportSnapshot(ctx, &ec2.ImportSnapshotInput{DiskContainer: &types.SnapshotDiskContainer{Format: aws.String("QCOW2"),
		UserBucket: &types.UserBucket{S3Bucket: aws.String("imports"), S3Key: aws.String("x")}}})
	wantCode(t, err, "InvalidParameter")
	_, err = l.ec2.ImportSnapshot(ctx, &ec2.ImportSnapshotInput{DiskContainer: &types.SnapshotDiskContainer{Format: aws.String("RAW")}})
	wantCode(t, err, "InvalidParameter")
	_, err = l.ec2.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{"import-snap-0123456789abcdef0"}})
	wantCode(t, err, "InvalidConversionTaskId.Malformed")
}

// TestImportImageExport imports a VM (a VHD, and an OVA), launches it,
// and exports the image in every format and the instance as an OVA; each
// export is opened by ferry's disk engine and compared with the source.
func TestImportImageExport(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	l.makeBucket(ctx, "vms")
	src := sourceDisk()
	l.putFile(ctx, "vms", "in/disk.vhd", writeImage(t, src, "vhd", nil))
	l.putFile(ctx, "vms", "in/vm.ova", writeOVA(t, src))

	var amis []string
	for _, c := range []struct{ key, format string }{{"in/disk.vhd", "VHD"}, {"in/vm.ova", "OVA"}} {
		out := must[*ec2.ImportImageOutput](t)(l.ec2.ImportImage(ctx, &ec2.ImportImageInput{
			Description: aws.String("lab vm"), Architecture: aws.String("x86_64"), BootMode: types.BootModeValuesLegacyBios,
			DiskContainers: []types.ImageDiskContainer{{Format: aws.String(c.format), Url: aws.String("s3://vms/" + c.key)}},
		}))
		if *out.Status != "active" || !strings.HasPrefix(*out.ImportTaskId, "import-ami-0") {
			t.Fatalf("import image %+v", out)
		}
		var task types.ImportImageTask
		l.settle("image import", func() bool {
			d := must[*ec2.DescribeImportImageTasksOutput](t)(l.ec2.DescribeImportImageTasks(ctx, &ec2.DescribeImportImageTasksInput{ImportTaskIds: []string{*out.ImportTaskId}}))
			task = d.ImportImageTasks[0]
			return *task.Status != "active"
		})
		if *task.Status != "completed" || task.ImageId == nil || len(task.SnapshotDetails) != 1 || *task.SnapshotDetails[0].Status != "completed" {
			t.Fatalf("image import %s: %s %q %+v", c.format, *task.Status, aws.ToString(task.StatusMessage), task.SnapshotDetails)
		}
		if c.format == "OVA" && *task.SnapshotDetails[0].Format != "VMDK" {
			t.Fatalf("the OVA's disk is reported as %s", *task.SnapshotDetails[0].Format)
		}
		compareImages(t, src, l.readSnapshot(ctx, *task.SnapshotDetails[0].SnapshotId, gib))
		amis = append(amis, *task.ImageId)
	}
	im := must[*ec2.DescribeImagesOutput](t)(l.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: amis[:1]})).Images[0]
	if *im.RootDeviceName != "/dev/sda1" || im.State != types.ImageStateAvailable || !strings.HasPrefix(*im.Name, "import-ami-") {
		t.Fatalf("imported image %+v", im)
	}

	// launch it
	run := must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(amis[0]), MinCount: aws.Int32(1), MaxCount: aws.Int32(1), InstanceType: types.InstanceTypeT3Small}))
	inst := *run.Instances[0].InstanceId
	l.settle("running", func() bool { return l.instanceState(ctx, inst) == types.InstanceStateNameRunning })

	// export the image in every format
	formatsWanted := []struct{ api, name string }{{"VMDK", "vmdk"}, {"VHD", "vhd"}, {"RAW", "raw"}}
	if testing.Short() {
		formatsWanted = formatsWanted[:2] // a RAW export is the whole GiB
	}
	reg := formats.Registry()
	for _, f := range formatsWanted {
		t.Run("export "+f.name, func(t *testing.T) {
			ex := must[*ec2.ExportImageOutput](t)(l.ec2.ExportImage(ctx, &ec2.ExportImageInput{ImageId: aws.String(amis[0]), DiskImageFormat: types.DiskImageFormat(f.api),
				S3ExportLocation: &types.ExportTaskS3LocationRequest{S3Bucket: aws.String("vms"), S3Prefix: aws.String("out/")}, RoleName: aws.String("vmimport")}))
			if *ex.Status != "active" || !strings.HasPrefix(*ex.ExportImageTaskId, "export-ami-0") || ex.DiskImageFormat != types.DiskImageFormat(f.api) {
				t.Fatalf("export %+v", ex)
			}
			l.settle("export", func() bool {
				d := must[*ec2.DescribeExportImageTasksOutput](t)(l.ec2.DescribeExportImageTasks(ctx, &ec2.DescribeExportImageTasksInput{ExportImageTaskIds: []string{*ex.ExportImageTaskId}}))
				st := *d.ExportImageTasks[0].Status
				if st != "active" && st != "completed" {
					t.Fatalf("export %s: %q", st, aws.ToString(d.ExportImageTasks[0].StatusMessage))
				}
				return st == "completed"
			})
			path := l.download(ctx, "vms", "out/"+*ex.ExportImageTaskId+"."+f.name)
			img, err := reg.Open(ctx, path, &disk.RegistryOpenOptions{NoBacking: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Info().Format != f.name || img.Size() != gib {
				t.Fatalf("exported %s of %d bytes, want %s of 1 GiB", img.Info().Format, img.Size(), f.name)
			}
			if f.name == "vmdk" && img.Info().Specific["create-type"] != "streamOptimized" {
				t.Fatalf("exported VMDK is %v", img.Info().Specific["create-type"])
			}
			compareImages(t, src, img)
		})
	}

	// export the running instance as an OVA
	et := must[*ec2.CreateInstanceExportTaskOutput](t)(l.ec2.CreateInstanceExportTask(ctx, &ec2.CreateInstanceExportTaskInput{
		InstanceId: aws.String(inst), TargetEnvironment: types.ExportEnvironmentVmware,
		ExportToS3Task: &types.ExportToS3TaskSpecification{ContainerFormat: types.ContainerFormatOva, DiskImageFormat: types.DiskImageFormatVmdk, S3Bucket: aws.String("vms"), S3Prefix: aws.String("vm/")},
	}))
	task := et.ExportTask
	if task.State != types.ExportTaskStateActive || *task.ExportToS3Task.S3Key != "vm/"+*task.ExportTaskId+".ova" || *task.InstanceExportDetails.InstanceId != inst {
		t.Fatalf("instance export %+v", task)
	}
	l.settle("instance export", func() bool {
		d := must[*ec2.DescribeExportTasksOutput](t)(l.ec2.DescribeExportTasks(ctx, &ec2.DescribeExportTasksInput{ExportTaskIds: []string{*task.ExportTaskId}}))
		return d.ExportTasks[0].State == types.ExportTaskStateCompleted
	})
	path := l.download(ctx, "vms", *task.ExportToS3Task.S3Key)
	f, err := disk.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ar, err := ova.Format().Open(ctx, f, &archive.OpenOptions{Disks: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer ar.Close()
	if err := ar.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if vm := ar.VM(); len(vm.Disks) != 1 || vm.CPUs != 2 || vm.MemoryBytes != 2048<<20 {
		t.Fatalf("exported VM %+v", vm)
	}
	d0, err := ar.OpenDisk(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	compareImages(t, src, d0)

	// an instance export can be cancelled while it runs
	et = must[*ec2.CreateInstanceExportTaskOutput](t)(l.ec2.CreateInstanceExportTask(ctx, &ec2.CreateInstanceExportTaskInput{
		InstanceId: aws.String(inst), TargetEnvironment: types.ExportEnvironmentCitrix,
		ExportToS3Task: &types.ExportToS3TaskSpecification{DiskImageFormat: types.DiskImageFormatVhd, S3Bucket: aws.String("vms")},
	}))
	must[*ec2.CancelExportTaskOutput](t)(l.ec2.CancelExportTask(ctx, &ec2.CancelExportTaskInput{ExportTaskId: et.ExportTask.ExportTaskId}))
	d := must[*ec2.DescribeExportTasksOutput](t)(l.ec2.DescribeExportTasks(ctx, &ec2.DescribeExportTasksInput{ExportTaskIds: []string{*et.ExportTask.ExportTaskId}}))
	if d.ExportTasks[0].State != types.ExportTaskStateCancelled {
		t.Fatalf("cancelled export is %s", d.ExportTasks[0].State)
	}
	_, err = l.ec2.CreateInstanceExportTask(ctx, &ec2.CreateInstanceExportTaskInput{InstanceId: aws.String(inst), TargetEnvironment: types.ExportEnvironmentVmware,
		ExportToS3Task: &types.ExportToS3TaskSpecification{DiskImageFormat: types.DiskImageFormatVmdk, S3Bucket: aws.String("no-such-bucket")}})
	wantCode(t, err, "InvalidParameter")
}

func TestCancelImport(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	l.makeBucket(ctx, "imports")
	l.putFile(ctx, "imports", "d.raw", writeImage(t, sourceDisk(), "raw", nil))
	out := must[*ec2.ImportImageOutput](t)(l.ec2.ImportImage(ctx, &ec2.ImportImageInput{DiskContainers: []types.ImageDiskContainer{
		{Format: aws.String("RAW"), UserBucket: &types.UserBucket{S3Bucket: aws.String("imports"), S3Key: aws.String("d.raw")}}}}))
	c := must[*ec2.CancelImportTaskOutput](t)(l.ec2.CancelImportTask(ctx, &ec2.CancelImportTaskInput{ImportTaskId: out.ImportTaskId, CancelReason: aws.String("changed my mind")}))
	if *c.PreviousState != "active" || *c.State != "deleting" {
		t.Fatalf("cancel %+v", c)
	}
	_, err := l.ec2.CancelImportTask(ctx, &ec2.CancelImportTaskInput{ImportTaskId: out.ImportTaskId})
	wantCode(t, err, "IncorrectState")
	l.settle("deleted", func() bool {
		d := must[*ec2.DescribeImportImageTasksOutput](t)(l.ec2.DescribeImportImageTasks(ctx, &ec2.DescribeImportImageTasksInput{ImportTaskIds: []string{*out.ImportTaskId}}))
		return *d.ImportImageTasks[0].Status == "deleted" && *d.ImportImageTasks[0].StatusMessage == "changed my mind"
	})
	if imgs := must[*ec2.DescribeImagesOutput](t)(l.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{})); len(imgs.Images) != 0 {
		t.Fatalf("a cancelled import left %d images", len(imgs.Images))
	}
}
