package cli

import "github.com/spf13/cobra"

func newLabCommand(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run lab servers that speak XenServer's and EC2's APIs over real local state",
		Long: `The lab serves the same APIs as a XenServer pool (XAPI JSON-RPC and its HTTP
disk handlers) and an AWS region (EC2, EBS direct, S3), over real, persistent
state in a local directory: disk files, and QEMU guests when QEMU is
installed. ferry's providers talk to the lab exactly as they talk to real
pools and regions, so everything can be tried and tested on one machine.

'ferry lab up' starts both with a control plane that has them as sites and
a small Linux VM in the pool; 'ferry lab down' stops them.`,
	}
	cmd.AddCommand(newLabUpCommand(g), newLabDownCommand(g), newLabStatusCommand(g), newLabXenCommand(g), newLabAWSCommand(g))
	return cmd
}
