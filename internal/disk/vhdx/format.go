package vhdx

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// Format returns a fresh descriptor of the VHDX format.
func Format() *disk.Format {
	return &disk.Format{
		Name:       "vhdx",
		Probe:      probe,
		Open:       open,
		Create:     create,
		OpenStream: nil, // the BAT comes after the headers but blocks are in any order
		Options: []disk.Option{
			{Key: "subformat", Default: "dynamic", Help: "dynamic (blocks allocated as written) or fixed (every block allocated; the file is preallocated sparse)"},
			{Key: "block_size", Default: "0", Help: "payload block size in bytes (K, M, G suffixes), a power of two from 1 MiB to 256 MiB; 0 picks qemu's size: 8 MiB up to 1 GiB, 16 MiB up to 100 GiB, 32 MiB up to 32 TiB, 64 MiB beyond"},
			{Key: "log_size", Default: "1M", Help: "size of the (empty) log region, a multiple of 1 MiB below 4 GiB"},
			{Key: "block_state_zero", Default: "on", Help: "on: zeroing a whole unallocated block records it with the ZERO block state; off: it stays NOT_PRESENT (which reads as zeros too)"},
		},
	}
}

// probe claims files that start with the VHDX file type identifier.
func probe(f disk.File) bool {
	var b [8]byte
	n, _ := f.ReadAt(b[:], identOffset)
	return n == len(b) && string(b[:]) == identSignature
}

func corrupt(name, format string, args ...any) error {
	return fmt.Errorf("vhdx %s: %s: %w", name, fmt.Sprintf(format, args...), errs.ErrCorrupt)
}

func unimplemented(name, format string, args ...any) error {
	return fmt.Errorf("vhdx %s: %s: %w", name, fmt.Sprintf(format, args...), errs.ErrUnimplemented)
}

// parseSize parses a byte count with an optional binary suffix (k, M, G,
// T; case-insensitive, an optional trailing B), as qemu's options do.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	mult := int64(1)
	if t != "" {
		switch strings.ToLower(t[len(t)-1:]) {
		case "k":
			mult = kib
		case "m":
			mult = mib
		case "g":
			mult = gib
		case "t":
			mult = tib
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("bad boolean %q (want on or off)", s)
}

// defaultBlockSize is qemu's choice of block size for a disk size.
func defaultBlockSize(size int64) int64 {
	switch {
	case size > 32*tib:
		return 64 * mib
	case size > 100*gib:
		return 32 * mib
	case size > gib:
		return 16 * mib
	}
	return 8 * mib
}
