package ova

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
)

// Limits on what a descriptor may claim; anything beyond is refused as
// corrupt before it is used.
const (
	maxDescriptorBytes = 16 << 20
	maxDiskBytes       = 1 << 50 // 1 PiB
	maxMemoryBytes     = 1 << 50
	maxCPUs            = 1 << 16
	maxItems           = 4096
)

// streamOptimizedFormat is the ovf:format URI of a streamOptimized VMDK.
const streamOptimizedFormat = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

// The descriptor as encoding/xml sees it. Elements and attributes are
// matched by local name only, so OVF 1.x and 2.x namespaces, and any
// prefixes, read the same.
type envelope struct {
	XMLName    xml.Name
	Files      []ovfFile    `xml:"References>File"`
	Disks      []ovfDisk    `xml:"DiskSection>Disk"`
	Systems    []ovfSystem  `xml:"VirtualSystem"`
	Collection *struct{}    `xml:"VirtualSystemCollection"`
	Networks   []ovfNetwork `xml:"NetworkSection>Network"`
}

type ovfFile struct {
	ID          string `xml:"id,attr"`
	Href        string `xml:"href,attr"`
	Size        string `xml:"size,attr"`
	Compression string `xml:"compression,attr"`
	ChunkSize   string `xml:"chunkSize,attr"`
}

type ovfDisk struct {
	DiskID    string `xml:"diskId,attr"`
	FileRef   string `xml:"fileRef,attr"`
	Capacity  string `xml:"capacity,attr"`
	Units     string `xml:"capacityAllocationUnits,attr"`
	Format    string `xml:"format,attr"`
	ParentRef string `xml:"parentRef,attr"`
}

type ovfNetwork struct {
	Name string `xml:"name,attr"`
}

type ovfSystem struct {
	ID         string        `xml:"id,attr"`
	Name       string        `xml:"Name"`
	Annotation string        `xml:"AnnotationSection>Annotation"`
	OS         *ovfOS        `xml:"OperatingSystemSection"`
	Hardware   []ovfHW       `xml:"VirtualHardwareSection"`
	VBox       *vboxFirmware `xml:"Machine>Hardware>Firmware"`
}

// vboxFirmware is VirtualBox's <vbox:Machine><Hardware><Firmware type=…>.
type vboxFirmware struct {
	Type string `xml:"type,attr"`
}

type ovfOS struct {
	ID          string `xml:"id,attr"`
	OSType      string `xml:"osType,attr"` // vmw:osType
	Description string `xml:"Description"`
	VBoxOSType  string `xml:"OSType"` // vbox:OSType
}

type ovfHW struct {
	Configs []vmwConfig `xml:"Config"`
	// Items keeps Item, StorageItem (OVF 2) and EthernetPortItem (OVF 2)
	// in document order; other unknown children land here too and are
	// skipped by name.
	Items []rasdItem `xml:",any"`
}

type vmwConfig struct {
	Key   string `xml:"key,attr"`
	Value string `xml:"value,attr"`
}

type rasdItem struct {
	XMLName         xml.Name
	ResourceType    string   `xml:"ResourceType"`
	ResourceSubType string   `xml:"ResourceSubType"`
	VirtualQuantity string   `xml:"VirtualQuantity"`
	AllocationUnits string   `xml:"AllocationUnits"`
	HostResource    []string `xml:"HostResource"`
	AddressOnParent string   `xml:"AddressOnParent"`
	Address         string   `xml:"Address"`
	Connection      []string `xml:"Connection"`
	ElementName     string   `xml:"ElementName"`
	InstanceID      string   `xml:"InstanceID"`
	Parent          string   `xml:"Parent"`
}

// diskRef ties one VM disk to its file in the package.
type diskRef struct {
	id          string
	fileID      string
	href        string // member name
	fileSize    int64  // ovf:size, -1 when absent
	capacity    int64
	format      string // ovf:format
	compression string
	chunkSize   string
}

