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

// VMID identifies a VM within its site (a XAPI VM UUID, an EC2 instance ID).
type VMID string

// DiskID identifies a disk within its site (a VDI UUID, an EBS volume ID).
type DiskID string

// SnapshotID identifies a point-in-time copy within its site (a XAPI VM
// snapshot UUID, an EC2 snapshot ID).
type SnapshotID string

// SiteName names a registered site ("dc1-pool", "aws-eu-west-1").
type SiteName string

// PowerState is a VM's power state, normalised across hypervisors.
type PowerState string

const (
	Running   PowerState = "running"
	Halted    PowerState = "halted"
	Suspended PowerState = "suspended"
	Paused    PowerState = "paused"
	Pending   PowerState = "pending" // starting or stopping
	Unknown   PowerState = "unknown"
)

// VM is one VM as a site reports it.
type VM struct {
	Site        SiteName          `json:"site"`
	ID          VMID              `json:"id"`
	Name        string            `json:"name"`
	PowerState  PowerState        `json:"power_state"`
	CPUs        int               `json:"cpus"`
	MemoryBytes int64             `json:"memory_bytes"`
	Firmware    Firmware          `json:"firmware,omitempty"`
	Host        string            `json:"host,omitempty"`          // XAPI host name, EC2 availability zone
	InstanceTyp string            `json:"instance_type,omitempty"` // EC2
	Disks       []Disk            `json:"disks"`
	NICs        []NIC             `json:"nics,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// Disk is one disk attached to a VM.
type Disk struct {
	ID       DiskID `json:"id"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Position int    `json:"position"`
	Bootable bool   `json:"bootable,omitempty"`
	Storage  string `json:"storage,omitempty"` // SR name, EBS volume type
}

// NIC is one network interface of a VM.
type NIC struct {
	Name    string `json:"name,omitempty"`
	Network string `json:"network,omitempty"`
	MAC     string `json:"mac,omitempty"`
	IP      string `json:"ip,omitempty"`
}

// Storage is a place disks live (a XAPI SR, an EBS volume type in a zone).
type Storage struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	SizeBytes int64  `json:"size_bytes"`
	FreeBytes int64  `json:"free_bytes"`
}

// Network is a network VMs attach to (a XAPI network, a VPC subnet).
type Network struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}
