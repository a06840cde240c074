package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

func TestLabAWSCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb lockedBuffer
	g := &Globals{Stdout: &out, Stderr: &errb}
	cmd := newLabAWSCommand(g)
	cmd.SetArgs([]string{"--data", t.TempDir(), "--listen", "127.0.0.1:0", "--no-qemu"})
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	addrRE := regexp.MustCompile(`aws lab serving region us-east-1 on http://(\S+) `)
	keysRE := regexp.MustCompile(`generated access key (\S+) and secret key (\S+) `)
	deadline := time.Now().Add(30 * time.Second)
	var addr, ak, sk string
	for addr == "" || ak == "" {
		if time.Now().After(deadline) {
			t.Fatalf("command did not start: %q %q", out.String(), errb.String())
		}
		select {
		case err := <-done:
			t.Fatalf("command ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if m := addrRE.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
		if m := keysRE.FindStringSubmatch(out.String()); m != nil {
			ak, sk = m[1], m[2]
		}
	}
	body := "Action=DescribeRegions&Version=2016-11-15"
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	sum := sha256.Sum256([]byte(body))
	if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: ak, SecretAccessKey: sk}, req, hex.EncodeToString(sum[:]), "ec2", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte("<regionName>us-east-1</regionName>")) {
		t.Fatalf("DescribeRegions with the generated keys: %s %s", resp.Status, b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("command: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("command did not stop on cancel")
	}
}

func TestLabAWSCommandFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no data", []string{"--listen", "127.0.0.1:0"}, `"data" not set`},
		{"key without secret", []string{"--data", t.TempDir(), "--access-key", "AKIAFERRYLABTEST0001"}, "go together"},
		{"bad region", []string{"--data", t.TempDir(), "--region", "Mars", "--listen", "127.0.0.1:0"}, "not a region name"},
		{"negative delay", []string{"--data", t.TempDir(), "--delay", "-1s"}, "--delay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newLabAWSCommand(&Globals{Stdout: &out, Stderr: &out})
			cmd.SetArgs(tt.args)
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			err := cmd.ExecuteContext(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}
