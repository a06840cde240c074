package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/progress"
	"github.com/ferry-project/ferry/internal/service"
)

type demoOptions struct {
	dir  string
	size string
	keep bool
}

// demoStep is one conversion of the demo: the previous step's output
// becomes this step's input, so the chain crosses every format.
type demoStep struct {
	format  string
	options map[string]string
	label   string
}

var demoSteps = []demoStep{
	{format: "qcow2", label: "qcow2"},
	{format: "vhd", options: map[string]string{"subformat": "dynamic"}, label: "vhd dynamic"},
	{format: "vhdx", label: "vhdx"},
	{format: "vmdk", options: map[string]string{"subformat": "streamOptimized"}, label: "vmdk streamOptimized"},
	{format: "vdi", label: "vdi"},
	{format: "qcow2", options: map[string]string{"compress": "on"}, label: "qcow2 compressed"},
	{format: "vhd", options: map[string]string{"subformat": "fixed"}, label: "vhd fixed"},
	{format: "raw", label: "raw"},
}

func newDemoCommand(g *Globals) *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Generate a disk and convert it through every format, checking each step",
		Long: `Generate a synthetic disk (about 40% data: random, text and zero blocks) and
convert it in a chain through every format ferry writes, comparing each result
with the original (and, when qemu-img is installed, checking it with qemu-img
too). Prints what each step did: sizes, time, throughput and the verdict.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			size, err := parseSize(o.size)
			if err != nil {
				return err
			}
			dir := o.dir
			if dir == "" {
				if dir, err = os.MkdirTemp("", "ferry-demo-"); err != nil {
					return err
				}
				if !o.keep {
					defer os.RemoveAll(dir)
				}
			} else if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			qemu, _ := exec.LookPath("qemu-img")
			pt := synth.MakePattern("demo", size, 0.4, 42)
			src := filepath.Join(dir, "source.raw")
			fmt.Fprintf(g.Stdout, "ferry demo in %s\n", dir)
			fmt.Fprintf(g.Stdout, "generating %s: %s virtual, %s of data (random, text and zero blocks)\n",
				src, progress.HumanBytes(size), progress.HumanBytes(pt.DataBytes()))
			if err := writeSynthetic(cmd, g, src, pt); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.Stdout, 2, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "STEP\tFORMAT\tON DISK\tTIME\tDATA RATE\tFERRY COMPARE\tQEMU-IMG")
			prev := src
			failed := 0
			for i, st := range demoSteps {
				if _, err := g.Images.Formats.Lookup(st.format); err != nil {
					fmt.Fprintf(tw, "%d\t%s\t-\t-\t-\tskipped: format not built in\t-\n", i+1, st.label)
					continue
				}
				out := filepath.Join(dir, fmt.Sprintf("step%d.%s", i+1, st.format))
				res, err := g.Images.Convert(ctx, service.ConvertRequest{
					Src: service.OpenRequest{Path: prev}, Dst: out, DstFormat: st.format, Options: st.options,
				})
				if err != nil {
					return fmt.Errorf("demo step %d (%s): %w", i+1, st.label, err)
				}
				cmp, err := g.Images.Compare(ctx, service.OpenRequest{Path: src}, service.OpenRequest{Path: out}, false, nil)
				if err != nil {
					return fmt.Errorf("demo step %d (%s): %w", i+1, st.label, err)
				}
				verdict := "identical"
				if !cmp.Identical {
					verdict = fmt.Sprintf("DIFFERS at %d", cmp.Offset)
					failed++
				}
				qv := "not installed"
				if qemu != "" {
					qv = qemuVerdict(cmd, qemu, src, out, cmp.B.Format)
					if !strings.HasPrefix(qv, "identical") {
						failed++
					}
				}
				rate := float64(res.Stats.Read) / res.Duration.Seconds()
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s/s\t%s\t%s\n", i+1, st.label, progress.HumanBytes(res.OutputSize),
					res.Duration.Round(time.Millisecond), progress.HumanBytes(int64(rate)), verdict, qv)
				prev = out
			}
			tw.Flush()
			if failed > 0 {
				return fmt.Errorf("demo: %d checks failed", failed)
			}
			fmt.Fprintln(g.Stdout, "every step reads back identical to the source")
			return nil
		},
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "work directory (default: a temporary directory, removed afterwards)")
	cmd.Flags().StringVar(&o.size, "size", "1G", "virtual size of the generated disk")
	cmd.Flags().BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	return cmd
}

func writeSynthetic(cmd *cobra.Command, g *Globals, path string, pt *synth.Pattern) error {
	img := synth.Image{P: pt}
	w, err := g.Images.Formats.Create(cmd.Context(), path, "raw", pt.Size, &disk.CreateOptions{Source: img})
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := disk.Convert(cmd.Context(), w, img, &disk.ConvertOptions{ZeroGranularity: -1}); err != nil {
		return err
	}
	return w.Commit(cmd.Context())
}

// qemuFormat maps ferry's format names to qemu's.
func qemuFormat(f string) string {
	if f == "vhd" {
		return "vpc"
	}
	return f
}

func qemuVerdict(cmd *cobra.Command, qemu, src, out, format string) string {
	c := exec.CommandContext(cmd.Context(), qemu, "compare", "-q", "-f", "raw", "-F", qemuFormat(format), src, out)
	if err := c.Run(); err != nil {
		return "compare failed: " + err.Error()
	}
	if format == "qcow2" || format == "vdi" || format == "vhdx" || format == "vmdk" {
		if err := exec.CommandContext(cmd.Context(), qemu, "check", "-q", "-f", format, out).Run(); err != nil {
			return "identical, check failed: " + err.Error()
		}
		return "identical, check clean"
	}
	return "identical"
}
