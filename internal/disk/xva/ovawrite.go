package xva

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"strconv"
	"time"

	"github.com/ferry-project/ferry/internal/core"
)

// An XML-RPC value being written, in the shapes xapi's exporter uses:
// strings and 64-bit ints as bare <value>text</value>, booleans as
// <boolean>0|1</boolean>, maps as <struct>, sets and ref lists as <array>.
type wv interface{ put(b *bytes.Buffer) }

type (
	wstr    string
	wbool   bool
	wdouble float64
	wdate   string
	wstruct []wfield
	warray  []wv
)

type wfield struct {
	name string
	v    wv
}

func (s wstr) put(b *bytes.Buffer) {
	b.WriteString("<value>")
	xml.EscapeText(b, []byte(s))
	b.WriteString("</value>")
}

func (v wbool) put(b *bytes.Buffer) {
	if v {
		b.WriteString("<value><boolean>1</boolean></value>")
	} else {
		b.WriteString("<value><boolean>0</boolean></value>")
	}
}

func (v wdouble) put(b *bytes.Buffer) {
	b.WriteString("<value><double>" + strconv.FormatFloat(float64(v), 'g', -1, 64) + "</double></value>")
}

func (v wdate) put(b *bytes.Buffer) {
	b.WriteString("<value><dateTime.iso8601>" + string(v) + "</dateTime.iso8601></value>")
}

func (s wstruct) put(b *bytes.Buffer) {
	b.WriteString("<value><struct>")
	for _, f := range s {
		b.WriteString("<member><name>")
		xml.EscapeText(b, []byte(f.name))
		b.WriteString("</name>")
		f.v.put(b)
		b.WriteString("</member>")
	}
	b.WriteString("</struct></value>")
}

func (a warray) put(b *bytes.Buffer) {
	b.WriteString("<value><array><data>")
	for _, v := range a {
		v.put(b)
	}
	b.WriteString("</data></array></value>")
}

func wint(n int64) wstr { return wstr(strconv.FormatInt(n, 10)) }

// wmap is a string map in the order given (pairs of key, value).
func wmap(kv ...string) wstruct {
	s := make(wstruct, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		s = append(s, wfield{kv[i], wstr(kv[i+1])})
	}
	return s
}

func wrefs(refs []string) warray {
	a := make(warray, len(refs))
	for i, r := range refs {
		a[i] = wstr(r)
	}
	return a
}

const (
	nullRef   = "OpaqueRef:NULL"
	never     = "19700101T00:00:00Z"
	defaultMT = 1500
	// defaultNetwork is the name XenServer gives the network of a host's
	// first NIC; a NIC with no network name joins it on import.
	defaultNetwork = "Pool-wide network associated with eth0"
)

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// layout is the set of refs the writer gives the objects it exports.
type layout struct {
	vm       string
	vbds     []string
	vifs     []string
	nets     []string // one per distinct network name
	netNames []string
	nicNet   []int // NIC i → index into nets
	sr       string
	vdis     []string
}

// newLayout numbers the objects. VDI refs all have the same number of
// digits, so that sorting them as strings, which is how xapi orders the
// disks in the archive, keeps the VM's disk order.
func newLayout(vm *core.VMSpec) *layout {
	l := &layout{}
	n := 0
	next := func() string { n++; return "Ref:" + strconv.Itoa(n-1) }
	l.vm = next()
	for range vm.Disks {
		l.vbds = append(l.vbds, next())
	}
	for range vm.NICs {
		l.vifs = append(l.vifs, next())
	}
	for _, nic := range vm.NICs {
		name := nic.Network
		if name == "" {
			name = defaultNetwork
		}
		j := -1
		for k, nn := range l.netNames {
			if nn == name {
				j = k
			}
		}
		if j < 0 {
			j = len(l.nets)
			l.nets = append(l.nets, next())
			l.netNames = append(l.netNames, name)
		}
		l.nicNet = append(l.nicNet, j)
	}
	l.sr = next()
	base := 10
	for base < n || 9*base < len(vm.Disks) {
		base *= 10
	}
	for i := range vm.Disks {
		l.vdis = append(l.vdis, "Ref:"+strconv.Itoa(base+i))
	}
	return l
}