// isVMDK reports whether the descriptor says the disk is a VMDK.
func (d diskRef) isVMDK() bool { return strings.Contains(strings.ToLower(d.format), "vmdk") }

// descriptor is a parsed OVF descriptor.
type descriptor struct {
	vm    core.VMSpec
	disks []diskRef // parallel to vm.Disks
}

// parseDescriptor parses an OVF descriptor. name (the OVA and member) is
// used in messages.
func parseDescriptor(name string, b []byte) (*descriptor, error) {
	corrupt := func(format string, a ...any) error {
		return fmt.Errorf("ova %s: %s: %w", name, fmt.Sprintf(format, a...), errs.ErrCorrupt)
	}
	unimpl := func(format string, a ...any) error {
		return fmt.Errorf("ova %s: %s: %w", name, fmt.Sprintf(format, a...), errs.ErrUnimplemented)
	}
	var env envelope
	dec := xml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&env); err != nil {
		return nil, corrupt("descriptor is not well-formed XML: %v", err)
	}
	if env.XMLName.Local != "Envelope" {
		return nil, corrupt("descriptor root element is <%s>, not an OVF <Envelope>", env.XMLName.Local)
	}
	if env.Collection != nil {
		return nil, unimpl("a VirtualSystemCollection (several VMs in one package)")
	}
	switch len(env.Systems) {
	case 0:
		return nil, corrupt("descriptor has no VirtualSystem")
	case 1:
	default:
		return nil, unimpl("%d VirtualSystems in one package", len(env.Systems))
	}
	vs := env.Systems[0]

	files := map[string]ovfFile{}
	hrefs := map[string]bool{}
	for _, f := range env.Files {
		f.ID, f.Href = strings.TrimSpace(f.ID), strings.TrimSpace(f.Href)
		if f.ID == "" || f.Href == "" {
			return nil, corrupt("References has a File without ovf:id or ovf:href")
		}
		if _, dup := files[f.ID]; dup {
			return nil, corrupt("two Files with ovf:id %q", f.ID)
		}
		href := cleanName(f.Href)
		if hrefs[href] {
			return nil, corrupt("two Files with ovf:href %q", f.Href)
		}
		hrefs[href] = true
		files[f.ID] = f
	}

	// DiskSection
	disks := map[string]*diskRef{}
	var diskOrder []string
	for _, d := range env.Disks {
		id := strings.TrimSpace(d.DiskID)
		if id == "" {
			return nil, corrupt("DiskSection has a Disk without ovf:diskId")
		}
		if _, dup := disks[id]; dup {
			return nil, corrupt("two Disks with ovf:diskId %q", id)
		}
		if strings.TrimSpace(d.ParentRef) != "" {
			return nil, unimpl("disk %s is a delta disk of %s (ovf:parentRef)", id, d.ParentRef)
		}
		ref := strings.TrimSpace(d.FileRef)
		if ref == "" {
			return nil, unimpl("disk %s has no file (a blank disk created on import)", id)
		}
		f, ok := files[ref]
		if !ok {
			return nil, corrupt("disk %s names file %q, which References does not list", id, ref)
		}
		if strings.Contains(f.Href, "://") {
			return nil, unimpl("disk %s: file %s is outside the package (%s)", id, ref, f.Href)
		}
		dr := &diskRef{id: id, fileID: ref, href: cleanName(f.Href), fileSize: -1, format: strings.TrimSpace(d.Format),
			compression: strings.TrimSpace(f.Compression), chunkSize: strings.TrimSpace(f.ChunkSize)}
		for _, o := range diskOrder {
			if disks[o].fileID == ref {
				return nil, corrupt("disks %s and %s name the same file %s", o, id, ref)
			}
		}
		if s := strings.TrimSpace(f.Size); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				return nil, corrupt("file %s: ovf:size %q is not a byte count", ref, f.Size)
			}
			dr.fileSize = n
		}
		capStr := strings.TrimSpace(d.Capacity)
		if strings.HasPrefix(capStr, "${") {
			return nil, unimpl("disk %s: capacity given by property %s", id, capStr)
		}
		q, err := strconv.ParseInt(capStr, 10, 64)
		if err != nil || q < 0 {
			return nil, corrupt("disk %s: ovf:capacity %q is not a number", id, d.Capacity)
		}
		mult, ok := parseUnits(d.Units, 1)
		if !ok {
			return nil, corrupt("disk %s: ovf:capacityAllocationUnits %q is not a byte unit", id, d.Units)
		}
		hi, lo := bits.Mul64(uint64(q), uint64(mult))
		if hi != 0 || lo > maxDiskBytes {
			return nil, corrupt("disk %s: capacity %s × %s is over the %d-byte limit", id, capStr, d.Units, int64(maxDiskBytes))
		}
		dr.capacity = int64(lo)
		disks[id] = dr
		diskOrder = append(diskOrder, id)
	}

	vm := core.VMSpec{
		Name:        strings.TrimSpace(vs.Name),
		Description: strings.TrimSpace(vs.Annotation),
		Firmware:    core.BIOS,
	}
	if vm.Name == "" {
		vm.Name = strings.TrimSpace(vs.ID)
	}
	if vs.OS != nil {
		vm.OSType = firstNonEmpty(vs.OS.OSType, vs.OS.VBoxOSType, vs.OS.Description)
	}
	if vs.VBox != nil && strings.HasPrefix(strings.ToUpper(strings.TrimSpace(vs.VBox.Type)), "EFI") {
		vm.Firmware = core.UEFI
	}
	var d descriptor
	used := map[string]bool{}
	if len(vs.Hardware) > 0 {
		hw := vs.Hardware[0]
		for _, c := range hw.Configs {
			if strings.TrimSpace(c.Key) == "firmware" {
				switch strings.ToLower(strings.TrimSpace(c.Value)) {
				case "efi":
					vm.Firmware = core.UEFI
				case "bios":
					vm.Firmware = core.BIOS
				}
			}
		}
		if len(hw.Items) > maxItems {
			return nil, corrupt("VirtualHardwareSection has %d items, more than %d", len(hw.Items), maxItems)
		}
		for _, it := range hw.Items {
			switch it.XMLName.Local {
			case "Item", "StorageItem", "EthernetPortItem":
			default:
				continue
			}
			rt := strings.TrimSpace(it.ResourceType)
			switch rt {
			case "3": // processor
				n, err := strconv.ParseInt(strings.TrimSpace(it.VirtualQuantity), 10, 64)
				if err != nil || n < 1 || n > maxCPUs {
					return nil, corrupt("CPU item: VirtualQuantity %q is not a CPU count from 1 to %d", it.VirtualQuantity, maxCPUs)
				}
				vm.CPUs = int(n)
			case "4": // memory
				n, err := strconv.ParseInt(strings.TrimSpace(it.VirtualQuantity), 10, 64)
				if err != nil || n < 0 {
					return nil, corrupt("memory item: VirtualQuantity %q is not a number", it.VirtualQuantity)
				}
				mult, ok := parseUnits(it.AllocationUnits, 1<<20)
				if !ok {
					return nil, corrupt("memory item: AllocationUnits %q is not a byte unit", it.AllocationUnits)
				}
				hi, lo := bits.Mul64(uint64(n), uint64(mult))
				if hi != 0 || lo > maxMemoryBytes {
					return nil, corrupt("memory item: %d × %s is over the %d-byte limit", n, it.AllocationUnits, int64(maxMemoryBytes))
				}
				vm.MemoryBytes = int64(lo)
			case "17": // disk drive
				if len(it.HostResource) == 0 {
					continue // an empty drive
				}
				id, isFile := hostDisk(it.HostResource[0])
				if isFile {
					return nil, unimpl("disk item %q refers to a file (%s) instead of a DiskSection disk", it.ElementName, it.HostResource[0])
				}
				dr, ok := disks[id]
				if !ok {
					return nil, corrupt("disk item %q refers to disk %q, which DiskSection does not list", it.ElementName, it.HostResource[0])
				}
				if used[id] {
					return nil, corrupt("disk %s is attached twice", id)
				}
				used[id] = true
				pos := len(d.disks)
				if s := strings.TrimSpace(it.AddressOnParent); s != "" {
					n, err := strconv.Atoi(s)
					if err != nil || n < 0 || n > 1<<16 {
						return nil, corrupt("disk item %q: AddressOnParent %q is not a slot number", it.ElementName, s)
					}
					pos = n
				}
				vm.Disks = append(vm.Disks, core.DiskSpec{
					Name:     firstNonEmpty(it.ElementName, id),
					Size:     dr.capacity,
					Position: pos,
				})
				d.disks = append(d.disks, *dr)
			case "10": // ethernet adapter
				nic := core.NICSpec{Name: strings.TrimSpace(it.ElementName), MAC: strings.TrimSpace(it.Address)}
				if len(it.Connection) > 0 {
					nic.Network = strings.TrimSpace(it.Connection[0])
				}
				vm.NICs = append(vm.NICs, nic)
			}
		}
	}
	// Disks that no hardware item attaches still belong to the package.
	for _, id := range diskOrder {
		if !used[id] {
			dr := disks[id]
			vm.Disks = append(vm.Disks, core.DiskSpec{Name: id, Size: dr.capacity, Position: len(d.disks)})
			d.disks = append(d.disks, *dr)
		}
	}
	if len(vm.Disks) > 0 {
		vm.Disks[0].Bootable = true
	}
	d.vm = vm
	return &d, nil
}

