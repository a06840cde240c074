package vmdk

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// Subformats ferry writes.
const (
	MonolithicSparse = "monolithicSparse"
	StreamOptimized  = "streamOptimized"
	MonolithicFlat   = "monolithicFlat"
)

// Format returns the VMDK format descriptor.
func Format() *disk.Format {
	return &disk.Format{
		Name:       "vmdk",
		Probe:      probe,
		Open:       open,
		Create:     create,
		OpenStream: openStream,
		Options: []disk.Option{
			{Key: "subformat", Default: MonolithicSparse,
				Help: "monolithicSparse (one growable file), streamOptimized (compressed, sequential; what EC2 and OVA need) or monolithicFlat (descriptor plus a raw <name>-flat.vmdk)"},
			{Key: "adapter_type", Default: "ide (lsilogic for streamOptimized)",
				Help: "ddb.adapterType: ide, lsilogic, buslogic, pvscsi or legacyESX"},
			{Key: "hwversion", Default: "4 (8 for streamOptimized)",
				Help: "ddb.virtualHWVersion, the VMware virtual hardware version"},
			{Key: "toolsversion", Default: "",
				Help: "ddb.toolsVersion, a VMware Tools version number; left out when empty"},
		},
	}
}

// probe claims sparse extent files (KDMV), COWD files (to refuse them with
// a clear error rather than read them as raw) and descriptor files.
func probe(f disk.File) bool {
	n := min(f.Size(), 4096)
	if n < 4 {
		return false
	}
	b := make([]byte, n)
	if readFull(f, b, 0) != nil {
		return false
	}
	switch binary.LittleEndian.Uint32(b) {
	case magicKDMV, magicCOWD:
		return true
	}
	return f.Size() <= maxDescBytes && looksLikeDescriptor(b)
}

// createConfig is the parsed -o options.
type createConfig struct {
	subformat string
	adapter   string
	hwVersion string
	tools     string
	workers   int
}

func parseCreateOptions(o *disk.CreateOptions) (createConfig, error) {
	c := createConfig{subformat: o.Opt("subformat", MonolithicSparse)}
	switch c.subformat {
	case MonolithicSparse, MonolithicFlat:
		c.adapter, c.hwVersion = "ide", "4"
	case StreamOptimized:
		// As VMware's own stream files (iotest-version3.vmdk).
		c.adapter, c.hwVersion = "lsilogic", "8"
	case "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "vmfs", "vmfsSparse", "seSparse":
		return c, fmt.Errorf("vmdk: writing subformat %s: %w", c.subformat, errs.ErrUnimplemented)
	default:
		return c, fmt.Errorf("vmdk: unknown subformat %q (known: %s, %s, %s): %w", c.subformat, MonolithicSparse, StreamOptimized, MonolithicFlat, errs.ErrInvalidArgument)
	}
	c.adapter = o.Opt("adapter_type", c.adapter)
	switch c.adapter {
	case "ide", "lsilogic", "buslogic", "pvscsi", "legacyESX":
	default:
		return c, fmt.Errorf("vmdk: unknown adapter_type %q (known: ide, lsilogic, buslogic, pvscsi, legacyESX): %w", c.adapter, errs.ErrInvalidArgument)
	}
	c.hwVersion = o.Opt("hwversion", c.hwVersion)
	if !isNumber(c.hwVersion, 3) {
		return c, fmt.Errorf("vmdk: hwversion %q is not a version number: %w", c.hwVersion, errs.ErrInvalidArgument)
	}
	c.tools = o.Opt("toolsversion", "")
	if c.tools != "" && !isNumber(c.tools, 10) {
		return c, fmt.Errorf("vmdk: toolsversion %q is not a version number: %w", c.tools, errs.ErrInvalidArgument)
	}
	c.workers = runtime.GOMAXPROCS(0)
	if o != nil && o.Workers > 0 {
		c.workers = o.Workers
	}
	return c, nil
}

func isNumber(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	return strings.Trim(s, "0123456789") == ""
}

// create starts a writer for the requested subformat.
func create(ctx context.Context, t disk.Target, size int64, o *disk.CreateOptions) (disk.Writer, error) {
	if o == nil {
		o = &disk.CreateOptions{}
	}
	if err := Format().CheckOptions(o); err != nil {
		return nil, err
	}
	c, err := parseCreateOptions(o)
	if err != nil {
		return nil, err
	}
	if o.BackingFile != "" || o.Backing != nil {
		return nil, fmt.Errorf("vmdk: writing delta disks (a parent %q): %w", o.BackingFile, errs.ErrUnimplemented)
	}
	if size < 0 {
		return nil, fmt.Errorf("vmdk: negative size %d: %w", size, errs.ErrInvalidArgument)
	}
	if size > maxCapacity {
		return nil, fmt.Errorf("vmdk: size %d is over the %d-byte limit: %w", size, maxCapacity, errs.ErrInvalidArgument)
	}
	size = (size + sectorSize - 1) &^ (sectorSize - 1)
	switch c.subformat {
	case StreamOptimized:
		return newStreamWriter(ctx, t, size, c)
	case MonolithicFlat:
		return newFlatWriter(t, size, c)
	}
	return newSparseWriter(t, size, c)
}

// newCID returns a random content ID; 0xffffffff and 0xfffffffe are
// reserved.
func newCID() uint32 {
	for {
		if c := rand.Uint32(); c < 0xfffffffe {
			return c
		}
	}
}

// targetBase is the file name to record in an embedded descriptor.
func targetBase(t disk.Target) string {
	if n, ok := t.(interface{ Name() string }); ok && n.Name() != "" {
		return filepath.Base(n.Name())
	}
	return "disk.vmdk"
}
