package cli

import (
	"bufio"
	"fmt"
	"os"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/service"
)

type imageConvertOptions struct {
	srcFormat     string
	dstFormat     string
	options       []string
	compress      bool
	progress      bool
	backing       string
	backingFormat string
	workers       int
	sparse        int64
	sync          bool
	noBacking     bool
	srcSize       string
	disk          string
	vm            core.VMSpec
	memory        string
	firmware      string
	output        outputFlag
}

func newImageConvertCommand(g *Globals) *cobra.Command {
	var o imageConvertOptions
	cmd := &cobra.Command{
		Use:   "convert [flags] -O FORMAT SRC [SRC...] DST",
		Short: "Convert a disk image to another format",
		Long: `Convert SRC into a new image DST of format -O. Only allocated data is read,
pieces that read as zeros are skipped (sparse output), and chunks are read,
checked and written in parallel. DST is written under a temporary name and
renamed into place only when complete; on any error nothing is left behind.

SRC "-" reads standard input front to back, for formats whose tables come
first (raw, VHD dynamic written in order, streamOptimized VMDK); a raw pipe
needs --src-size. DST "-" writes to standard output, for formats that can
stream (raw, VHD, streamOptimized VMDK, compressed QCOW2 excepted).

Format options (-o key=value,...) depend on the output format, for example
  qcow2: cluster_size, compression_type=zlib|zstd, compress=on
  vhd:   subformat=dynamic|fixed
Use -c as a shorthand for compress=on.

Whole-VM archives (OVA, XVA): an archive SRC converts every disk (DST gets
"-N" before its extension when there are several) or the one chosen with
--disk (index from 0, or name); -O ova|xva with an archive SRC converts the
whole VM. -O ova|xva with one or more disk SRCs builds an archive from them
and --vm-name, --cpus, --memory, --firmware.`,
		Example: `  ferry image convert -O qcow2 disk.raw disk.qcow2
  ferry image convert -p -O vhd -o subformat=fixed disk.qcow2 disk.vhd
  ferry image convert -c -o compression_type=zstd -O qcow2 disk.vhd disk.qcow2`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.output.validate(); err != nil {
				return err
			}
			srcs, dst := args[:len(args)-1], args[len(args)-1]
			opts, err := parseOptions(o.options)
			if err != nil {
				return err
			}
			if o.compress {
				opts["compress"] = "on"
			}
			var inSize int64
			if srcs[0] == "-" {
				if inSize, err = stdinSize(g, o.srcSize); err != nil {
					return err
				}
			}
			if o.memory != "" {
				if o.vm.MemoryBytes, err = parseSize(o.memory); err != nil {
					return err
				}
			}
			o.vm.Firmware = core.Firmware(o.firmware)
			req := service.ConvertRequest{
				Input: bufio.NewReaderSize(g.Stdin, 1<<20), InputSize: inSize, Output: g.Stdout,
				Src:       service.OpenRequest{Path: srcs[0], Format: o.srcFormat, NoBacking: o.noBacking, Disk: o.disk},
				Dst:       dst,
				DstFormat: o.dstFormat, Options: opts,
				BackingFile: o.backing, BackingFormat: o.backingFormat,
				Workers: o.workers, ZeroGranularity: o.sparse, Sync: o.sync,
			}
			rep, stop := withProgress(g, o.progress)
			defer stop()
			req.Progress = rep
			var results []service.ConvertResult
			var jsonOut any
			if ar, err := g.Images.ConvertArchive(cmd.Context(), req); err != nil {
				return err
			} else if ar != nil {
				if len(srcs) > 1 {
					return fmt.Errorf("convert: one archive source at a time: %w", errs.ErrInvalidArgument)
				}
				results, jsonOut = ar.Outputs, ar
			} else if len(srcs) > 1 || g.Images.IsArchiveFormat(o.dstFormat) {
				var sources []service.OpenRequest
				for _, s := range srcs {
					sources = append(sources, service.OpenRequest{Path: s, Format: o.srcFormat, NoBacking: o.noBacking})
				}
				res, err := g.Images.BuildArchive(cmd.Context(), service.BuildArchiveRequest{Sources: sources, ConvertRequest: req, VM: o.vm})
				if err != nil {
					return err
				}
				results, jsonOut = []service.ConvertResult{res}, res
			} else {
				res, err := g.Images.Convert(cmd.Context(), req)
				if err != nil {
					return err
				}
				results, jsonOut = []service.ConvertResult{res}, res
			}
			stop()
			if o.output == "json" && dst != "-" {
				return writeJSON(g.Stdout, jsonOut)
			}
			if o.progress {
				for _, r := range results {
					printConvertSummary(g, r)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.srcFormat, "format", "f", "", "source format (default: probe the content)")
	f.StringVarP(&o.dstFormat, "output-format", "O", "", "output format (required)")
	f.StringArrayVarP(&o.options, "options", "o", nil, "output format options, key=value[,key=value...]")
	f.BoolVarP(&o.compress, "compress", "c", false, "compress the output (qcow2, vmdk streamOptimized)")
	f.BoolVarP(&o.progress, "progress", "p", false, "show a progress bar on a terminal and a summary at the end")
	f.StringVarP(&o.backing, "backing", "B", "", "write DST as an overlay over this backing file, storing only differences")
	f.StringVarP(&o.backingFormat, "backing-format", "F", "", "format of the backing file (default: probe)")
	f.IntVarP(&o.workers, "workers", "m", 0, "chunks in flight at once (default 4)")
	f.Int64VarP(&o.sparse, "sparse-size", "S", 0, "zero-detection granularity in bytes; -1 disables (default 4096)")
	f.BoolVar(&o.sync, "sync", false, "flush the output to stable storage before renaming it into place")
	f.BoolVar(&o.noBacking, "no-backing", false, "refuse a source that names a backing file")
	f.StringVar(&o.srcSize, "src-size", "", "size of a raw source read from standard input, when it is a pipe")
	f.StringVar(&o.disk, "disk", "", "with an archive source: the disk to convert, by index from 0 or by name")
	f.StringVar(&o.vm.Name, "vm-name", "", "with -O ova|xva: the VM's name (default: the output's base name)")
	f.IntVar(&o.vm.CPUs, "cpus", 1, "with -O ova|xva: virtual CPUs")
	f.StringVar(&o.memory, "memory", "1G", "with -O ova|xva: memory size")
	f.StringVar(&o.firmware, "firmware", "bios", "with -O ova|xva: bios or uefi")
	o.output.add(cmd)
	cmd.MarkFlagRequired("output-format")
	return cmd
}

// stdinSize is the size of standard input: given by flag, or read from the
// file system when stdin is a regular file, else 0 (unknown).
func stdinSize(g *Globals, flag string) (int64, error) {
	if flag != "" {
		return parseSize(flag)
	}
	if f, ok := g.Stdin.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			return st.Size(), nil
		}
	}
	return 0, nil
}

func printConvertSummary(g *Globals, r service.ConvertResult) {
	secs := r.Duration.Seconds()
	rate := ""
	if secs > 0 {
		rate = fmt.Sprintf(", %s/s of data", progress.HumanBytes(int64(float64(r.Stats.Read)/secs)))
	}
	fmt.Fprintf(g.Stderr, "%s (%s, %s) -> %s (%s, %s on disk) in %s%s\n",
		r.Src.Filename, r.Src.Format, progress.HumanBytes(r.Src.VirtualSize),
		r.Dst, r.DstFormat, progress.HumanBytes(r.OutputSize), r.Duration.Round(time.Millisecond), rate)
	fmt.Fprintf(g.Stderr, "read %s of data, wrote %s, skipped %s of holes and %s of zeros\n",
		progress.HumanBytes(r.Stats.Read), progress.HumanBytes(r.Stats.Written),
		progress.HumanBytes(r.Stats.Skipped), progress.HumanBytes(r.Stats.ZeroDetected))
}
