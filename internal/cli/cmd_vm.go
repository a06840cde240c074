package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/service"
)

func newVMCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "The VM inventory across every site",
	}
	r.add(cmd)
	cmd.AddCommand(newVMListCommand(g, &r), newVMShowCommand(g, &r), newVMPowerCommand(g, &r), newVMConsoleCommand(g, &r))
	return cmd
}

func newVMListCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var q service.VMQuery
	var site, power string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs of every site with their estimated monthly cost",
		Example: `  ferry vm ls
  ferry vm ls --site dc1 --power running --name 'web-*'
  ferry vm ls -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			q.Site, q.Power = core.SiteName(site), core.PowerState(power)
			rows, err := c.VMs(cmd.Context(), q)
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, rows)
			}
			tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SITE\tNAME\tPOWER\tCPUS\tMEMORY\tDISKS\tEST. MONTHLY COST")
			var total float64
			for _, v := range rows {
				var size int64
				for _, d := range v.Disks {
					size += d.Size
				}
				cost := "-"
				if v.MonthlyCost != nil {
					cost = fmt.Sprintf("$%.2f", *v.MonthlyCost)
					total += *v.MonthlyCost
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d (%s)\t%s\n", v.Site, v.Name, v.PowerState, v.CPUs, progress.HumanBytes(v.MemoryBytes), len(v.Disks), progress.HumanBytes(size), cost)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(g.Stdout, "%d VMs, estimated $%.2f a month\n", len(rows), total)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&site, "site", "", "only VMs of this site")
	f.StringVar(&power, "power", "", "only VMs in this power state (running, halted, suspended, paused)")
	f.StringVar(&q.Name, "name", "", "only VMs whose name matches this glob")
	return cmd
}

func newVMShowCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show SITE VM-ID",
		Short: "Show one VM as its site last reported it",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			v, err := c.VM(cmd.Context(), core.SiteName(args[0]), core.VMID(args[1]))
			if err != nil {
				return err
			}
			return writeJSON(g.Stdout, v)
		},
	}
}

func newVMConsoleCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "console SITE VM-ID",
		Short: "Print what a VM wrote on its serial console (where the site keeps it)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			text, err := c.Console(cmd.Context(), core.SiteName(args[0]), core.VMID(args[1]))
			if err != nil {
				return err
			}
			fmt.Fprint(g.Stdout, text)
			return nil
		},
	}
}

func newVMPowerCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:       "power SITE VM-ID start|shutdown|stop|reboot",
		Short:     "Change a VM's power state",
		Args:      cobra.ExactArgs(3),
		ValidArgs: []string{"start", "shutdown", "stop", "reboot"},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			vm, err := c.Power(cmd.Context(), core.SiteName(args[0]), core.VMID(args[1]), provider.PowerOp(args[2]))
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, vm)
			}
			fmt.Fprintf(g.Stdout, "%s/%s (%s): %s\n", vm.Site, vm.ID, vm.Name, vm.PowerState)
			return nil
		},
	}
}
