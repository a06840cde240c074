package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

type imageCreateOptions struct {
	format  string
	options []string
}

func newImageCreateCommand(g *Globals) *cobra.Command {
	var o imageCreateOptions
	cmd := &cobra.Command{
		Use:   "create [flags] -f FORMAT FILE SIZE",
		Short: "Create an empty disk image",
		Long:  `Create an empty image of the given virtual size (bytes, or with a suffix K, M, G, T: powers of 1024).`,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(args[1])
			if err != nil {
				return err
			}
			opts, err := parseOptions(o.options)
			if err != nil {
				return err
			}
			w, err := g.Images.Formats.Create(cmd.Context(), args[0], o.format, size, &disk.CreateOptions{Options: opts})
			if err != nil {
				return err
			}
			defer w.Close()
			return w.Commit(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "image format (required)")
	cmd.Flags().StringArrayVarP(&o.options, "options", "o", nil, "format options, key=value[,key=value...]")
	cmd.MarkFlagRequired("format")
	return cmd
}

// parseSize parses "1048576", "512K", "10M", "4G", "1T".
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(s), "B")
	t = strings.TrimSuffix(t, "I")
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGTP", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a non-negative number of bytes, optionally with K, M, G, T or P: %w", s, errs.ErrInvalidArgument)
	}
	return n * mult, nil
}
