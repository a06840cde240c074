package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
)

func TestPowerState(t *testing.T) {
	for in, want := range map[ec2types.InstanceStateName]core.PowerState{
		"pending": core.Pending, "running": core.Running, "stopping": core.Pending, "stopped": core.Halted,
		"shutting-down": core.Pending, "terminated": core.Unknown, "weird": core.Unknown,
	} {
		if got := powerState(in); got != want {
			t.Errorf("powerState(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestPickInstanceType(t *testing.T) {
	tests := []struct {
		cpus int
		mem  int64
		want string
	}{
		{1, 256 << 20, "t3.nano"},
		{2, 512 << 20, "t3.nano"},
		{2, 513 << 20, "t3.micro"},
		{1, 4 << 30, "t3.medium"},
		{4, 1 << 30, "t3.xlarge"},
		{12, 8 << 30, "m5.4xlarge"},
		{500, 1 << 40, "m5.24xlarge"},
	}
	for _, tt := range tests {
		if got := pickInstanceType(tt.cpus, tt.mem); got != tt.want {
			t.Errorf("pickInstanceType(%d, %d) = %s, want %s", tt.cpus, tt.mem, got, tt.want)
		}
	}
}

func TestDeviceNames(t *testing.T) {
	p := &Provider{cfg: Config{RootDevice: "/dev/xvda"}}
	if got := strings.Join(p.deviceNames(3), " "); got != "/dev/xvda /dev/xvdb /dev/xvdc" {
		t.Fatal(got)
	}
	p.cfg.RootDevice = "/dev/sda1"
	if got := strings.Join(p.deviceNames(2), " "); got != "/dev/sda1 /dev/sdb" {
		t.Fatal(got)
	}
}

func TestTags(t *testing.T) {
	tags := ferryTags(map[string]string{TagJob: "j1", "b": "2"})
	if tags[TagManaged] != "true" || tags[TagJob] != "j1" {
		t.Fatal(tags)
	}
	specs := tagSpecs(tags, ec2types.ResourceTypeSnapshot, ec2types.ResourceTypeImage)
	if len(specs) != 2 || len(specs[0].Tags) != 3 || *specs[0].Tags[0].Key != "b" {
		t.Fatalf("%+v", specs)
	}
	if m := tagMap(specs[1].Tags); m[TagJob] != "j1" || len(m) != 3 {
		t.Fatal(m)
	}
}

func TestSecretRedacted(t *testing.T) {
	s := Secret("hunter2-secret")
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "secret", s)
	js, _ := json.Marshal(struct{ S Secret }{s})
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %s %q %#v %+v", s, s, s, s, s), b.String(), string(js)} {
		if strings.Contains(out, "hunter2") {
			t.Fatalf("secret printed: %s", out)
		}
	}
	if s.Reveal() != "hunter2-secret" {
		t.Fatal("Reveal")
	}
}

func TestOpenValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want errs.Code
	}{
		{"bad endpoint", Config{Region: "us-east-1", Endpoint: "ftp://x", AccessKey: "a", SecretKey: "b"}, errs.InvalidArgument},
		{"half keys", Config{Region: "us-east-1", AccessKey: "a"}, errs.InvalidArgument},
		{"bad root device", Config{Region: "us-east-1", RootDevice: "/dev/hda", AccessKey: "a", SecretKey: "b"}, errs.InvalidArgument},
		{"unknown profile", Config{Region: "us-east-1", Profile: "ferry-no-such-profile"}, errs.InvalidArgument},
	}
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/credentials")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(t.Context(), tt.cfg, nil)
			if errs.CodeOf(err) != tt.want {
				t.Fatalf("%v, want %v", err, tt.want)
			}
		})
	}
	p, err := Open(t.Context(), Config{Region: "eu-west-1", AccessKey: "a", SecretKey: "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	info := p.Info()
	if info.Name != "aws-eu-west-1" || info.Kind != "aws" || info.Region != "eu-west-1" || info.Endpoint != "https://ec2.eu-west-1.amazonaws.com" || !info.Capabilities.ChangedBlocks {
		t.Fatalf("%+v", info)
	}
}

func TestAMIName(t *testing.T) {
	if got := strings.Map(amiNameChar, "web server #1 (prod)/ü"); got != "web server -1 (prod)/-" {
		t.Fatal(got)
	}
}

func TestRetryer(t *testing.T) {
	r := newRetryer(5)
	if r.MaxAttempts() != 5 {
		t.Fatal(r.MaxAttempts())
	}
	apiErr := func(code string) error {
		return &smithy.OperationError{OperationName: "X", Err: &smithy.GenericAPIError{Code: code}}
	}
	for code, want := range map[string]bool{
		"RequestLimitExceeded": true, "Throttling": true, "SlowDown": true, "RequestThrottledException": true, "InternalError": true,
		"AuthFailure": false, "InvalidClientTokenId": false, "SignatureDoesNotMatch": false, "ValidationException": false,
		"InvalidInstanceID.NotFound": false, "IncorrectState": false,
	} {
		if got := r.IsErrorRetryable(apiErr(code)); got != want {
			t.Errorf("%s retryable = %v, want %v", code, got, want)
		}
	}
	if r.IsErrorRetryable(fmt.Errorf("x: %w", context.Canceled)) {
		t.Error("a cancellation is retried")
	}
}
