package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/service"
)

type imageCompareOptions struct {
	formatA, formatB string
	strict           bool
	progress         bool
	output           outputFlag
}

func newImageCompareCommand(g *Globals) *cobra.Command {
	var o imageCompareOptions
	cmd := &cobra.Command{
		Use:   "compare [flags] A B",
		Short: "Compare the content of two disk images, whatever their formats",
		Long: `Compare what two disk images read as, whatever their formats. Ranges both
images report as holes or zeros are not read.

Exit status: 0 the images are identical, 1 they differ (the first differing
offset is printed), 2 an error occurred. Without -s, images of different
sizes are identical when the larger one reads zeros past the smaller's end.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.output.validate(); err != nil {
				return &exitError{code: 2, err: err}
			}
			rep, stop := withProgress(g, o.progress)
			res, err := g.Images.Compare(cmd.Context(),
				service.OpenRequest{Path: args[0], Format: o.formatA},
				service.OpenRequest{Path: args[1], Format: o.formatB}, o.strict, rep)
			stop()
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			if o.output == "json" {
				if err := writeJSON(g.Stdout, res); err != nil {
					return &exitError{code: 2, err: err}
				}
			} else if res.Identical {
				fmt.Fprintln(g.Stdout, "Images are identical.")
			} else if o.strict && res.SizeA != res.SizeB {
				fmt.Fprintf(g.Stdout, "Strict mode: image size mismatch (%d and %d bytes)\n", res.SizeA, res.SizeB)
			} else {
				fmt.Fprintf(g.Stdout, "Content mismatch at offset %d!\n", res.Offset)
			}
			if !res.Identical {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.formatA, "format-a", "f", "", "format of A (default: probe)")
	cmd.Flags().StringVarP(&o.formatB, "format-b", "F", "", "format of B (default: probe)")
	cmd.Flags().BoolVarP(&o.strict, "strict", "s", false, "images of different sizes differ")
	cmd.Flags().BoolVarP(&o.progress, "progress", "p", false, "show a progress bar on a terminal")
	o.output.add(cmd)
	return cmd
}
