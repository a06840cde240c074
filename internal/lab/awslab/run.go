package awslab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// RunOptions configure Run.
type RunOptions struct {
	Options
	// Listen is the TCP address to serve on, e.g. 127.0.0.1:8490; port 0
	// picks a free one.
	Listen string
	// Stdout receives the endpoint and, when the key pair was generated,
	// the keys (printed once: later starts reuse them from Dir).
	Stdout io.Writer
	// Ready, if set, is called with the address once the lab serves.
	Ready func(addr string)
}

// Run serves a lab region until ctx is done, then stops it cleanly.
func Run(ctx context.Context, o RunOptions) error {
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	lab, err := New(ctx, o.Options)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		lab.Close()
		return fmt.Errorf("aws lab: listen on %s: %w", o.Listen, err)
	}
	addr := ln.Addr().String()
	ak, sk := lab.Credentials()
	if lab.Generated() {
		fmt.Fprintf(o.Stdout, "generated access key %s and secret key %s (shown once; stored in %s; pass --access-key and --secret-key to choose)\n", ak, sk.Reveal(), lab.dir)
	}
	fmt.Fprintf(o.Stdout, "aws lab serving region %s on http://%s (EC2, EBS direct and path-style S3 on this one endpoint), access key %s, state in %s\n", lab.Region(), addr, ak, lab.dir)
	if o.Ready != nil {
		o.Ready(addr)
	}
	err = labkit.Serve(ctx, ln, lab.Handler(), nil)
	return errors.Join(err, lab.Close())
}