// hostDisk extracts the disk id from a HostResource such as
// "ovf:/disk/vmdisk1", "/disk/vmdisk1" or "ovf://disk/vmdisk1"; isFile is
// set for "ovf:/file/<id>" references.
func hostDisk(s string) (id string, isFile bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "ovf:")
	s = strings.TrimLeft(s, "/")
	if rest, ok := strings.CutPrefix(s, "file/"); ok {
		return rest, true
	}
	return strings.TrimPrefix(s, "disk/"), false
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			return s
		}
	}
	return ""
}

// parseUnits returns the byte multiplier of an OVF allocation unit: the
// programmatic units of DSP0004 ("byte", "byte * 2^30", "byte*1024") and
// the legacy names some writers use (KiloBytes, MegaBytes, GigaBytes, MB,
// ...). An empty unit means def.
func parseUnits(s string, def int64) (int64, bool) {
	t := strings.ToLower(strings.Join(strings.Fields(s), ""))
	switch t {
	case "":
		return def, true
	case "kb", "kib", "kilobytes":
		return 1 << 10, true
	case "mb", "mib", "megabytes":
		return 1 << 20, true
	case "gb", "gib", "gigabytes":
		return 1 << 30, true
	case "tb", "tib", "terabytes":
		return 1 << 40, true
	}
	const limit = 1 << 62
	mult := int64(1)
	sawByte := false
	for _, tok := range strings.Split(t, "*") {
		var v int64
		switch {
		case tok == "byte" || tok == "bytes":
			if sawByte {
				return 0, false
			}
			sawByte = true
			continue
		case strings.Contains(tok, "^"):
			b, e, _ := strings.Cut(tok, "^")
			base, err1 := strconv.ParseInt(b, 10, 64)
			exp, err2 := strconv.ParseInt(e, 10, 64)
			if err1 != nil || err2 != nil || base < 1 || base > 1<<20 || exp < 0 || exp > 62 {
				return 0, false
			}
			v = 1
			for range exp {
				if v > limit/base {
					return 0, false
				}
				v *= base
			}
		default:
			n, err := strconv.ParseInt(tok, 10, 64)
			if err != nil || n < 1 {
				return 0, false
			}
			v = n
		}
		if v > limit/mult {
			return 0, false
		}
		mult *= v
	}
	return mult, sawByte
}
