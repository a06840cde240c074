package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/api/client"
	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/service"
)

type migrateOptions struct {
	from       string
	req        migrate.Request
	networkMap []string
	dryRun     bool
	detach     bool
}

func newMigrateCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	var o migrateOptions
	cmd := &cobra.Command{
		Use:   "migrate [SITE/]VM --to SITE [flags]",
		Short: "Move a VM to another site: XenServer pool → EC2 region, or back",
		Long: `Plan a cold migration, then run it as a resumable job on the server.

The plan checks the source VM (power state, disks, boot mode), the target's
limits and capacity, maps CPUs and memory to the cheapest instance type that
holds them (with its hourly and monthly price from the price table), and maps
networks; --dry-run prints it and stops. The job snapshots the VM, streams
each disk from the snapshot straight into the target (EBS direct snapshots,
or new VDIs through import_raw_vdi), verifies every 512 KiB block by SHA-256
against what it reads back from the target, creates the VM and starts it.
The source is left as it was. A cancelled job (ferry job cancel) removes
everything it created; after a crash of the server the job resumes and sends
only the blocks not yet committed.

VM is an ID or a name; without SITE/ (or --from), the inventory is searched.`,
		Example: `  ferry migrate lab-xen/sample-linux --to lab-aws --dry-run
  ferry migrate sample-linux --to lab-aws --instance-type auto
  ferry migrate lab-aws/i-0abc123 --to lab-xen --sr "Local storage" --network-map subnet-1=Pool-wide`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			req := o.req
			if req.Target == "" {
				return fmt.Errorf("no target site: give --to SITE: %w", errs.ErrInvalidArgument)
			}
			for _, m := range o.networkMap {
				src, dst, ok := strings.Cut(m, "=")
				if !ok || src == "" || dst == "" {
					return fmt.Errorf("--network-map %q: want SOURCE=TARGET: %w", m, errs.ErrInvalidArgument)
				}
				if req.NetworkMap == nil {
					req.NetworkMap = map[string]string{}
				}
				req.NetworkMap[src] = dst
			}
			if req.Source, req.VM, err = resolveVM(cmd.Context(), c, o.from, args[0]); err != nil {
				return err
			}
			if o.dryRun {
				plan, err := c.PlanMigration(cmd.Context(), req)
				if err != nil {
					return err
				}
				if r.json() {
					return writeJSON(g.Stdout, plan)
				}
				printPlan(g.Stdout, plan)
				return nil
			}
			acc, err := c.Migrate(cmd.Context(), req)
			if err != nil {
				return err
			}
			if r.json() && o.detach {
				return writeJSON(g.Stdout, acc)
			}
			if !r.json() {
				printPlan(g.Stdout, acc.Plan)
				fmt.Fprintf(g.Stdout, "job %s started (ferry job watch %s; ferry job cancel %s)\n", acc.Job.ID, acc.Job.ID, acc.Job.ID)
			}
			if o.detach {
				return nil
			}
			werr := watch(cmd.Context(), g, &r, c, acc.Job.ID)
			if j, err := c.Job(cmd.Context(), acc.Job.ID); err == nil && !r.json() {
				printMigrationResult(g.Stdout, j)
			}
			return werr
		},
	}
	r.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "the source site (instead of SITE/ in front of VM)")
	f.StringVar((*string)(&o.req.Target), "to", "", "the target site (required)")
	f.StringVar(&o.req.Name, "name", "", "the new VM's name (default the source VM's)")
	f.StringVar(&o.req.InstanceType, "instance-type", "auto", "EC2 targets: auto (cheapest type that holds the VM) or an instance type")
	f.StringVar(&o.req.Subnet, "subnet", "", "EC2 targets: the subnet ID (default the region's default subnet)")
	f.StringSliceVar(&o.req.SecurityGroups, "security-group", nil, "EC2 targets: security group IDs (repeatable)")
	f.StringArrayVar(&o.networkMap, "network-map", nil, "SOURCE=TARGET network mapping (repeatable; target: XenServer network UUID or name, EC2 subnet ID)")
	f.StringVar(&o.req.SR, "sr", "", "XenServer targets: the SR's UUID or name (default the pool's default SR)")
	f.StringVar(&o.req.Method, "method", "", "EC2 targets: ebs-direct (default) or s3-import")
	f.BoolVar(&o.req.NoStart, "no-start", false, "leave the new VM stopped")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan and stop")
	f.BoolVar(&o.detach, "detach", false, "start the job and return without following it")
	return cmd
}

