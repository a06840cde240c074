package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/xenlab"
)

type labXenOptions struct {
	listen string
	data   string
	users  []string
	qemu   string
	noQEMU bool
	hosts  int
}

// newLabXenCommand is `ferry lab xen`: a XenServer-compatible lab server.
func newLabXenCommand(g *Globals) *cobra.Command {
	var o labXenOptions
	cmd := &cobra.Command{
		Use:   "xen --data DIR [--listen ADDR] [--user NAME:PASSWORD]...",
		Short: "Serve a XenServer-compatible lab: XAPI JSON-RPC and disk transfers over real state",
		Long: `Serve XAPI's JSON-RPC (POST /jsonrpc) and its HTTP handlers (/export_raw_vdi,
/import_raw_vdi, /export, /import) over a state directory that survives
restarts: a pool, an SR of VHD files, VMs, snapshots, tasks, events and
changed block tracking. With QEMU installed (qemu-system-x86_64), VM.start
boots a VM's bootable disk under TCG and GET /console?vm=REF (a lab-only
extension) returns its serial console.

With no --user and no user stored in DIR, a user "root" is generated and its
password printed once. $FERRY_LAB_XEN_USER (NAME:PASSWORD) stands for --user
and keeps the password off the command line. The server stops cleanly on
interrupt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			users := map[string]string{}
			if len(o.users) == 0 && os.Getenv(envLabXenUser) != "" {
				o.users = []string{os.Getenv(envLabXenUser)}
			}
			for _, u := range o.users {
				name, pw, ok := strings.Cut(u, ":")
				if !ok || name == "" {
					return fmt.Errorf("--user %q: want NAME:PASSWORD: %w", u, errs.ErrInvalidArgument)
				}
				users[name] = pw
			}
			qemu := o.qemu
			if qemu == "" && !o.noQEMU {
				qemu = xenlab.FindQEMU()
			}
			if o.noQEMU {
				qemu = ""
			}
			log := g.Logger
			if log == nil {
				log = slog.New(slog.DiscardHandler)
			}
			return xenlab.Run(cmd.Context(), xenlab.RunOptions{
				Options: xenlab.Options{Dir: o.data, Users: users, Logger: log, QEMU: qemu, Hosts: o.hosts},
				Listen:  o.listen,
				Stdout:  g.Stdout,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8480", "TCP address to serve on (port 0 picks a free one)")
	f.StringVar(&o.data, "data", "", "state directory, created if missing (required)")
	f.StringArrayVar(&o.users, "user", nil, "NAME:PASSWORD of a user who may log in (repeatable)")
	f.StringVar(&o.qemu, "qemu", "", "path of qemu-system-x86_64 (default: found on PATH)")
	f.BoolVar(&o.noQEMU, "no-qemu", false, "do not boot guests; track power states only")
	f.IntVar(&o.hosts, "hosts", 1, "hosts in a new pool: 1 or 2")
	cmd.MarkFlagRequired("data")
	return cmd
}
