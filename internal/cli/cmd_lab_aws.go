package cli

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/awslab"
)

type labAWSOptions struct {
	listen    string
	data      string
	accessKey string
	secretKey string
	region    string
	qemu      string
	noQEMU    bool
	delay     time.Duration
}

// newLabAWSCommand is `ferry lab aws`: an EC2-compatible lab region.
func newLabAWSCommand(g *Globals) *cobra.Command {
	var o labAWSOptions
	cmd := &cobra.Command{
		Use:   "aws --data DIR [--listen ADDR] [--access-key KEY --secret-key SECRET] [--region REGION]",
		Short: "Serve an EC2-compatible lab region: EC2, EBS direct APIs and S3 over real state",
		Long: `Serve one region on one endpoint: EC2's Query API (instances, AMIs,
snapshots, volumes, tags, VM import and export), the EBS direct APIs
(/snapshots...) and S3 in path style, told apart by the service in each
request's SigV4 signature, which is checked against the one key pair the
lab accepts. State lives in DIR and survives restarts: snapshot blocks in
a content-addressed store, volumes as sparse raw files, S3 objects as files.
Imports really convert (VMDK, VHD, VHDX, raw, OVA) and exports really write
(VMDK, VHD, raw, OVA). With QEMU installed (qemu-system-x86_64) a running
instance boots its root volume under TCG and GetConsoleOutput returns its
serial console.

With no keys given and none stored in DIR, a pair is generated and printed
once. $FERRY_LAB_AWS_SECRET_KEY stands for --secret-key and keeps the secret
off the command line. Point a client at the endpoint with path-style S3
addressing, e.g.
  aws --endpoint-url http://ADDR ec2 describe-instances
The server stops cleanly on interrupt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.secretKey == "" {
				o.secretKey = os.Getenv(envLabAWSSecret)
			}
			if (o.accessKey == "") != (o.secretKey == "") {
				return fmt.Errorf("--access-key and --secret-key go together: %w", errs.ErrInvalidArgument)
			}
			if o.delay < 0 {
				return fmt.Errorf("--delay %v: want a duration of 0 or more: %w", o.delay, errs.ErrInvalidArgument)
			}
			qemu := o.qemu
			if qemu == "" && !o.noQEMU {
				qemu = awslab.FindQEMU()
			}
			if o.noQEMU {
				qemu = ""
			}
			delay := o.delay
			if delay == 0 && cmd.Flags().Changed("delay") {
				delay = -1 // no minimum
			}
			log := g.Logger
			if log == nil {
				log = slog.New(slog.DiscardHandler)
			}
			return awslab.Run(cmd.Context(), awslab.RunOptions{
				Options: awslab.Options{Dir: o.data, AccessKey: o.accessKey, SecretKey: o.secretKey, Region: o.region,
					Logger: log, QEMU: qemu, Delay: delay},
				Listen: o.listen,
				Stdout: g.Stdout,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8490", "TCP address to serve on (port 0 picks a free one)")
	f.StringVar(&o.data, "data", "", "state directory, created if missing (required)")
	f.StringVar(&o.accessKey, "access-key", "", "the access key ID clients sign with (default: the stored or a generated one)")
	f.StringVar(&o.secretKey, "secret-key", "", "the secret access key that goes with --access-key")
	f.StringVar(&o.region, "region", "us-east-1", "the region served; requests signed for another are refused")
	f.StringVar(&o.qemu, "qemu", "", "path of qemu-system-x86_64 (default: found on PATH)")
	f.BoolVar(&o.noQEMU, "no-qemu", false, "do not boot instances; track their states only")
	f.DurationVar(&o.delay, "delay", 2*time.Second, "how long transitional states (pending, stopping, creating...) last at least; 0 for none")
	cmd.MarkFlagRequired("data")
	return cmd
}
