package awslab

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// TestAWSCLI checks responses with a second, independent client: the AWS
// CLI (botocore), when it is installed (Debian package awscli).
func TestAWSCLI(t *testing.T) {
	bin, err := exec.LookPath("aws")
	if err != nil {
		t.Skip("the AWS CLI is not installed (Debian package awscli)")
	}
	if testing.Short() {
		t.Skip("the AWS CLI takes a second per call")
	}
	l := newTestLab(t, "")
	ctx := t.Context()
	ami, snap := l.registerTestImage(ctx, "cli image")
	run := must[*ec2.RunInstancesOutput](t)(l.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String(ami), MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}))
	home := t.TempDir()
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoint-url", l.hs.URL, "--output", "json"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+home, "AWS_ACCESS_KEY_ID="+testAccessKey, "AWS_SECRET_ACCESS_KEY="+testSecretKey,
			"AWS_DEFAULT_REGION=us-east-1", "AWS_CONFIG_FILE="+filepath.Join(home, "none"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(home, "none"),
			"AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var di struct {
		Reservations []struct {
			Instances []struct {
				InstanceId string
				State      struct{ Name string }
			}
		}
	}
	if err := json.Unmarshal([]byte(cli("ec2", "describe-instances")), &di); err != nil {
		t.Fatal(err)
	}
	if len(di.Reservations) != 1 || di.Reservations[0].Instances[0].InstanceId != *run.Instances[0].InstanceId {
		t.Fatalf("describe-instances: %+v", di)
	}
	var imgs struct {
		Images []struct{ ImageId, Name string }
	}
	json.Unmarshal([]byte(cli("ec2", "describe-images", "--owners", "self", "--filters", "Name=name,Values=cli*")), &imgs)
	if len(imgs.Images) != 1 || imgs.Images[0].ImageId != ami {
		t.Fatalf("describe-images: %+v", imgs)
	}
	var blocks struct{ Blocks []struct{ BlockIndex int } }
	json.Unmarshal([]byte(cli("ebs", "list-snapshot-blocks", "--snapshot-id", snap)), &blocks)
	if len(blocks.Blocks) != 2 || blocks.Blocks[1].BlockIndex != 5 {
		t.Fatalf("list-snapshot-blocks: %+v", blocks)
	}
	file := filepath.Join(t.TempDir(), "up.bin")
	os.WriteFile(file, pattern(9<<20, 4), 0o644)
	cli("s3", "mb", "s3://cli-bucket")
	cli("s3", "cp", "--only-show-errors", file, "s3://cli-bucket/dir/up.bin")
	ls := cli("s3", "ls", "s3://cli-bucket/dir/")
	if !strings.Contains(ls, "9437184 up.bin") {
		t.Fatalf("s3 ls: %q", ls)
	}
	back := filepath.Join(t.TempDir(), "down.bin")
	cli("s3", "cp", "--only-show-errors", "s3://cli-bucket/dir/up.bin", back)
	a, _ := os.ReadFile(file)
	b, _ := os.ReadFile(back)
	if string(a) != string(b) {
		t.Fatal("s3 cp round trip differs")
	}
	if out := cli("s3", "ls"); !strings.Contains(out, "cli-bucket") {
		t.Fatalf("s3 ls: %q", out)
	}
}
