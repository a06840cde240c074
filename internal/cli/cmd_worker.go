package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/metrics"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

type workerOptions struct {
	data          dataOptions
	workers       int
	leaseTTL      time.Duration
	metricsListen string
	keyFile       string
}

func newWorkerCommand(g *Globals) *cobra.Command {
	var o workerOptions
	cmd := &cobra.Command{
		Use:   "worker --database postgres://...",
		Short: "Run jobs from a shared PostgreSQL database (scale-out)",
		Long: `Take jobs from the PostgreSQL database that ferry serve uses and run them.
Start any number of workers, on any hosts: each job runs on one of them at a
time, and a job whose worker dies resumes on another from its last
checkpoint once the worker's lease (--lease) expires.

With SQLite (one node), ferry serve runs the jobs itself.`,
		Example: `  ferry worker --database postgres://ferry@db.example/ferry --workers 8`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWorker(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.data.database, "database", "", "PostgreSQL URL shared with ferry serve ($FERRY_DATABASE)")
	f.StringVar(&o.data.dir, "data", "", "data directory (only for the images directory, DATA/images)")
	f.IntVar(&o.workers, "workers", 4, "jobs run at once by this process")
	f.StringVar(&o.keyFile, "key-file", "", "the server's secret key (or $"+site.KeyEnv+"), to reach sites in migrations")
	f.DurationVar(&o.leaseTTL, "lease", 30*time.Second, "job lease: how soon a job of a dead worker resumes elsewhere")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this address (/metrics)")
	return cmd
}

func runWorker(ctx context.Context, g *Globals, o workerOptions) error {
	o.data.database = firstOf(o.data.database, os.Getenv("FERRY_DATABASE"))
	loc, err := store.ParseLocation("", o.data.database)
	if err != nil || loc.Dialect != store.Postgres {
		return fmt.Errorf("worker needs --database postgres://... (with SQLite, ferry serve runs the jobs): %w", errs.ErrInvalidArgument)
	}
	st, err := store.Open(ctx, loc, &store.Options{Logger: g.Logger})
	if err != nil {
		return err
	}
	defer st.Close()
	m := metrics.New(metrics.Sources{Store: st})
	imagesDir := ""
	if o.data.dir != "" {
		imagesDir = o.data.dir + "/images"
	}
	// Migrations need the sites' credentials, sealed under the server's
	// key: without it this worker runs conversions only.
	var sites migrate.Sites // nil: migrations fail saying the key is missing
	if o.keyFile != "" || os.Getenv(site.KeyEnv) != "" {
		key, _, err := site.LoadKey(o.keyFile, os.Getenv(site.KeyEnv), "")
		if err != nil {
			return err
		}
		mgr := site.NewManager(st, site.Kinds(), site.NewSealer(key), &site.Options{Logger: g.Logger})
		defer mgr.Close()
		sites = mgr
	}
	reg := job.NewRegistry()
	service.RegisterJobKinds(reg, g.Images, imagesDir, sites)
	jm, err := job.Open(ctx, loc, st, reg, &job.Options{Logger: g.Logger, Work: true, Workers: o.workers, LeaseTTL: o.leaseTTL, OnBytes: m.AddBytes})
	if err != nil {
		return err
	}
	if err := jm.Start(ctx); err != nil {
		jm.Stop(ctx)
		return err
	}
	var srv *http.Server
	if o.metricsListen != "" {
		ln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			jm.Stop(ctx)
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", m.Handler())
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		fmt.Fprintf(g.Stdout, "ferry: worker metrics on http://%s/metrics\n", ln.Addr())
	}
	fmt.Fprintf(g.Stdout, "ferry: worker %s taking jobs from %s\n", jm.Owner(), loc.Redacted())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if srv != nil {
		srv.Shutdown(sctx)
	}
	if err := jm.Stop(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
