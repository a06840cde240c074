package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/service"
)

type imageInfoOptions struct {
	output       outputFlag
	format       string
	backingChain bool
	noBacking    bool
}

func newImageInfoCommand(g *Globals) *cobra.Command {
	var o imageInfoOptions
	cmd := &cobra.Command{
		Use:   "info [flags] FILE",
		Short: "Describe a disk image: format, sizes, backing chain, format details",
		Long: `Describe a disk image: format, virtual size, space used on disk, cluster or
block size, backing chain and format-specific fields. With --output json the
field names follow qemu-img info where they mean the same.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.output.validate(); err != nil {
				return err
			}
			d, err := g.Images.Describe(cmd.Context(), service.OpenRequest{Path: args[0], Format: o.format, NoBacking: o.noBacking})
			if err != nil {
				return err
			}
			if d.Archive != nil {
				return printArchiveInfo(g.Stdout, args[0], d.Archive, o)
			}
			return printInfo(g.Stdout, *d.Disk, o)
		},
	}
	o.output.add(cmd)
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "image format (default: probe the content)")
	cmd.Flags().BoolVar(&o.backingChain, "backing-chain", false, "describe every image of the backing chain")
	cmd.Flags().BoolVar(&o.noBacking, "no-backing", false, "refuse images that name a backing file")
	return cmd
}

func printInfo(w io.Writer, info disk.Info, o imageInfoOptions) error {
	if o.output == "json" {
		if o.backingChain {
			var chain []disk.Info
			for i := &info; i != nil; i = i.Backing {
				c := *i
				c.Backing = nil
				chain = append(chain, c)
			}
			return writeJSON(w, chain)
		}
		return writeJSON(w, info)
	}
	for i := &info; i != nil; i = i.Backing {
		if i != &info {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "image: %s\n", i.Filename)
		fmt.Fprintf(w, "file format: %s\n", i.Format)
		fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", progress.HumanBytes(i.VirtualSize), i.VirtualSize)
		fmt.Fprintf(w, "disk size: %s\n", progress.HumanBytes(i.ActualSize))
		if i.ClusterSize > 0 {
			fmt.Fprintf(w, "cluster_size: %d\n", i.ClusterSize)
		}
		if i.BackingFile != "" {
			fmt.Fprintf(w, "backing file: %s\n", i.BackingFile)
			if i.BackingFormat != "" {
				fmt.Fprintf(w, "backing file format: %s\n", i.BackingFormat)
			}
		}
		if len(i.Specific) > 0 {
			fmt.Fprintln(w, "Format specific information:")
			printSpecific(w, i.Specific, "    ")
		}
		if !o.backingChain {
			break
		}
	}
	return nil
}

func printArchiveInfo(w io.Writer, path string, a *archive.Info, o imageInfoOptions) error {
	if o.output == "json" {
		return writeJSON(w, a)
	}
	fmt.Fprintf(w, "archive: %s\n", path)
	fmt.Fprintf(w, "file format: %s (whole VM)\n", a.Format)
	fmt.Fprintf(w, "vm: %s\n", a.VM.Name)
	if a.VM.Description != "" {
		fmt.Fprintf(w, "description: %s\n", a.VM.Description)
	}
	fmt.Fprintf(w, "cpus: %d\nmemory: %s\n", a.VM.CPUs, progress.HumanBytes(a.VM.MemoryBytes))
	if a.VM.Firmware != "" {
		fmt.Fprintf(w, "firmware: %s\n", a.VM.Firmware)
	}
	if a.VM.OSType != "" {
		fmt.Fprintf(w, "os: %s\n", a.VM.OSType)
	}
	fmt.Fprintln(w, "disks:")
	for _, d := range a.Disks {
		fmt.Fprintf(w, "    [%d] %s: %s %s (%d bytes virtual, %s stored, member %s)\n", d.Index, d.Name, d.Format,
			progress.HumanBytes(d.VirtualSize), d.VirtualSize, progress.HumanBytes(d.StoredSize), d.Member)
	}
	if len(a.VM.NICs) > 0 {
		fmt.Fprintln(w, "nics:")
		for i, n := range a.VM.NICs {
			fmt.Fprintf(w, "    [%d] %s network=%s mac=%s\n", i, n.Name, n.Network, n.MAC)
		}
	}
	if len(a.Extra) > 0 {
		fmt.Fprintln(w, "Format specific information:")
		printSpecific(w, a.Extra, "    ")
	}
	return nil
}

func printSpecific(w io.Writer, m map[string]any, indent string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := m[k].(type) {
		case map[string]any:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			printSpecific(w, v, indent+"    ")
		case []map[string]any:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			for n, e := range v {
				fmt.Fprintf(w, "%s    [%d]:\n", indent, n)
				printSpecific(w, e, indent+"        ")
			}
		case []any:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			for n, e := range v {
				if em, ok := e.(map[string]any); ok {
					fmt.Fprintf(w, "%s    [%d]:\n", indent, n)
					printSpecific(w, em, indent+"        ")
				} else {
					fmt.Fprintf(w, "%s    [%d]: %v\n", indent, n, e)
				}
			}
		default:
			fmt.Fprintf(w, "%s%s: %s\n", indent, k, strings.TrimSpace(fmt.Sprint(v)))
		}
	}
}
