// Package core holds ferry's domain types: VMs, disks, NICs and their
// descriptions. It does no I/O.
package core

// Firmware is how a VM boots.
type Firmware string

const (
	BIOS Firmware = "bios"
	UEFI Firmware = "uefi"
)

// VMSpec describes a VM independently of any hypervisor: what an OVF or
// XVA descriptor holds, what a migration plan maps, what an import creates.
type VMSpec struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	CPUs        int      `json:"cpus"`
	MemoryBytes int64    `json:"memory_bytes"`
	Firmware    Firmware `json:"firmware,omitempty"`
	// OSType is a free-form hint ("linux", "windows", an OVF OS id name).
	OSType string     `json:"os_type,omitempty"`
	Disks  []DiskSpec `json:"disks"`
	NICs   []NICSpec  `json:"nics,omitempty"`
}

// DiskSpec is one disk of a VM.
type DiskSpec struct {
	Name string `json:"name"`
	// Size is the virtual size in bytes.
	Size     int64 `json:"size"`
	Bootable bool  `json:"bootable,omitempty"`
	// Position is the disk's slot on its controller (XenServer's userdevice,
	// OVF's AddressOnParent).
	Position int `json:"position"`
}

// NICSpec is one network interface of a VM.
type NICSpec struct {
	Name    string `json:"name,omitempty"`
	Network string `json:"network,omitempty"`
	MAC     string `json:"mac,omitempty"`
}
