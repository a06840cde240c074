package aws

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

// PowerVM starts, stops (cleanly or forced) or reboots an instance and
// returns once EC2 accepted the request.
func (p *Provider) PowerVM(ctx context.Context, id core.VMID, op provider.PowerOp) error {
	switch op {
	case provider.Start:
		return p.StartInstances(ctx, string(id))
	case provider.Shutdown:
		return p.StopInstances(ctx, false, string(id))
	case provider.Stop:
		return p.StopInstances(ctx, true, string(id))
	case provider.Reboot:
		return p.RebootInstances(ctx, string(id))
	}
	return fmt.Errorf("aws: power %s: unknown operation %q: %w", id, op, errs.ErrInvalidArgument)
}

// StartInstances starts stopped instances; running ones stay running.
func (p *Provider) StartInstances(ctx context.Context, ids ...string) error {
	_, err := p.ec2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: ids})
	return wrap(err, "start instances %v", ids)
}

// StopInstances stops instances, through the guest or (force) at once.
func (p *Provider) StopInstances(ctx context.Context, force bool, ids ...string) error {
	_, err := p.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: ids, Force: aws.Bool(force)})
	return wrap(err, "stop instances %v", ids)
}

// RebootInstances reboots running instances.
func (p *Provider) RebootInstances(ctx context.Context, ids ...string) error {
	_, err := p.ec2.RebootInstances(ctx, &ec2.RebootInstancesInput{InstanceIds: ids})
	return wrap(err, "reboot instances %v", ids)
}

// TerminateInstances terminates instances; unknown ones are no error.
func (p *Provider) TerminateInstances(ctx context.Context, ids ...string) error {
	_, err := p.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids})
	if isNotFound(err) {
		return nil
	}
	return wrap(err, "terminate instances %v", ids)
}

// LaunchSpec describes an instance to launch.
type LaunchSpec struct {
	AMI              string
	InstanceType     string // default t3.micro
	SubnetID         string // "" = the default VPC's
	SecurityGroupIDs []string
	KeyName          string
	Name             string // the Name tag
	// ClientToken makes the launch idempotent: RunInstances called again
	// with the same token (after a crash) answers the same instance.
	ClientToken string
	// Tags are set on the instance and its volumes, with ferry's own.
	Tags map[string]string
}

// Launch runs one instance and waits until it is running. On failure or
// cancellation after RunInstances answered, the instance is terminated.
func (p *Provider) Launch(ctx context.Context, spec LaunchSpec) (string, error) {
	if spec.AMI == "" {
		return "", fmt.Errorf("aws: launch: no AMI: %w", errs.ErrInvalidArgument)
	}
	tags := ferryTags(spec.Tags)
	if spec.Name != "" {
		tags["Name"] = spec.Name
	}
	in := &ec2.RunInstancesInput{
		ImageId: aws.String(spec.AMI), InstanceType: ec2types.InstanceType(spec.InstanceType),
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: tagSpecs(tags, ec2types.ResourceTypeInstance, ec2types.ResourceTypeVolume),
	}
	if in.InstanceType == "" {
		in.InstanceType = ec2types.InstanceTypeT3Micro
	}
	if spec.SubnetID != "" {
		in.SubnetId = aws.String(spec.SubnetID)
	}
	if len(spec.SecurityGroupIDs) > 0 {
		in.SecurityGroupIds = spec.SecurityGroupIDs
	}
	if spec.KeyName != "" {
		in.KeyName = aws.String(spec.KeyName)
	}
	if spec.ClientToken != "" {
		in.ClientToken = aws.String(spec.ClientToken)
	}
	out, err := p.ec2.RunInstances(ctx, in)
	if err != nil {
		return "", wrap(err, "launch %s from %s", in.InstanceType, spec.AMI)
	}
	if len(out.Instances) != 1 || out.Instances[0].InstanceId == nil {
		return "", fmt.Errorf("aws: launch from %s: RunInstances returned %d instances: %w", spec.AMI, len(out.Instances), errs.ErrCorrupt)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	p.log.Info("aws: instance launched", "vm_id", id, "ami", spec.AMI, "instance_type", in.InstanceType)
	if err := p.WaitInstance(ctx, id, ec2types.InstanceStateNameRunning); err != nil {
		u := undo{log: p.log}
		u.add("terminate instance "+id, func(ctx context.Context) error { return p.TerminateInstances(ctx, id) })
		u.run(ctx)
		return "", err
	}
	return id, nil
}

// WaitInstance polls until the instance is in state want. Terminated (when
// not wanted) is a FailedPrecondition error naming EC2's reason. An
// instance EC2 does not know yet (eventual consistency right after
// RunInstances) is waited for a few polls.
func (p *Provider) WaitInstance(ctx context.Context, id string, want ec2types.InstanceStateName) error {
	misses := 0
	return awserr.Poll(ctx, p.cfg.PollEvery, p.cfg.PollMax, func(ctx context.Context) (bool, error) {
		inst, err := p.describeInstance(ctx, id)
		if isNotFound(err) && misses < 5 {
			misses++
			return false, nil
		}
		if err != nil {
			return false, err
		}
		st := inst.State.Name
		switch {
		case st == want:
			return true, nil
		case st == ec2types.InstanceStateNameTerminated, st == ec2types.InstanceStateNameShuttingDown && want != ec2types.InstanceStateNameTerminated:
			reason := ""
			if inst.StateReason != nil {
				reason = ": " + aws.ToString(inst.StateReason.Message)
			}
			return false, fmt.Errorf("aws: instance %s is %s, waiting for %s%s: %w", id, st, want, reason, errs.ErrFailedPrecondition)
		}
		return false, nil
	})
}

// ConsoleLog returns the instance's console output (GetConsoleOutput,
// the most recent output EC2 kept).
func (p *Provider) ConsoleLog(ctx context.Context, id core.VMID) (string, error) {
	out, err := p.ec2.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(string(id)), Latest: aws.Bool(true)})
	if err != nil {
		return "", wrap(err, "console output of %s", id)
	}
	if aws.ToString(out.Output) == "" {
		return "", nil
	}
	b, err := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
	if err != nil {
		return "", fmt.Errorf("aws: console output of %s: not base64: %w", id, errs.ErrCorrupt)
	}
	return string(b), nil
}
