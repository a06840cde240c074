package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/service"
)

type imageMapOptions struct {
	format string
	output outputFlag
}

func newImageMapCommand(g *Globals) *cobra.Command {
	var o imageMapOptions
	cmd := &cobra.Command{
		Use:   "map [flags] FILE",
		Short: "Show which ranges of an image hold data, zeros or nothing",
		Long: `Print the allocation map of an image as its guest sees it (backing chain
applied): runs of data, zero and unallocated space. With --output json each
run is {"start", "length", "kind", "data", "zero"}.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.output.validate(); err != nil {
				return err
			}
			seq, closeFn, err := g.Images.Map(cmd.Context(), service.OpenRequest{Path: args[0], Format: o.format})
			if err != nil {
				return err
			}
			defer closeFn()
			if o.output == "json" {
				var all []service.MapEntry
				for e, err := range seq {
					if err != nil {
						return err
					}
					all = append(all, e)
				}
				if all == nil {
					all = []service.MapEntry{}
				}
				return writeJSON(g.Stdout, all)
			}
			fmt.Fprintf(g.Stdout, "%-20s%-20s%s\n", "Offset", "Length", "Kind")
			for e, err := range seq {
				if err != nil {
					return err
				}
				fmt.Fprintf(g.Stdout, "%#-20x%#-20x%s\n", e.Start, e.Length, e.Kind)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "image format (default: probe)")
	o.output.add(cmd)
	return cmd
}
