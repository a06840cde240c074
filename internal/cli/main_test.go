package cli

import (
	"context"
	"os"
	"testing"
)

// TestMain lets tests run this test binary as the ferry command: with
// FERRY_TEST_MAIN=1 it runs the command line and exits.
func TestMain(m *testing.M) {
	if os.Getenv("FERRY_TEST_MAIN") == "1" {
		os.Exit(Execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
