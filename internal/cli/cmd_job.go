package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/api/client"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/store"
)

func newJobCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	cmd := &cobra.Command{
		Use:   "job",
		Short: "List, follow, cancel and retry durable jobs",
	}
	r.add(cmd)
	cmd.AddCommand(newJobListCommand(g, &r), newJobShowCommand(g, &r), newJobWatchCommand(g, &r), newJobCancelCommand(g, &r),
		newJobRetryCommand(g, &r), newJobSubmitCommand(g, &r))
	return cmd
}

func newJobListCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var o job.ListOptions
	var state string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List jobs, newest first",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			if state != "" {
				o.States = strings.Split(state, ",")
			}
			list, err := c.Jobs(cmd.Context(), o)
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, list)
			}
			tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tSTATE\tPROGRESS\tCREATED\tBY")
			for _, j := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.State, progressText(j), j.Created.Local().Format("2006-01-02 15:04:05"), firstOf(j.CreatedBy, "-"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only jobs in these states (comma-separated: queued,running,canceling,succeeded,failed,canceled)")
	cmd.Flags().StringVar(&o.Kind, "kind", "", "only jobs of this kind")
	cmd.Flags().IntVar(&o.Limit, "limit", 50, "at most this many jobs")
	return cmd
}

func progressText(j job.Job) string {
	p := j.Progress
	if p == nil {
		return "-"
	}
	s := ""
	if p.Steps > 0 {
		s = fmt.Sprintf("step %d/%d", min(p.Step+1, p.Steps), p.Steps)
	}
	if p.Phase != "" {
		s += " " + p.Phase
	}
	if p.Total > 0 {
		s += fmt.Sprintf(" %.0f%%", 100*float64(p.Done)/float64(p.Total))
	} else if p.Done > 0 {
		s += " " + progress.HumanBytes(p.Done)
	}
	return strings.TrimSpace(s)
}

func printJob(g *Globals, j job.Job) {
	fmt.Fprintf(g.Stdout, "job %s (%s): %s\n", j.ID, j.Kind, j.State)
	if len(j.Steps) > 0 {
		fmt.Fprintf(g.Stdout, "  steps:    %s\n", strings.Join(j.Steps, " → "))
	}
	fmt.Fprintf(g.Stdout, "  progress: %s\n", progressText(j))
	fmt.Fprintf(g.Stdout, "  created:  %s by %s\n", j.Created.Local().Format(time.RFC3339), firstOf(j.CreatedBy, "-"))
	if j.Owner != "" {
		fmt.Fprintf(g.Stdout, "  worker:   %s (attempt %d)\n", j.Owner, j.Attempt)
	}
	if j.Error != "" {
		fmt.Fprintf(g.Stdout, "  error:    %s (%s)\n", j.Error, j.ErrorCode)
	}
	if j.Kind == migrate.KindName {
		printMigrationResult(g.Stdout, j)
		return
	}
	if len(j.Result) > 0 && string(j.Result) != "null" {
		fmt.Fprintf(g.Stdout, "  result:   %s\n", j.Result)
	}
}

func newJobShowCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			j, err := c.Job(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, j)
			}
			printJob(g, j)
			return nil
		},
	}
}

// watch follows a job's events until it finishes and returns the job; a
// job that did not succeed is an exit-1 error.
func watch(ctx context.Context, g *Globals, r *remoteOptions, c *client.Client, id string) error {
	// On a terminal, progress is one bar redrawn in place; elsewhere
	// every event is a line.
	bar := isTerminal(g.Stdout) && !r.json()
	drawn := false
	start := time.Now()
	err := c.JobEvents(ctx, id, 0, func(ev client.Event) error {
		if r.json() {
			fmt.Fprintf(g.Stdout, "%s\n", ev.Data)
			return nil
		}
		var e store.Event
		json.Unmarshal(ev.Data, &e)
		ts := e.Time.Local().Format("15:04:05")
		switch {
		case e.Kind == "progress" && bar:
			var p job.Progress
			json.Unmarshal(e.Payload, &p)
			phase := p.Phase
			if p.Steps > 0 {
				phase = fmt.Sprintf("step %d/%d %s", min(p.Step+1, p.Steps), p.Steps, p.Phase)
			}
			fmt.Fprint(g.Stdout, "\r\x1b[K"+progress.Render(progress.Snapshot{Phase: phase, Done: p.Done, Total: p.Total}, time.Since(start), 30))
			drawn = true
		case e.Kind == "progress":
			var p job.Progress
			json.Unmarshal(e.Payload, &p)
			fmt.Fprintf(g.Stdout, "%s  progress  %s\n", ts, progressText(job.Job{Progress: &p}))
		default:
			if drawn {
				fmt.Fprint(g.Stdout, "\r\x1b[K")
				drawn = false
			}
			fmt.Fprintf(g.Stdout, "%s  %-9s %s\n", ts, e.Kind, e.Payload)
		}
		return nil
	})
	if drawn {
		fmt.Fprintln(g.Stdout)
	}
	if err != nil {
		return err
	}
	j, err := c.Job(ctx, id)
	if err != nil {
		return err
	}
	if !r.json() {
		fmt.Fprintf(g.Stdout, "job %s %s\n", j.ID, j.State)
	}
	if j.State != store.JobSucceeded {
		return &exitError{code: 1, err: fmt.Errorf("job %s %s: %s", j.ID, j.State, j.Error)}
	}
	return nil
}

func newJobWatchCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a job's events until it finishes (exit 1 unless it succeeds)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			return watch(cmd.Context(), g, r, c, args[0])
		},
	}
}

func newJobCancelCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job; the steps it completed are undone",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			j, err := c.CancelJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if wait && !store.JobTerminal(j.State) {
				err := watch(cmd.Context(), g, r, c, j.ID)
				var ee *exitError
				if err != nil && !(errorsAs(err, &ee) && strings.Contains(ee.Error(), store.JobCanceled)) {
					return err
				}
				return nil
			}
			if r.json() {
				return writeJSON(g.Stdout, j)
			}
			fmt.Fprintf(g.Stdout, "job %s: %s\n", j.ID, j.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the job has stopped and undone its steps")
	return cmd
}

func newJobRetryCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "retry ID",
		Short: "Run a failed or cancelled job again from the start",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			j, err := c.RetryJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, j)
			}
			fmt.Fprintf(g.Stdout, "job %s: %s\n", j.ID, j.State)
			return nil
		},
	}
}

func newJobSubmitCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var args string
	var follow bool
	cmd := &cobra.Command{
		Use:     "submit KIND [--args JSON]",
		Short:   "Start a job of a kind the server knows (ferry serve's health lists them)",
		Example: `  ferry job submit image.convert --args '{"src":"disk.vhd","dst":"disk.qcow2","dst_format":"qcow2"}' --watch`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			if args != "" && !json.Valid([]byte(args)) {
				return fmt.Errorf("--args is not JSON: %w", errs.ErrInvalidArgument)
			}
			j, err := c.Submit(cmd.Context(), api.SubmitJobRequest{Kind: a[0], Args: json.RawMessage(args)})
			if err != nil {
				return err
			}
			if follow {
				return watch(cmd.Context(), g, r, c, j.ID)
			}
			if r.json() {
				return writeJSON(g.Stdout, j)
			}
			fmt.Fprintf(g.Stdout, "job %s queued\n", j.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&args, "args", "", "the job's arguments (JSON)")
	cmd.Flags().BoolVar(&follow, "watch", false, "follow the job until it finishes")
	return cmd
}
