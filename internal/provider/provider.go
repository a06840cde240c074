// Package provider is the contract between ferry and the places VMs live:
// XenServer pools (kind xen), EC2 regions (kind aws), KVM hosts. A Provider
// is one connected site.
//
// The core interface is small; optional abilities are separate interfaces,
// reported in Info().Capabilities so that callers never need to type-assert
// blindly. A method a site cannot serve returns an error wrapping
// errs.ErrUnimplemented ("not supported by this site") — never a silent
// no-op.
//
// Every method takes ctx first and honours cancellation. Errors wrap the
// codes in internal/errs: NotFound for unknown IDs, PermissionDenied for
// refused credentials, Unavailable for transient faults (the only ones a
// caller may retry), FailedPrecondition for a wrong state (a running VM
// where a halted one is needed).
package provider

import (
	"context"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/progress"
)

// Kind names a provider implementation.
type Kind string

const (
	KindXen Kind = "xen"
	KindAWS Kind = "aws"
)

// Capabilities say which optional interfaces a provider implements and
// what it can do with them.
type Capabilities struct {
	Snapshot       bool `json:"snapshot"`        // Snapshotter
	ExportDisk     bool `json:"export_disk"`     // DiskExporter
	ChangedBlocks  bool `json:"changed_blocks"`  // DiskExporter with a base snapshot
	ImportVM       bool `json:"import_vm"`       // Importer
	Events         bool `json:"events"`          // Watcher
	ArchiveExport  bool `json:"archive_export"`  // whole-VM export (XVA, OVA)
	ConsoleLog     bool `json:"console_log"`     // Consoler
	StorageListing bool `json:"storage_listing"` // Inventory.ListStorage
}

// Info describes a connected site.
type Info struct {
	Name         core.SiteName `json:"name"`
	Kind         Kind          `json:"kind"`
	Endpoint     string        `json:"endpoint"`
	Version      string        `json:"version,omitempty"` // XAPI version, AWS API version
	Region       string        `json:"region,omitempty"`
	Capabilities Capabilities  `json:"capabilities"`
}

// Filter narrows ListVMs. Zero values match everything.
type Filter struct {
	Name       string          // exact name
	PowerState core.PowerState // exact state
	IDs        []core.VMID
}

// PowerOp is a power operation.
type PowerOp string

const (
	Start    PowerOp = "start"
	Shutdown PowerOp = "shutdown" // clean, through the guest
	Stop     PowerOp = "stop"     // hard
	Reboot   PowerOp = "reboot"
)

// Provider is one connected site.
type Provider interface {
	Info() Info
	// ListVMs calls fn for every VM matching f, on the caller's
	// goroutine; an error from fn stops the listing and is returned.
	// Templates, snapshots and control domains are not VMs.
	ListVMs(ctx context.Context, f Filter, fn func(core.VM) error) error
	// PowerVM performs op and returns when the site has accepted it; the
	// VM's state may still be Pending. Asking for the state the VM is
	// already in succeeds.
	PowerVM(ctx context.Context, id core.VMID, op PowerOp) error
	// Close releases the connection (logs out).
	Close() error
}

// Inventory lists what a site offers to place VMs on.
type Inventory interface {
	ListStorage(ctx context.Context) ([]core.Storage, error)
	ListNetworks(ctx context.Context) ([]core.Network, error)
}

// SnapshotOptions tune Snapshot.
type SnapshotOptions struct {
	Name string
	// Tags are recorded on the snapshot where the site supports tags
	// (ferry always tags what it creates with its job ID).
	Tags map[string]string
}

// Snapshot is a point-in-time copy of a VM's disks.
type Snapshot struct {
	ID    core.SnapshotID `json:"id"`
	VM    core.VMID       `json:"vm"`
	Disks []core.Disk     `json:"disks"` // the snapshot's disks, in the VM's disk order
}

// Snapshotter takes and deletes crash-consistent snapshots.
type Snapshotter interface {
	Snapshot(ctx context.Context, id core.VMID, o *SnapshotOptions) (Snapshot, error)
	DeleteSnapshot(ctx context.Context, id core.SnapshotID) error
}

// SnapshotFinder finds a snapshot taken earlier with the same options:
// a step that a crash cut off after its Snapshot call, run again, takes up
// the snapshot instead of taking a second one. It matches a snapshot of
// VM id carrying every one of o.Tags, or (where the site tags a snapshot
// after making it) named o.Name, which the caller makes unique; found is
// false when there is none, or only part of one (some disks). A snapshot
// found by name gets its tags.
type SnapshotFinder interface {
	FindSnapshot(ctx context.Context, id core.VMID, o *SnapshotOptions) (s Snapshot, found bool, err error)
}

// DiskExporter opens a disk (usually a snapshot's) as an Image. With a
// non-empty base, the Image's Extents report only the blocks that changed
// since the base snapshot's disk (everything else Unallocated), and ReadAt
// of changed blocks returns the new data.
type DiskExporter interface {
	OpenDisk(ctx context.Context, d core.DiskID, base core.DiskID) (disk.Image, error)
}

// Importer creates a VM from a description and disk images, streaming the
// disks into the site. It returns the new VM's ID; on error or
// cancellation it removes everything it created.
type Importer interface {
	ImportVM(ctx context.Context, spec core.VMSpec, disks []disk.Image, o *ImportOptions) (core.VMID, error)
}

// ImportOptions tune ImportVM.
type ImportOptions struct {
	Storage  string            // SR (xen) or volume type (aws); "" = default
	Networks map[string]string // source network name -> target network ID
	Tags     map[string]string
	Progress progress.Reporter
}

// Watcher streams inventory changes.
type Watcher interface {
	// Watch calls fn with each changed VM until ctx is done.
	Watch(ctx context.Context, fn func(core.VM) error) error
}

// Consoler returns the text a VM printed on its console.
type Consoler interface {
	ConsoleLog(ctx context.Context, id core.VMID) (string, error)
}