// ovaXML renders the descriptor: a version struct and the VM, VBD, VIF,
// network, VDI and SR records, with every field xapi's importer reads
// without a default and the rest as xapi's exporter writes them.
func ovaXML(vm *core.VMSpec, l *layout, when time.Time) []byte {
	objects := warray{}
	obj := func(class, id string, rec wstruct) {
		objects = append(objects, wstruct{{"class", wstr(class)}, {"id", wstr(id)}, {"snapshot", rec}})
	}
	mem := wint(vm.MemoryBytes)
	cpus := wint(int64(vm.CPUs))
	bootParams := wmap("order", "cd")
	platform := wmap("viridian", "false", "acpi", "1", "apic", "true", "pae", "true", "nx", "true")
	if vm.Firmware == core.UEFI {
		bootParams = wmap("order", "cd", "firmware", "uefi")
		// The importer gives a VM without a device model the BIOS one
		// (qemu-upstream-compat); UEFI needs its own.
		platform = append(platform, wfield{"device-model", wstr("qemu-upstream-uefi")})
	}
	otherConfig := wstruct{}
	if vm.OSType != "" {
		otherConfig = wmap(osTypeKey, vm.OSType)
	}
	obj("VM", l.vm, wstruct{
		{"uuid", wstr(newUUID())},
		{"allowed_operations", warray{}},
		{"current_operations", wstruct{}},
		{"name_label", wstr(vm.Name)},
		{"name_description", wstr(vm.Description)},
		{"power_state", wstr("Halted")},
		{"user_version", wint(1)},
		{"is_a_template", wbool(false)},
		{"is_default_template", wbool(false)},
		{"suspend_VDI", wstr(nullRef)},
		{"resident_on", wstr(nullRef)},
		{"scheduled_to_be_resident_on", wstr(nullRef)},
		{"affinity", wstr(nullRef)},
		{"memory_overhead", wint(0)},
		{"memory_target", mem},
		{"memory_static_max", mem},
		{"memory_dynamic_max", mem},
		{"memory_dynamic_min", mem},
		{"memory_static_min", mem},
		{"VCPUs_params", wstruct{}},
		{"VCPUs_max", cpus},
		{"VCPUs_at_startup", cpus},
		{"actions_after_softreboot", wstr("soft_reboot")},
		{"actions_after_shutdown", wstr("destroy")},
		{"actions_after_reboot", wstr("restart")},
		{"actions_after_crash", wstr("restart")},
		{"consoles", warray{}},
		{"VIFs", wrefs(l.vifs)},
		{"VBDs", wrefs(l.vbds)},
		{"VUSBs", warray{}},
		{"crash_dumps", warray{}},
		{"VTPMs", warray{}},
		{"PV_bootloader", wstr("")},
		{"PV_kernel", wstr("")},
		{"PV_ramdisk", wstr("")},
		{"PV_args", wstr("")},
		{"PV_bootloader_args", wstr("")},
		{"PV_legacy_args", wstr("")},
		{"HVM_boot_policy", wstr("BIOS order")},
		{"HVM_boot_params", bootParams},
		{"HVM_shadow_multiplier", wdouble(1)},
		{"platform", platform},
		{"PCI_bus", wstr("")},
		{"other_config", otherConfig},
		{"domid", wint(-1)},
		{"domarch", wstr("")},
		{"last_boot_CPU_flags", wstruct{}},
		{"is_control_domain", wbool(false)},
		{"metrics", wstr(nullRef)},
		{"guest_metrics", wstr(nullRef)},
		{"last_booted_record", wstr("")},
		{"recommendations", wstr("")},
		{"xenstore_data", wstruct{}},
		{"ha_always_run", wbool(false)},
		{"ha_restart_priority", wstr("")},
		{"is_a_snapshot", wbool(false)},
		{"snapshot_of", wstr(nullRef)},
		{"snapshots", warray{}},
		{"snapshot_time", wdate(never)},
		{"transportable_snapshot_id", wstr("")},
		{"blobs", wstruct{}},
		{"tags", warray{}},
		{"blocked_operations", wstruct{}},
		{"snapshot_info", wstruct{}},
		{"snapshot_metadata", wstr("")},
		{"parent", wstr(nullRef)},
		{"children", warray{}},
		{"bios_strings", wstruct{}},
		{"protection_policy", wstr(nullRef)},
		{"is_snapshot_from_vmpp", wbool(false)},
		{"snapshot_schedule", wstr(nullRef)},
		{"is_vmss_snapshot", wbool(false)},
		{"appliance", wstr(nullRef)},
		{"start_delay", wint(0)},
		{"shutdown_delay", wint(0)},
		{"order", wint(0)},
		{"VGPUs", warray{}},
		{"attached_PCIs", warray{}},
		{"suspend_SR", wstr(nullRef)},
		{"version", wint(0)},
		{"generation_id", wstr("0:0")},
		{"hardware_platform_version", wint(0)},
		{"has_vendor_device", wbool(false)},
		{"requires_reboot", wbool(false)},
		{"reference_label", wstr("")},
		{"domain_type", wstr("hvm")},
		{"NVRAM", wstruct{}},
	})
	for i, d := range vm.Disks {
		obj("VBD", l.vbds[i], wstruct{
			{"uuid", wstr(newUUID())},
			{"allowed_operations", warray{}},
			{"current_operations", wstruct{}},
			{"VM", wstr(l.vm)},
			{"VDI", wstr(l.vdis[i])},
			{"device", wstr("")},
			{"userdevice", wstr(strconv.Itoa(d.Position))},
			{"bootable", wbool(d.Bootable)},
			{"mode", wstr("RW")},
			{"type", wstr("Disk")},
			{"unpluggable", wbool(false)},
			{"storage_lock", wbool(false)},
			{"empty", wbool(false)},
			{"other_config", wmap("owner", "true")},
			{"currently_attached", wbool(false)},
			{"status_code", wint(0)},
			{"status_detail", wstr("")},
			{"runtime_properties", wstruct{}},
			{"qos_algorithm_type", wstr("")},
			{"qos_algorithm_params", wstruct{}},
			{"qos_supported_algorithms", warray{}},
			{"metrics", wstr(nullRef)},
		})
	}
	for i, nic := range vm.NICs {
		obj("VIF", l.vifs[i], wstruct{
			{"uuid", wstr(newUUID())},
			{"allowed_operations", warray{}},
			{"current_operations", wstruct{}},
			{"device", wstr(strconv.Itoa(i))},
			{"network", wstr(l.nets[l.nicNet[i]])},
			{"VM", wstr(l.vm)},
			{"MAC", wstr(nic.MAC)},
			{"MTU", wint(defaultMT)},
			{"other_config", wstruct{}},
			{"currently_attached", wbool(false)},
			{"status_code", wint(0)},
			{"status_detail", wstr("")},
			{"runtime_properties", wstruct{}},
			{"qos_algorithm_type", wstr("")},
			{"qos_algorithm_params", wstruct{}},
			{"qos_supported_algorithms", warray{}},
			{"metrics", wstr(nullRef)},
			{"MAC_autogenerated", wbool(nic.MAC == "")},
			{"locking_mode", wstr("network_default")},
			{"ipv4_allowed", warray{}},
			{"ipv6_allowed", warray{}},
			{"ipv4_configuration_mode", wstr("None")},
			{"ipv4_addresses", warray{}},
			{"ipv4_gateway", wstr("")},
			{"ipv6_configuration_mode", wstr("None")},
			{"ipv6_addresses", warray{}},
			{"ipv6_gateway", wstr("")},
		})
	}
	for j, net := range l.nets {
		var vifs []string
		for i := range vm.NICs {
			if l.nicNet[i] == j {
				vifs = append(vifs, l.vifs[i])
			}
		}
		obj("network", net, wstruct{
			{"uuid", wstr(newUUID())},
			{"name_label", wstr(l.netNames[j])},
			{"name_description", wstr("")},
			{"allowed_operations", warray{}},
			{"current_operations", wstruct{}},
			{"VIFs", wrefs(vifs)},
			{"PIFs", warray{}},
			{"MTU", wint(defaultMT)},
			{"other_config", wstruct{}},
			{"bridge", wstr("")},
			{"managed", wbool(true)},
			{"blobs", wstruct{}},
			{"tags", warray{}},
			{"default_locking_mode", wstr("unlocked")},
			{"assigned_ips", wstruct{}},
			{"purpose", warray{}},
		})
	}
	for i, d := range vm.Disks {
		obj("VDI", l.vdis[i], wstruct{
			{"uuid", wstr(newUUID())},
			{"name_label", wstr(d.Name)},
			{"name_description", wstr("")},
			{"allowed_operations", warray{}},
			{"current_operations", wstruct{}},
			{"SR", wstr(l.sr)},
			{"VBDs", wrefs([]string{l.vbds[i]})},
			{"crash_dumps", warray{}},
			{"virtual_size", wint(d.Size)},
			{"physical_utilisation", wint(0)},
			{"type", wstr("user")},
			{"sharable", wbool(false)},
			{"read_only", wbool(false)},
			{"other_config", wstruct{}},
			{"storage_lock", wbool(false)},
			{"location", wstr("")},
			{"managed", wbool(true)},
			{"missing", wbool(false)},
			{"parent", wstr(nullRef)},
			{"xenstore_data", wstruct{}},
			{"sm_config", wstruct{}},
			{"is_a_snapshot", wbool(false)},
			{"snapshot_of", wstr(nullRef)},
			{"snapshots", warray{}},
			{"snapshot_time", wdate(never)},
			{"tags", warray{}},
			{"allow_caching", wbool(false)},
			{"on_boot", wstr("persist")},
			{"metadata_of_pool", wstr(nullRef)},
			{"metadata_latest", wbool(false)},
			{"is_tools_iso", wbool(false)},
			{"cbt_enabled", wbool(false)},
		})
	}
	obj("SR", l.sr, wstruct{
		{"uuid", wstr(newUUID())},
		{"name_label", wstr("ferry export")},
		{"name_description", wstr("")},
		{"allowed_operations", warray{}},
		{"current_operations", wstruct{}},
		{"VDIs", wrefs(l.vdis)},
		{"PBDs", warray{}},
		{"virtual_allocation", wint(0)},
		{"physical_utilisation", wint(0)},
		{"physical_size", wint(0)},
		{"type", wstr("ext")},
		{"content_type", wstr("user")},
		{"shared", wbool(false)},
		{"other_config", wstruct{}},
		{"tags", warray{}},
		{"sm_config", wstruct{}},
		{"blobs", wstruct{}},
		{"local_cache_enabled", wbool(false)},
		{"introduced_by", wstr(nullRef)},
		{"clustered", wbool(false)},
		{"is_tools_sr", wbool(false)},
	})
	header := wstruct{
		{"version", wstruct{
			{"hostname", wstr("ferry")},
			{"date", wstr(when.UTC().Format("2006-01-02"))},
			{"product_version", wstr("1.0")},
			{"product_brand", wstr("ferry")},
			{"build_number", wstr("ferry")},
			{"xapi_major", wint(xapiMajor)},
			{"xapi_minor", wint(xapiMinor)},
			{"export_vsn", wint(2)},
		}},
		{"objects", objects},
	}
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>`)
	header.put(&b)
	return b.Bytes()
}

// The xapi version the descriptor claims. An importing host refuses an
// archive from a newer xapi than itself, so ferry claims an old one that
// every released XenServer and XCP-ng (xapi 1.x and later) accepts.
const (
	xapiMajor = 1
	xapiMinor = 1
)
