package awslab

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// bootSector is a 512-byte x86 boot sector that prints FERRY-BOOT-OK on
// COM1 and halts, or, when crash, then triple-faults (an empty IDT and an
// int3), which ends QEMU under -no-reboot.
func bootSector(crash bool) []byte {
	code := []byte{
		0xFA,       // cli
		0x31, 0xC0, // xor ax,ax
		0x8E, 0xD8, // mov ds,ax
		0xBE, 0x20, 0x7C, // mov si,msg
		0xBA, 0xF8, 0x03, // mov dx,0x3f8
		0xAC,       // next: lodsb
		0x84, 0xC0, // test al,al
		0x74, 0x03, // jz done
		0xEE,       // out dx,al
		0xEB, 0xF8, // jmp next
		0xFA,       // done: cli
		0xF4,       // hlt
		0xEB, 0xFC, // jmp done
	}
	if crash {
		code = append(code[:19], 0x0F, 0x01, 0x1E, 0x30, 0x7C, 0xCC) // lidt [0x7c30]; int3
	}
	b := make([]byte, 512)
	copy(b, code)
	copy(b[0x20:], "FERRY-BOOT-OK\r\n\x00") // the IDT descriptor at 0x30 is zeros
	b[510], b[511] = 0x55, 0xAA
	return b
}

func (l *testLab) console(ctx context.Context, id string) string {
	out := must[*ec2.GetConsoleOutputOutput](l.t)(l.ec2.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(id)}))
	b, _ := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
	return string(b)
}

// TestQEMUBoot imports a bootable disk, launches it under QEMU and reads
// what it printed through GetConsoleOutput.
func TestQEMUBoot(t *testing.T) {
	qemu := FindQEMU()
	if qemu == "" {
		t.Skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	}
	l := newTestLab(t, "", func(o *Options) { o.QEMU, o.ShutdownTimeout = qemu, 300*time.Millisecond })
	ctx := t.Context()
	l.makeBucket(ctx, "boot")
	ami := l.bootImage(ctx, false)
	run := must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(ami), MinCount: aws.Int32(1), MaxCount: aws.Int32(1), InstanceType: types.InstanceTypeT3Micro}))
	id := *run.Instances[0].InstanceId
	l.settle("running", func() bool { return l.instanceState(ctx, id) == types.InstanceStateNameRunning })
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(l.console(ctx, id), "FERRY-BOOT-OK") {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(l.s.qemuLogPath(id))
			t.Fatalf("no boot message; console:\n%s\nqemu log:\n%s", l.console(ctx, id), b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// the guest ignores the power button: it is killed after the timeout
	must[*ec2.StopInstancesOutput](t)(l.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}))
	l.settle("stopped", func() bool { return l.instanceState(ctx, id) == types.InstanceStateNameStopped })
	if !strings.Contains(l.console(ctx, id), "guest stopped") {
		t.Fatalf("console after stop:\n%s", l.console(ctx, id))
	}
	// and boots again on start
	must[*ec2.StartInstancesOutput](t)(l.ec2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}}))
	l.settle("running again", func() bool { return strings.Count(l.console(ctx, id), "FERRY-BOOT-OK") == 2 })

	// a guest that stops by itself stops its instance
	run = must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(l.bootImage(ctx, true)), MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}))
	id = *run.Instances[0].InstanceId
	l.settle("crashed guest stopped", func() bool { return l.instanceState(ctx, id) == types.InstanceStateNameStopped })
	d := must[*ec2.DescribeInstancesOutput](t)(l.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}))
	if r := d.Reservations[0].Instances[0].StateReason; r == nil || *r.Code != "Client.InstanceInitiatedShutdown" || !strings.Contains(l.console(ctx, id), "FERRY-BOOT-OK") {
		t.Fatalf("state reason %+v; console:\n%s", r, l.console(ctx, id))
	}
}

// bootImage imports a 4 MiB disk holding a boot sector as an AMI.
func (l *testLab) bootImage(ctx context.Context, crash bool) string {
	l.t.Helper()
	img := make([]byte, 4<<20)
	copy(img, bootSector(crash))
	path := filepath.Join(l.t.TempDir(), "boot.raw")
	os.WriteFile(path, img, 0o644)
	key := "boot.raw"
	if crash {
		key = "crash.raw"
	}
	l.putFile(ctx, "boot", key, path)
	imp := must[*ec2.ImportImageOutput](l.t)(l.ec2.ImportImage(ctx, &ec2.ImportImageInput{DiskContainers: []types.ImageDiskContainer{
		{Format: aws.String("RAW"), UserBucket: &types.UserBucket{S3Bucket: aws.String("boot"), S3Key: aws.String(key)}}}}))
	var ami string
	l.settle("import", func() bool {
		d := must[*ec2.DescribeImportImageTasksOutput](l.t)(l.ec2.DescribeImportImageTasks(ctx, &ec2.DescribeImportImageTasksInput{ImportTaskIds: []string{*imp.ImportTaskId}}))
		ami = aws.ToString(d.ImportImageTasks[0].ImageId)
		return *d.ImportImageTasks[0].Status == "completed"
	})
	return ami
}
