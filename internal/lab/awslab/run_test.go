package awslab

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	keysRE := regexp.MustCompile(`generated access key (\S+) and secret key (\S+) `)
	for round := range 2 {
		ctx, cancel := context.WithCancel(t.Context())
		var out syncBuffer
		ready := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, RunOptions{Options: Options{Dir: dir}, Listen: "127.0.0.1:0", Stdout: &out, Ready: func(a string) { ready <- a }})
		}()
		var addr string
		select {
		case addr = <-ready:
		case err := <-done:
			t.Fatal(err)
		}
		m := keysRE.FindStringSubmatch(out.String())
		if round == 0 && m == nil {
			t.Fatalf("no generated keys in %q", out.String())
		}
		if round == 1 {
			if m != nil || strings.Contains(out.String(), "secret") {
				t.Fatalf("the second start printed the secret again: %q", out.String())
			}
		} else {
			e, _, _ := clients("http://"+addr, m[1], m[2], nil)
			if _, err := e.DescribeRegions(ctx, &ec2.DescribeRegionsInput{}); err != nil {
				t.Fatalf("a call with the generated keys: %v", err)
			}
		}
		if !strings.Contains(out.String(), "aws lab serving region us-east-1 on http://"+addr) {
			t.Fatalf("output %q", out.String())
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not stop on cancel")
		}
	}
}
