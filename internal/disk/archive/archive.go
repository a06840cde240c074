// Package archive is the contract for whole-VM archives: a VM description
// plus its disks in one file or stream (OVA, XVA). Each archive format lives
// in its own package (internal/disk/ova, internal/disk/xva) and describes
// itself with a [Format].
package archive

import (
	"context"
	"io"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
)

// Reader is an archive opened on a seekable file. Disks are read at random.
type Reader interface {
	// VM describes the VM; VM().Disks lists the disks in the VM's slot
	// order (XenServer userdevice, OVF hardware order), and OpenDisk and
	// Info().Disks index the same list.
	VM() core.VMSpec
	// OpenDisk opens disk i (0-based) as an Image, valid until the Reader
	// is closed. Data is verified against the archive's checksums as it is
	// read where the format allows that per block (XVA), or up front by
	// Verify otherwise (OVA manifests cover whole files).
	OpenDisk(ctx context.Context, i int) (disk.Image, error)
	// Verify checks every checksum the archive carries (manifest,
	// per-block sums) and returns an error naming the first member and
	// block that fails, wrapping errs.ErrCorrupt.
	Verify(ctx context.Context) error
	// Info describes the archive and its members for `ferry image info`.
	Info() Info
	io.Closer
}

// StreamReader reads an archive front to back from a non-seekable source.
type StreamReader interface {
	// VM is known once the descriptor (the archive's first member) is read.
	VM() core.VMSpec
	// NextDisk returns the next disk in the order the archive stores them
	// as a Stream, with its index into VM().Disks. The previous disk's stream must be consumed
	// or abandoned before calling it again. After the last disk it returns
	// io.EOF; checksums are verified as data passes and a mismatch is an
	// error wrapping errs.ErrCorrupt naming the disk and the block.
	NextDisk(ctx context.Context) (int, disk.Stream, error)
	io.Closer
}

// Writer writes an archive, one disk after the other, front to back.
type Writer interface {
	// NextDisk returns a sequential disk.Writer for the next disk of the
	// VM given to Create (in order). Commit on that writer finishes the
	// disk; it does not finish the archive.
	NextDisk(ctx context.Context) (disk.Writer, error)
	// Commit finishes the archive after the last disk (manifest, trailer).
	Commit(ctx context.Context) error
	// Close without Commit abandons the output (the registry removes a
	// file; a stream is left unfinished).
	io.Closer
}

// Info describes an archive for display.
type Info struct {
	Format string         `json:"format"`
	VM     core.VMSpec    `json:"vm"`
	Disks  []DiskInfo     `json:"disks"`
	Extra  map[string]any `json:"format-specific,omitempty"`
}

// DiskInfo is one disk member of an archive.
type DiskInfo struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	Member      string `json:"member"` // file name (OVA) or Ref (XVA) inside the archive
	Format      string `json:"format"` // format of the member's bytes (vmdk, raw)
	VirtualSize int64  `json:"virtual-size"`
	StoredSize  int64  `json:"stored-size,omitempty"`
}

// Format describes one archive format.
type Format struct {
	Name string
	// Probe reports whether f holds this archive format, by content.
	Probe func(f disk.File) bool
	// Open opens an archive file. On success the Reader owns f.
	Open func(ctx context.Context, f disk.File, opts *OpenOptions) (Reader, error)
	// OpenStream reads an archive from a non-seekable source.
	OpenStream func(ctx context.Context, r io.Reader, opts *OpenOptions) (StreamReader, error)
	// Create starts writing an archive for vm to t. vm.Disks fixes the
	// disks and their virtual sizes; the caller then writes each disk in
	// order through Writer.NextDisk.
	Create func(ctx context.Context, t disk.Target, vm core.VMSpec, opts *CreateOptions) (Writer, error)
	// Options documents the keys Create accepts in CreateOptions.Options.
	Options []disk.Option
}

// OpenOptions are passed to Open and OpenStream.
type OpenOptions struct {
	// Disks is the registry used to open the disk members (VMDK inside an
	// OVA).
	Disks *disk.Registry
}

// CreateOptions are passed to Create.
type CreateOptions struct {
	// Disks is the registry used to create disk members.
	Disks *disk.Registry
	// Workers bounds background parallelism (compression); 0 means
	// GOMAXPROCS.
	Workers int
	// Options are format options (-o key=value).
	Options map[string]string
}
