// Package xva reads and writes XVA archives: the whole-VM exports of
// XenServer and XCP-ng (GET /export, PUT /import, `xe vm-export`).
//
// There is no current specification; the rules here are those of xen-api's
// ocaml/xapi/export.ml, import.ml and stream_vdi.ml (format version
// export_vsn 2).
//
// # Layout
//
// An XVA is a tar stream, possibly compressed as a whole with gzip (or, on
// recent hosts, zstd). Its first member is ova.xml, an XML-RPC <value>: a
// struct with a "version" struct (hostname, date, product_version,
// product_brand, build_number, xapi_major, xapi_minor, export_vsn) and an
// "objects" array of {class, id "Ref:N", snapshot: the object's record}.
// Then come the disks. Each VDI whose chunks the archive carries is cut
// into 1 MiB chunks, written as members "Ref:N/%08d" (Ref:N being the VDI's
// id), each immediately followed by its checksum member: "Ref:N/%08d.xxhash"
// holding XXH64 of the data printed as a 16-digit upper-case hex integer,
// or, from old hosts, "Ref:N/%08d.checksum" holding SHA-1 in lower-case hex.
// All-zero chunks are left out, except the first and the last. The VDIs
// follow one another sorted by their ids as strings.
//
// # Which VDIs, and where each chunk goes
//
// Like xapi's importer, ferry expects chunks for every VDI named by a
// VBD that is not a CD (of any VM in ova.xml) and whose SR is not an ISO
// library, and for every VDI of type suspend; those are the archive's VDIs,
// in id order. A VDI's chunks are read until they fill its virtual_size.
// Chunk names must be the VDI's id, a slash and 8 decimal digits, strictly
// increasing. Offsets accumulate exactly as the importer computes them:
// a chunk starts where the previous one ended plus, for each number skipped
// since the previous chunk, the length of the archive's first chunk member
// (one omitted chunk each; xapi takes that length once for the whole
// archive, not per VDI, and so does ferry). Zero-length chunks are the
// exporter's keep-alives, sent when the disk was slow to read: each takes a
// number but no room, so the chunk after it lands where the keep-alive
// stood and a chunk's offset is not its number times 1 MiB. Keep-alives'
// checksums are checked like any other. A chunk that would run past the
// VDI's size, a name out of order, a chunk not followed by its own
// checksum member, or an archive that ends before every VDI is filled is
// an error wrapping errs.ErrCorrupt that names the disk and the member.
// Members after the last VDI's chunks are ignored, as xapi ignores them.
//
// # Reading
//
// Open needs the plain tar: it indexes every chunk member's offset in the
// file (one ReadAt per chunk, through a small window; archive/tar parses the
// ustar, GNU and PAX headers) and refuses a gzip or zstd archive with
// errs.ErrUnimplemented, since those cannot be read at random; OpenStream
// reads them, decompressing on the fly. VM() describes the one VM of
// ova.xml (if there are several, the one that is not a snapshot; more than
// one such VM is refused as unimplemented): name_label, name_description,
// VCPUs_max, memory_static_max, HVM_boot_params firmware=uefi as UEFI (else
// BIOS for an HVM boot policy), other_config ferry_os_type or
// base_template_name as the OS hint; is_a_template and is_a_snapshot are
// ignored. Its Disks are its VBDs of type other than CD, in userdevice
// order (name_label, virtual_size, bootable); its NICs its VIFs in device
// order (MAC, and the name_label of the VIF's network).
//
// OpenDisk returns the disk as an Image: omitted chunks read as zeros and
// are reported Unallocated, present chunks Data. Each chunk's checksum is
// checked the first time any of it is read (a chunk read in part is read
// whole once for that), remembered in a bitmap; a mismatch is an
// errs.ErrCorrupt error naming the disk (name and Ref) and the chunk
// number. Verify checks every chunk of the archive.
//
// OpenStream reads the archive front to back (gzip and zstd are detected by
// their magic). NextDisk yields each disk as a disk.Stream whose Next
// returns each present chunk's data at its offset; every chunk is read
// whole and checked against the checksum member that follows it before it
// is returned, so no unverified byte is handed on. VDIs of the archive that
// are not disks of the VM are read and checked in passing.
//
// Refused: ova.xml over 32 MiB, nesting or value counts beyond sane bounds,
// a VDI claiming more than 1 PiB, chunk members over 16 MiB, members that
// are not regular files (links, directories, sparse files) where chunks are
// expected, more than one non-snapshot VM.
//
// # Writing
//
// Create writes a plain (uncompressed) tar that never needs seeking, with
// ustar headers (mode 0644, owner root, the time of Create), the way xapi's
// exporter lays it out: ova.xml first, then each disk of the VM in the
// order of VMSpec.Disks, then two zero blocks. Each disk is a sequential
// disk.Writer of the disk's virtual size (rounded up to a multiple of 512
// bytes); it keeps one 1 MiB chunk in memory and writes it as one piece
// (header, data, checksum member) when a write moves past it. All-zero
// chunks are left out except the first and the last; a size that is not a
// multiple of 1 MiB ends with a short last chunk, as xapi's exporter writes
// it. Should the archive's first chunk be shorter than 1 MiB (a first disk
// under 1 MiB), no chunk of the later disks is left out, since xapi's
// importer would size the gaps by that short chunk. The option
// checksum=xxhash (default) writes .xxhash members; checksum=sha1 writes
// .checksum SHA-1 members for old hosts. Other keys are refused with
// errs.ErrInvalidArgument.
//
// ova.xml is written with version {hostname "ferry", product_brand "ferry",
// xapi_major 1, xapi_minor 1 (old enough that every xapi accepts it),
// export_vsn 2} and these objects, each with every field of its class in
// xapi's datamodel that the importer reads without a default, and the
// others as xapi's exporter fills them:
//   - Ref:0, the VM: name_label, name_description, power_state Halted,
//     memory_static_min = dynamic_min = dynamic_max = static_max = target
//     = MemoryBytes (1 GiB if 0), VCPUs_max = VCPUs_at_startup = CPUs (1 if
//     0), HVM_boot_policy "BIOS order", HVM_boot_params {order: cd} plus
//     firmware: uefi for UEFI, platform {viridian false, acpi 1, apic, pae,
//     nx true} plus device-model qemu-upstream-uefi for UEFI (without it
//     the importer picks the BIOS device model),
//     actions_after_shutdown destroy, _reboot restart, _crash
//     restart, domain_type hvm, other_config {ferry_os_type: OSType} when
//     set; a name defaults to "ferry VM".
//   - a VBD per disk: userdevice = Position (all-zero positions become
//     0, 1, 2, ...; other duplicates are refused), type Disk, mode RW,
//     bootable, other_config {owner: true}.
//   - a VIF per NIC: device = its index, MAC (an empty MAC is marked
//     MAC_autogenerated), MTU 1500; xapi keeps the MAC only when importing
//     with restore=true.
//   - a network per distinct NIC network name: xapi's importer joins the
//     existing network of that name_label or creates one; a NIC with no
//     network name joins "Pool-wide network associated with eth0".
//   - a VDI per disk: name_label, virtual_size, type user; and one SR
//     (content_type user) that the VDIs point to, which the importer needs
//     to tell disks from ISOs (it creates the VDIs in the SR it is given).
//
// The ids are chosen so that the VDIs' ids sort as strings in the order of
// VMSpec.Disks (all have the same number of digits), since that is the
// order in which xapi expects their chunks.
//
// archive.Format has no field for the options; the one key, checksum, is
// documented here.
package xva
