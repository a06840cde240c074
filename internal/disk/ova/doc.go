// Package ova reads and writes OVA archives: a ustar tar holding an OVF
// descriptor, a manifest and the VM's disks (DMTF DSP0243). EC2 imports and
// exports VMs this way; VMware and VirtualBox use it.
//
// # Reading
//
// Open indexes the tar (ustar, with PAX and GNU long-name headers as Go's
// archive/tar reads them; every member's data must lie inside the file),
// then parses:
//
//   - the .ovf descriptor, which should be the first member; a later one is
//     accepted and Info's Extra says so ("ovf-first": false). Elements and
//     attributes are matched by local name, so OVF 1.x and 2.x and any
//     namespace prefixes read alike. From it come References/File
//     (ovf:href, ovf:size, which must equal the member's size),
//     DiskSection/Disk (ovf:capacity with ovf:capacityAllocationUnits such
//     as "byte * 2^30", ovf:format) and the VirtualSystem: its Name (or
//     ovf:id), AnnotationSection (Description), OperatingSystemSection
//     (vmw:osType, vbox:OSType or Description → OSType), and the
//     VirtualHardwareSection items: CPUs (ResourceType 3), memory (4, in
//     AllocationUnits, MiB by default), disks (17, HostResource
//     ovf:/disk/<id>, AddressOnParent → Position) and NICs (10, Connection
//     → Network, Address → MAC, ElementName → Name); OVF 2 StorageItem and
//     EthernetPortItem read the same. vmw:Config firmware=efi, or
//     VirtualBox's <Firmware type="EFI">, means UEFI; BIOS otherwise.
//     Disks are listed in hardware order, then any disk no item attaches;
//     the first is marked bootable.
//   - the optional .mf manifest: lines "SHA256(name)= hex", also with
//     SHA1 or SHA512 and with spaces as OpenSSL and VirtualBox write them
//     ("SHA1 (name) = hex").
//
// OpenDisk opens a disk member in place (a File over its byte range named
// "<ova>/<member>") through the registry given in OpenOptions.Disks,
// probing its format (a streamOptimized VMDK as a rule); its virtual size
// must be the descriptor's capacity, rounded up to a sector at most.
// Verify hashes every member and compares it with the manifest: a digest
// that differs, a member the manifest does not list (the manifest itself
// and a .cert excepted) and a manifest line naming a missing member are
// errors wrapping errs.ErrCorrupt that name the member. A .cert
// signature is listed in Info but not checked.
//
// OpenStream reads an OVA front to back from a non-seekable source. The
// .ovf must be the first member (otherwise errs.ErrUnimplemented: save the
// archive to a file). Each disk member is handed out by NextDisk as the
// registry's Stream over the member, hashed as it passes; its digest is
// checked when its stream ends (or when NextDisk moves on). Before the
// manifest has been seen, members are hashed with both SHA-256 and SHA-1
// and checked when it comes: a manifest after the disks (VirtualBox's
// order) is checked then, and at the latest by NextDisk's final io.EOF or
// by Close once every disk was read.
//
// Refused with errs.ErrUnimplemented: compressed (ovf:compression="gzip")
// and chunked (ovf:chunkSize) files, delta disks (ovf:parentRef), blank
// disks without a file, files outside the package, capacities given by
// properties, disk items pointing at a file instead of a disk, several
// VirtualSystems or a VirtualSystemCollection, several descriptors,
// manifests with other digests (MD5), links and GNU sparse members in the
// place of a disk. Refused as errs.ErrCorrupt: malformed tar headers and
// truncated members, duplicate members, malformed XML, unknown references,
// absurd sizes (a capacity or memory over 1 PiB, a descriptor over 16 MiB,
// a manifest over 4 MiB, more than 10,000 members), size and capacity
// mismatches.
//
// # Writing
//
// Create writes an OVF 1.0 descriptor as ovftool does: the usual
// namespaces; References with one File per disk ("<vm>-disk<N>.vmdk",
// ovf:size the member's exact byte size); DiskSection with ovf:capacity in
// bytes (the disk size rounded up to 512) and ovf:format
// "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
// NetworkSection; and a VirtualSystem with AnnotationSection (the
// description), OperatingSystemSection (CIM id 36 for Linux, 18 for
// Windows, 1 otherwise; vmw:osType when the hint is a VMware guest id)
// and a VirtualHardwareSection: System of type vmx-10, CPUs, memory in MiB
// (rounded up), LSI Logic SCSI controllers (ResourceType 6) holding the
// disks at AddressOnParent (the disks' Positions when they are distinct
// units 0-15 other than 7, in order otherwise; 15 disks per controller,
// 4 controllers), NICs (ResourceType 10, VmxNet3 or E1000, Connection the
// network, "VM Network" when none is given; Address the MAC when given),
// rasd elements in the schema's alphabetical order, and vmw:Config
// firmware=efi or bios. A VM without CPUs or memory gets 1 CPU and 1 GiB.
//
// Members come in the order DSP0243 (1.1, section 5.3) prescribes and
// ovftool and EC2 expect: the descriptor first, then the manifest, then
// the disks in References order. The standard also allows the manifest at
// the end (VirtualBox puts it there); ferry puts it second so that a
// reader streaming the archive can check each disk as it passes. The
// manifest holds "SHA256(name)= hex" lines (ovftool's form; `sha256sum
// --tag` and OpenSSL 3's "SHA2-256(" are rejected by VMware), or SHA1 lines
// with -o manifest=sha1 for old ESX hosts, for the descriptor and every
// disk.
//
// Each disk is written by NextDisk's writer: the registry's (CreateOptions.
// Disks) streamOptimized VMDK writer, sequential, whose output is hashed and
// counted on its way into the archive; its Commit finishes the member.
//
// Tar headers and the descriptor need each VMDK's byte size before its
// data; how ferry gets it depends on the target:
//
//   - On a seekable target (a disk.FileTarget, as output files are), the
//     descriptor's member is reserved at the front: its length is that of
//     the descriptor rendered with the longest possible ovf:size values, so
//     the final one always fits and is padded with trailing white space
//     (allowed after the root element). The manifest's length is known in
//     advance too (fixed-length digests), so it follows at once. Each disk
//     member's header slot is left before its data, the VMDK is streamed
//     straight into the file behind it, and the header is written once the
//     disk commits. Commit writes the descriptor and the manifest into
//     their slots and the end-of-archive blocks. No temporary space is
//     needed and every byte is written once.
//   - On a plain target (a pipe, standard output), each compressed VMDK is
//     staged in an unlinked temporary file (os.CreateTemp, so in $TMPDIR)
//     and the whole tar is written front to back at Commit. Streaming OVA
//     output therefore needs temporary disk space equal to the compressed
//     disks; memory stays bounded either way.
//
// Members larger than 8 GiB - 1 need a PAX size record. On a seekable
// target the header slot must be sized before the VMDK's size is known:
// a disk whose VMDK could exceed the ustar limit (a virtual size of about
// 7.8 GiB or more, since a streamOptimized VMDK never exceeds its virtual
// size by more than 1/64 plus 16 MiB) gets a three-block slot, a PAX 'x'
// header whose size record holds the exact size followed by the ustar
// header, used whether or not the VMDK turns out that big. Smaller disks
// get a plain ustar header. Member names are the VM's name reduced to
// [A-Za-z0-9._-] and 64 bytes, so they always fit the ustar name field.
//
// Create options (-o): manifest=sha256 (default) | sha1; nic_type=vmxnet3
// (default) | e1000. Unknown keys are refused with errs.ErrInvalidArgument.
package ova
