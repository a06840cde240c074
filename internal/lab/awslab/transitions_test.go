package awslab

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// waitWork polls the lab until fn reports true under its lock (background
// work has finished), for at most 30 s. The clock does not move.
func (l *testLab) waitWork(what string, fn func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l.s.mu.Lock()
		ok := fn()
		l.s.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: not done within 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTransitions checks that transitional states last exactly the
// configured delay on the lab's clock, and no longer than the work.
func TestTransitions(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	ami, _ := l.registerTestImage(ctx, "transitions")
	run := must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(ami), MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}))
	id := *run.Instances[0].InstanceId
	l.waitWork("root volume filled", func() bool { return l.s.volumesReadyLocked(l.s.st.Instances[id]) })
	steps := []struct {
		advance time.Duration
		want    types.InstanceStateName
	}{
		{0, types.InstanceStateNamePending},
		{testDelay - time.Second, types.InstanceStateNamePending},
		{time.Second, types.InstanceStateNameRunning},
	}
	for _, st := range steps {
		l.clock.Advance(st.advance)
		if got := l.instanceState(ctx, id); got != st.want {
			t.Fatalf("after %v more: %s, want %s", st.advance, got, st.want)
		}
	}
	must[*ec2.StopInstancesOutput](t)(l.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}}))
	for _, st := range []struct {
		advance time.Duration
		want    types.InstanceStateName
	}{{0, types.InstanceStateNameStopping}, {testDelay - time.Second, types.InstanceStateNameStopping}, {time.Second, types.InstanceStateNameStopped}} {
		l.clock.Advance(st.advance)
		if got := l.instanceState(ctx, id); got != st.want {
			t.Fatalf("stop, after %v more: %s, want %s", st.advance, got, st.want)
		}
	}
	// a snapshot is pending until its copy is done and the delay is over
	vols := must[*ec2.DescribeVolumesOutput](t)(l.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{}))
	snap := must[*ec2.CreateSnapshotOutput](t)(l.ec2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: vols.Volumes[0].VolumeId}))
	l.waitWork("snapshot copied", func() bool { return l.s.st.Snapshots[*snap.SnapshotId].Ready })
	if st := l.snapshotState(ctx, *snap.SnapshotId); st != types.SnapshotStatePending {
		t.Fatalf("snapshot %s before the delay", st)
	}
	l.clock.Advance(testDelay)
	if st := l.snapshotState(ctx, *snap.SnapshotId); st != types.SnapshotStateCompleted {
		t.Fatalf("snapshot %s after the delay", st)
	}
}

// TestNoDelay: with a negative delay, states move as soon as the work is
// done.
func TestNoDelay(t *testing.T) {
	l := newTestLab(t, "", func(o *Options) { o.Delay = -1 })
	ctx := t.Context()
	v := must[*ec2.CreateVolumeOutput](t)(l.ec2.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1c"), Size: aws.Int32(1)}))
	l.waitWork("volume filled", func() bool { return l.s.st.Volumes[*v.VolumeId].Ready })
	d := must[*ec2.DescribeVolumesOutput](t)(l.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*v.VolumeId}}))
	if d.Volumes[0].State != types.VolumeStateAvailable {
		t.Fatalf("volume %s", d.Volumes[0].State)
	}
}