// resolveVM finds the source site and VM: SITE/VM, --from, or a unique
// match (ID or name) in the inventory.
func resolveVM(ctx context.Context, c *client.Client, from, arg string) (core.SiteName, string, error) {
	if s, vm, ok := strings.Cut(arg, "/"); ok && s != "" && vm != "" && from == "" {
		return core.SiteName(s), vm, nil
	}
	if from != "" {
		return core.SiteName(from), arg, nil
	}
	rows, err := c.VMs(ctx, service.VMQuery{})
	if err != nil {
		return "", "", err
	}
	var found []service.VMRow
	for _, r := range rows {
		if string(r.ID) == arg || r.Name == arg {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return "", "", fmt.Errorf("VM %q: no VM in the inventory has that ID or name (give SITE/VM, or refresh the site): %w", arg, errs.ErrNotFound)
	case 1:
		return found[0].Site, string(found[0].ID), nil
	}
	var where []string
	for _, r := range found {
		where = append(where, fmt.Sprintf("%s/%s", r.Site, r.ID))
	}
	return "", "", fmt.Errorf("VM %q: %d VMs match (%s); give SITE/VM: %w", arg, len(found), strings.Join(where, ", "), errs.ErrInvalidArgument)
}

func printPlan(w io.Writer, p migrate.Plan) {
	fmt.Fprintf(w, "plan: %s/%s (%s) → %s, %s\n", p.Request.Source, p.VM.ID, p.VM.Name, p.Request.Target, p.Direction())
	fmt.Fprintf(w, "  vm:       %q, %d vCPU, %s memory, %s, %s, firmware %s\n", p.Name, p.VM.CPUs, progress.HumanBytes(p.VM.MemoryBytes),
		p.VM.PowerState, plural(len(p.Disks), "disk"), firstOf(string(p.VM.Firmware), "bios"))
	for _, d := range p.Disks {
		boot := ""
		if d.Bootable {
			boot = ", boot"
		}
		fmt.Fprintf(w, "  disk %d:   %s (%s) %s → %s on the target%s\n", d.Position, d.Name, d.ID, progress.HumanBytes(d.Size), progress.HumanBytes(d.TargetSize), boot)
	}
	if p.Instance != nil {
		price := "price unknown"
		if p.Instance.Monthly > 0 {
			price = fmt.Sprintf("%.4f %s/hour, %.2f %s/month", p.Instance.Hourly, p.Instance.Currency, p.Instance.Monthly, p.Instance.Currency)
		}
		fmt.Fprintf(w, "  instance: %s (%d vCPU, %d MiB) in %s, %s\n", p.Instance.Type, p.Instance.VCPUs, p.Instance.MemoryMiB, p.Region, price)
	}
	for _, n := range p.Networks {
		fmt.Fprintf(w, "  nic %d:    %s → %s\n", n.NIC, firstOf(n.Source, "-"), firstOf(n.TargetName, n.Target, "default"))
	}
	if len(p.SecurityGroups) > 0 {
		fmt.Fprintf(w, "  groups:   %s\n", strings.Join(p.SecurityGroups, ", "))
	}
	fmt.Fprintf(w, "  method:   %s; storage %s; start after: %v\n", p.Method, firstOf(p.Storage, "default"), p.Start)
	for _, x := range p.Warnings {
		fmt.Fprintf(w, "  warning:  %s\n", x)
	}
}

func plural(n int, s string) string {
	if n == 1 {
		return "1 " + s
	}
	return fmt.Sprintf("%d %ss", n, s)
}

// printMigrationResult prints what a migration moved and its
// verification.
func printMigrationResult(w io.Writer, j job.Job) {
	if j.Kind != migrate.KindName || len(j.Result) == 0 || string(j.Result) == "null" {
		return
	}
	var r migrate.Result
	if err := json.Unmarshal(j.Result, &r); err != nil {
		return
	}
	fmt.Fprintf(w, "migrated: %s → %s/%s", r.Source, r.Target, r.TargetVM)
	if r.InstanceType != "" {
		fmt.Fprintf(w, " (%s, %.2f/month)", r.InstanceType, r.Monthly)
	}
	fmt.Fprintln(w)
	ratio := 0.0
	if r.DiskBytes > 0 {
		ratio = 100 * float64(r.BytesSent) / float64(r.DiskBytes)
	}
	mbps := 0.0
	if r.TransferSecs > 0 {
		mbps = float64(r.BytesRead) / 1e6 / r.TransferSecs
	}
	fmt.Fprintf(w, "  moved:    %s of data sent for %s of disk (%.1f%%); transfer %.1f s (%.0f MB/s of data), job %.1f s\n",
		progress.HumanBytes(r.BytesSent), progress.HumanBytes(r.DiskBytes), ratio, r.TransferSecs, mbps, r.Seconds)
	for _, v := range r.Verification {
		verdict := "OK"
		if !v.OK {
			verdict = fmt.Sprintf("FAILED: %d blocks differ, first %d", v.Mismatches, v.FirstMismatch)
		}
		fmt.Fprintf(w, "  verified: %s → %s: %d blocks of %s checked by SHA-256 (source checksums: %d from the transfer, %d read again; %d only on the target, as zeros), %s read back; digest %.16s… %s\n",
			v.Disk, v.Target, v.Blocks, progress.HumanBytes(v.BlockSize), v.FromTransfer, v.Reread, v.TargetOnly, progress.HumanBytes(v.BytesReadBack), v.TargetDigest, verdict)
	}
}
