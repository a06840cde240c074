// Command ferry is the hybrid-cloud VM mobility tool. See `ferry --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-project/ferry/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
