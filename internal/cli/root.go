// Package cli is ferry's command line: one cobra command per file
// (cmd_<verb>.go), each a thin layer over internal/service.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/service"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Globals are what every command shares: output streams, the logger and the
// services.
type Globals struct {
	Stdout, Stderr io.Writer
	Stdin          io.Reader
	Logger         *slog.Logger
	Images         *service.Images

	verbose    bool
	cpuProfile string
	stopProf   func()
}

// isTerminal reports whether w is a terminal (progress bars only go there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// exitError carries a specific exit code; its message, if any, is printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// Execute runs the ferry command line with args and returns the exit code.
func Execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &Globals{Stdout: stdout, Stderr: stderr, Stdin: stdin}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(stdin)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "ferry: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "ferry: %v\n", err)
	return 1
}

func newRootCommand(g *Globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Hybrid-cloud VM mobility: disks, XenServer, KVM and EC2 under one tool",
		Long: `ferry converts VM disks between every common format (raw, QCOW2, VHD, VHDX,
VMDK, VDI) with a pure-Go engine, and moves VMs between XenServer/KVM pools
and Amazon EC2.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPostRun: func(*cobra.Command, []string) {
			if g.stopProf != nil {
				g.stopProf()
			}
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.cpuProfile != "" {
				f, err := os.Create(g.cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return err
				}
				g.stopProf = func() { pprof.StopCPUProfile(); f.Close() }
			}
			level := slog.LevelWarn
			if g.verbose {
				level = slog.LevelDebug
			}
			g.Logger = slog.New(slog.NewTextHandler(g.Stderr, &slog.HandlerOptions{Level: level}))
			g.Images = service.NewImages(formats.Registry(), formats.Archives(), g.Logger)
			return nil
		},
	}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log what ferry does to standard error")
	root.PersistentFlags().StringVar(&g.cpuProfile, "cpuprofile", "", "write a Go CPU profile to this file")
	root.PersistentFlags().MarkHidden("cpuprofile")
	root.AddCommand(newImageCommand(g), newServeCommand(g), newWorkerCommand(g), newSiteCommand(g), newVMCommand(g),
		newJobCommand(g), newMigrateCommand(g), newTokenCommand(g), newAuditCommand(g), newLabCommand(g), newDemoCommand(g), newVersionCommand(g))
	return root
}

func newVersionCommand(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ferry's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(g.Stdout, "ferry %s\n", Version)
			return nil
		},
	}
}
