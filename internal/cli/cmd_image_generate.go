package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

type imageGenerateOptions struct {
	format   string
	options  []string
	fill     float64
	seed     uint64
	progress bool
}

func newImageGenerateCommand(g *Globals) *cobra.Command {
	var o imageGenerateOptions
	cmd := &cobra.Command{
		Use:   "generate [flags] FILE SIZE",
		Short: "Write a synthetic disk with deterministic mixed content, for tests and benchmarks",
		Long: `Write a disk of the given virtual size in which about --fill of the space
holds data: incompressible random 4 KiB blocks, compressible text and written
zeros, in runs of 4 KiB to 2 MiB; the rest is holes. The same --seed always
gives the same bytes.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(args[1])
			if err != nil {
				return err
			}
			if o.fill < 0 || o.fill > 1 {
				return fmt.Errorf("--fill %v: want a fraction from 0 to 1: %w", o.fill, errs.ErrInvalidArgument)
			}
			opts, err := parseOptions(o.options)
			if err != nil {
				return err
			}
			src := synth.Image{P: synth.MakePattern("generated", size, o.fill, o.seed)}
			w, err := g.Images.Formats.Create(cmd.Context(), args[0], o.format, size, &disk.CreateOptions{Options: opts, Source: src})
			if err != nil {
				return err
			}
			defer w.Close()
			rep, stop := withProgress(g, o.progress)
			_, err = disk.Convert(cmd.Context(), w, src, &disk.ConvertOptions{Progress: rep, ZeroGranularity: -1})
			stop()
			if err != nil {
				return err
			}
			if err := w.Commit(cmd.Context()); err != nil {
				return err
			}
			if o.progress {
				fmt.Fprintf(g.Stderr, "%s: %s virtual, %s of data\n", args[0], progress.HumanBytes(size), progress.HumanBytes(src.P.DataBytes()))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.format, "format", "f", "raw", "image format")
	cmd.Flags().StringArrayVarP(&o.options, "options", "o", nil, "format options, key=value[,key=value...]")
	cmd.Flags().Float64Var(&o.fill, "fill", 0.4, "fraction of the disk that holds data")
	cmd.Flags().Uint64Var(&o.seed, "seed", 1, "content seed")
	cmd.Flags().BoolVarP(&o.progress, "progress", "p", false, "show a progress bar on a terminal")
	return cmd
}
