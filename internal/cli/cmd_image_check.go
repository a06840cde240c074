package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/service"
)

// Exit codes of `ferry image check`, as qemu-img check uses them.
const (
	checkExitOK          = 0
	checkExitFailed      = 1
	checkExitCorrupt     = 2
	checkExitLeaks       = 3
	checkExitUnsupported = 63
)

type imageCheckOptions struct {
	format string
	output outputFlag
}

func newImageCheckCommand(g *Globals) *cobra.Command {
	var o imageCheckOptions
	cmd := &cobra.Command{
		Use:   "check [flags] FILE",
		Short: "Check an image's structure: leaks, overlaps, out-of-range entries",
		Long: `Read every table of an image and report corruptions (entries out of range,
overlapping data, metadata that does not add up) and leaks (space allocated
that nothing uses).

Exit status, as qemu-img check: 0 clean, 1 the check could not run,
2 corruptions found, 3 only leaks found, 63 the format has no check.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.output.validate(); err != nil {
				return &exitError{code: checkExitFailed, err: err}
			}
			res, err := g.Images.Check(cmd.Context(), service.OpenRequest{Path: args[0], Format: o.format})
			if errors.Is(err, service.ErrCheckUnsupported) {
				return &exitError{code: checkExitUnsupported, err: err}
			}
			if err != nil {
				return &exitError{code: checkExitFailed, err: err}
			}
			if o.output == "json" {
				if err := writeJSON(g.Stdout, res); err != nil {
					return err
				}
			} else {
				for _, p := range res.Problems {
					fmt.Fprintln(g.Stdout, p)
				}
				switch {
				case res.Clean():
					fmt.Fprintln(g.Stdout, "No errors were found on the image.")
				default:
					if res.Corruptions > 0 {
						fmt.Fprintf(g.Stdout, "%d errors were found on the image.\n", res.Corruptions)
					}
					if res.Leaks > 0 {
						fmt.Fprintf(g.Stdout, "%d leaked clusters were found on the image.\n", res.Leaks)
					}
				}
				if res.TotalClusters > 0 {
					fmt.Fprintf(g.Stdout, "%d/%d clusters allocated.\n", res.AllocatedClusts, res.TotalClusters)
				}
			}
			switch {
			case res.Corruptions > 0 || res.CheckErrors > 0:
				return &exitError{code: checkExitCorrupt}
			case res.Leaks > 0:
				return &exitError{code: checkExitLeaks}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "image format (default: probe)")
	o.output.add(cmd)
	return cmd
}
