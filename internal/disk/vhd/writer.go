package vhd

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// create implements Format.Create.
func create(ctx context.Context, t disk.Target, size int64, opts *disk.CreateOptions) (disk.Writer, error) {
	if opts == nil {
		opts = &disk.CreateOptions{}
	}
	name := targetName(t)
	if size < 0 {
		return nil, fmt.Errorf("vhd %s: negative size %d: %w", name, size, errs.ErrInvalidArgument)
	}
	if size > maxWriteSize {
		return nil, fmt.Errorf("vhd %s: size %d exceeds the VHD maximum of 2040 GiB (%d bytes): %w", name, size, int64(maxWriteSize), errs.ErrInvalidArgument)
	}
	size = roundUp(size, sectorSize)
	if size > maxWriteSize {
		return nil, fmt.Errorf("vhd %s: size %d exceeds the VHD maximum of 2040 GiB (%d bytes): %w", name, size, int64(maxWriteSize), errs.ErrInvalidArgument)
	}
	switch v := opts.Opt("force_size", "on"); v {
	case "on", "off", "true", "false", "yes", "no", "1", "0":
	default:
		return nil, fmt.Errorf("vhd %s: force_size must be on or off, not %q: %w", name, v, errs.ErrInvalidArgument)
	}
	sub := opts.Opt("subformat", "dynamic")
	_, bsSet := opts.Options["block_size"]
	bs, err := parseBlockSize(opts.Opt("block_size", "2M"))
	if err != nil {
		return nil, fmt.Errorf("vhd %s: %w", name, err)
	}
	switch sub {
	case "dynamic":
		return newDynamic(ctx, t, name, size, bs, opts)
	case "fixed":
		if opts.Backing != nil {
			return nil, fmt.Errorf("vhd %s: a fixed VHD cannot have a backing image (a differencing VHD is dynamic): %w", name, errs.ErrInvalidArgument)
		}
		if bsSet {
			return nil, fmt.Errorf("vhd %s: block_size applies to dynamic VHDs only: %w", name, errs.ErrInvalidArgument)
		}
		return newFixed(t, name, size), nil
	}
	return nil, fmt.Errorf("vhd %s: unknown subformat %q (known: dynamic, fixed): %w", name, sub, errs.ErrInvalidArgument)
}

func targetName(t disk.Target) string {
	if ft, ok := t.(disk.FileTarget); ok {
		return ft.Name()
	}
	return "stream"
}

// parseBlockSize accepts a byte count with an optional K/M (KiB/MiB)
// suffix, and only the block sizes Hyper-V accepts: 512 KiB and 2 MiB.
func parseBlockSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > 1<<30 {
		return 0, fmt.Errorf("invalid block_size %q: %w", s, errs.ErrInvalidArgument)
	}
	n *= mult
	if n != 512<<10 && n != 2<<20 {
		return 0, fmt.Errorf("block_size %q not supported: use 512K or 2M, the sizes Hyper-V accepts: %w", s, errs.ErrInvalidArgument)
	}
	return n, nil
}

// newFooter returns the footer ferry writes: creator "tap\0" 1.3 on
// "Wi2k", current and original size exact, CHS from the spec's algorithm.
func newFooter(size int64, diskType uint32, dataOffset uint64) footer {
	c, h, s := geometry(size)
	ft := footer{
		features:       footerFeatures,
		version:        formatVersion,
		dataOffset:     dataOffset,
		timestamp:      toVHDTime(time.Now()),
		creatorVersion: creatorVersion,
		origSize:       uint64(size),
		curSize:        uint64(size),
		cylinders:      c,
		heads:          h,
		sectors:        s,
		diskType:       diskType,
	}
	copy(ft.creatorApp[:], creatorApp)
	copy(ft.creatorOS[:], creatorOS)
	rand.Read(ft.uuid[:])
	ft.uuid[6] = ft.uuid[6]&0x0F | 0x40 // version 4
	ft.uuid[8] = ft.uuid[8]&0x3F | 0x80 // RFC 4122 variant
	return ft
}

// writeState is the lifecycle shared by the writers.
type writeState struct {
	committed, closed bool
	err               error // sticky: the first failure
}

func (s *writeState) usable(name string) error {
	switch {
	case s.closed:
		return fmt.Errorf("vhd %s: writer is closed: %w", name, errs.ErrFailedPrecondition)
	case s.committed:
		return fmt.Errorf("vhd %s: writer is committed: %w", name, errs.ErrFailedPrecondition)
	}
	return s.err
}

func (s *writeState) fail(err error) error {
	if s.err == nil {
		s.err = err
	}
	return err
}

func checkRange(name string, off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("vhd %s: range [%d, %d) outside the %d-byte disk: %w", name, off, off+n, size, errs.ErrInvalidArgument)
	}
	return nil
}
