package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

func newImageCommand(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Inspect, convert, compare and check disk images",
		Long: `Disk image tools. Formats are recognised by their content, never by file name:
raw, qcow2, vhd (alias vpc), vhdx, vmdk, vdi.`,
	}
	cmd.AddCommand(newImageInfoCommand(g), newImageConvertCommand(g), newImageCompareCommand(g),
		newImageCheckCommand(g), newImageMapCommand(g), newImageCreateCommand(g), newImageGenerateCommand(g))
	return cmd
}

// outputFlag is the --output flag shared by the image commands.
type outputFlag string

func (o *outputFlag) add(cmd *cobra.Command) {
	*o = "human"
	cmd.Flags().StringVar((*string)(o), "output", "human", "output format: human or json")
}

func (o outputFlag) validate() error {
	if o != "human" && o != "json" {
		return fmt.Errorf("--output %q: want human or json: %w", string(o), errs.ErrInvalidArgument)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(v)
}

// parseOptions parses "-o key=value,key=value".
func parseOptions(list []string) (map[string]string, error) {
	opts := map[string]string{}
	for _, s := range list {
		for kv := range strings.SplitSeq(s, ",") {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("-o %q: want key=value: %w", kv, errs.ErrInvalidArgument)
			}
			opts[k] = v
		}
	}
	return opts, nil
}

// withProgress starts a progress bar on stderr when show is set and stderr
// is a terminal, and returns the reporter and a stop function.
func withProgress(g *Globals, show bool) (progress.Reporter, func()) {
	if !show || !isTerminal(g.Stderr) {
		return nil, func() {}
	}
	var c progress.Counter
	bar := progress.NewBar(g.Stderr, &c, 200*time.Millisecond)
	bar.Start()
	return &c, sync.OnceFunc(bar.Stop)
}
