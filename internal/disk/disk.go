// Package disk is ferry's disk engine: every disk format behind one
// random-access [Image] for reading and one [Writer] for writing, format
// probing, and [Convert] and [Compare] over them.
//
// Disk data moves as io.ReaderAt plus extent maps. Nothing here ever holds a
// whole disk in memory: memory is bounded by the worker count and chunk size
// whatever the disk size.
//
// Each format lives in its own package under internal/disk/ and describes
// itself with a [Format]; internal/disk/formats lists them all in one place.
package disk

import (
	"context"
	"io"
	"iter"
)

// ExtentKind tells what a range of a disk holds.
type ExtentKind uint8

const (
	// Data: the range is stored; it may still contain zeros.
	Data ExtentKind = iota
	// Zero: the range is recorded as zeros (a qcow2 zero cluster, a
	// punched hole in a file the format marks zero).
	Zero
	// Unallocated: nothing is stored; the range reads as zeros.
	Unallocated
)

func (k ExtentKind) String() string {
	switch k {
	case Data:
		return "data"
	case Zero:
		return "zero"
	case Unallocated:
		return "unallocated"
	}
	return "invalid"
}

// ReadsZero reports whether a range of this kind reads as zeros without
// being read.
func (k ExtentKind) ReadsZero() bool { return k != Data }

// Extent is a range of a disk's virtual address space.
type Extent struct {
	Off  int64
	Len  int64
	Kind ExtentKind
}

// End is Off+Len.
func (e Extent) End() int64 { return e.Off + e.Len }

// Image is a disk as its guest sees it: the virtual address space with any
// backing chain already applied.
//
// ReadAt follows io.ReaderAt: it is safe for concurrent use, reads past
// Size return io.EOF, and a read that ends past Size returns the bytes up to
// Size and io.EOF. Reading an unallocated or zero range fills zeros.
//
// Close releases the image and every image of its backing chain.
type Image interface {
	io.ReaderAt
	io.Closer

	// Size is the virtual size in bytes.
	Size() int64

	// Extents reports the ranges of [off, off+n) ∩ [0, Size) in ascending
	// order, contiguous and non-overlapping, covering the whole range.
	// Adjacent extents may share a kind. A range that an image's own
	// layer leaves to its backing image is reported as the backing image
	// reports it. The first error ends the sequence. Safe for concurrent
	// use.
	Extents(ctx context.Context, off, n int64) iter.Seq2[Extent, error]

	// Info describes the image: format, sizes, format-specific fields, the
	// backing chain.
	Info() Info
}

// Info describes an opened image. Field names in JSON follow `qemu-img info`
// where they mean the same.
type Info struct {
	Filename      string `json:"filename,omitempty"`
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual-size"`
	ActualSize    int64  `json:"actual-size,omitempty"` // bytes the file occupies on its file system; filled by the caller
	ClusterSize   int64  `json:"cluster-size,omitempty"`
	BackingFile   string `json:"backing-filename,omitempty"`
	BackingFormat string `json:"backing-filename-format,omitempty"`
	// Specific holds format-specific fields (qcow2 compat level, VHD
	// subformat and creator, ...), keyed as qemu-img does where it has the
	// field.
	Specific map[string]any `json:"format-specific,omitempty"`
	// Backing is the next image of the chain, if any.
	Backing *Info `json:"backing-image,omitempty"`
}

// Writer writes a new image. Obtain one from a [Format]'s Create.
//
// Ranges never written nor zeroed are unallocated: they read from the
// backing image when there is one, and as zeros otherwise.
//
// Unless Sequential reports true, WriteAt and Zero are safe for concurrent
// use on disjoint byte ranges, at any alignment. A sequential writer accepts
// ascending, non-overlapping ranges from one goroutine only and refuses
// anything else with an error; it may buffer and compress in the background
// and report a failure on a later call or on Commit.
//
// WriteAt must not retain p after it returns.
type Writer interface {
	io.WriterAt

	// Zero records that [off, off+n) reads as zeros, without writing the
	// bytes where the format can say so; it hides the backing image there.
	Zero(off, n int64) error

	// Commit finalises tables, footers and checksums and makes the output
	// complete. After Commit, Close only releases resources.
	Commit(ctx context.Context) error

	// Close without Commit aborts: it discards the output (the file is
	// removed, a stream is left unfinished). Close is idempotent.
	io.Closer

	// Size is the virtual size being written.
	Size() int64

	// Sequential reports whether the writer accepts ascending offsets only.
	Sequential() bool
}

// Granular is implemented by writers that allocate in units bigger than a
// sector (a qcow2 cluster, a VDI block). Convert then detects zeros in
// whole units: an all-zero unit is skipped, any other is written in one
// piece, zeros included, since the unit is allocated anyway.
type Granular interface {
	AllocationUnit() int64
}

// Checker is implemented by images that can check their own structure.
type Checker interface {
	// Check reads every table of the image and reports leaks, overlaps
	// and out-of-range entries. It returns an error only when the check
	// itself could not run.
	Check(ctx context.Context) (CheckResult, error)
}

// CheckResult is the outcome of a structural check. Field names in JSON
// follow `qemu-img check --output json`.
type CheckResult struct {
	Filename        string   `json:"filename,omitempty"`
	Format          string   `json:"format"`
	CheckErrors     int      `json:"check-errors"`
	Corruptions     int      `json:"corruptions,omitempty"`
	Leaks           int      `json:"leaks,omitempty"`
	AllocatedBytes  int64    `json:"allocated-bytes,omitempty"`
	Problems        []string `json:"problems,omitempty"` // one line per fault found, at most a few hundred
	ImageEndOffset  int64    `json:"image-end-offset,omitempty"`
	TotalClusters   int64    `json:"total-clusters,omitempty"`
	AllocatedClusts int64    `json:"allocated-clusters,omitempty"`
}

// Clean reports whether the check found nothing wrong.
func (r CheckResult) Clean() bool { return r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 }
