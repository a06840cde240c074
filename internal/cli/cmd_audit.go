package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/audit"
)

func newAuditCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the hash-chained audit log",
	}
	r.add(cmd)
	cmd.AddCommand(newAuditListCommand(g, &r), newAuditVerifyCommand(g, &r))
	return cmd
}

func newAuditListCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var after int64
	var limit int
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List audit entries in order",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			list, err := c.Audit(cmd.Context(), after, limit)
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, list)
			}
			tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tOUTCOME")
			for _, e := range list {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format("2006-01-02 15:04:05"), e.Actor, e.Action, e.Target, e.Outcome)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Int64Var(&after, "after", 0, "entries after this sequence number")
	cmd.Flags().IntVar(&limit, "limit", 1000, "at most this many entries")
	return cmd
}

func newAuditVerifyCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var data dataOptions
	var offline bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit log's hash chain (exit 1 when it is broken)",
		Long: `Recompute the hash chain of the audit log and name the first row that was
edited, inserted or removed. By default the server checks its database; with
--offline (or an explicit --data or --database), ferry reads the data
directory (or the database) itself.`,
		Example: `  ferry audit verify
  ferry audit verify --offline --data /var/lib/ferry`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rep audit.Report
			if offline || cmd.Flags().Changed("data") || cmd.Flags().Changed("database") {
				st, _, err := data.open(cmd.Context(), g)
				if err != nil {
					return err
				}
				defer st.Close()
				if rep, err = audit.Verify(cmd.Context(), st); err != nil {
					return err
				}
			} else {
				c, err := r.client()
				if err != nil {
					return err
				}
				if rep, err = c.VerifyAudit(cmd.Context()); err != nil {
					return err
				}
			}
			if r.json() {
				if err := writeJSON(g.Stdout, rep); err != nil {
					return err
				}
			} else if rep.OK {
				fmt.Fprintf(g.Stdout, "audit log intact: %d entries, head %d %s\n", rep.Rows, rep.HeadSeq, rep.HeadHash)
			}
			if !rep.OK {
				return &exitError{code: 1, err: fmt.Errorf("audit log broken at entry %d: %s", rep.FirstBad, rep.Problem)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&offline, "offline", false, "read the data directory or --database directly instead of asking the server")
	data.add(cmd)
	return cmd
}
