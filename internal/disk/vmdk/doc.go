// Package vmdk reads and writes VMware virtual disks (VMDK, VMware Virtual
// Disk Format 1.1).
//
// # Reading
//
// Open takes either a hosted sparse extent file (magic KDMV, with its
// descriptor embedded) or a descriptor file ("# Disk DescriptorFile", or
// python3-vmdkstream's "# Disk Descriptor File") whose extents are opened
// relative to the descriptor's directory:
//
//   - monolithicSparse: grain directory → grain tables → grains; the
//     redundant directory is ignored; zeroed-grain entries (flag bit 2)
//     read as zero extents.
//   - streamOptimized: deflated grains behind {LBA, size} markers. The
//     grain directory is found through the header, or, when the header
//     says GD_AT_END, through the footer in the last three sectors
//     (VMware's layout). qemu's layout, tables at the front and no
//     markers after the grains, reads too.
//   - monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs and
//     the other descriptor types whose extents are SPARSE, FLAT, VMFS or
//     ZERO.
//   - Delta disks (parentCID not ffffffff) read their parent through
//     OpenOptions.OpenBacking(parentFileNameHint, "vmdk") and show it
//     through their unallocated grains; a parent whose CID differs is
//     logged, not refused.
//
// Grains may be any power of two from 8 sectors to 16 MiB; tables any power
// of two from 128 to 65536 entries. Grain tables are cached (32 MiB per
// extent); inflated grains are cached when read in part (16 MiB), and a
// read covering several compressed grains inflates them in parallel.
// Contiguous uncompressed grains are read with one ReadAt. Flat extents
// report file-system holes (SEEK_DATA) as zero extents. Images implement
// disk.Checker for their sparse extents.
//
// OpenStream reads a streamOptimized disk front to back from a
// non-seekable source: the header at offset 0 gives the capacity, then
// markers are read in order and grains inflated in parallel a few ahead.
// Grains must come in ascending LBA order; a qemu-layout stream whose
// grains do not is refused (open the file instead).
//
// Refused with errs.ErrUnimplemented, naming the feature: seSparse, vmfsSparse
// (COWD) redo logs, raw device mappings (vmfsRDM, fullDevice, ...),
// unknown createTypes and extent types, encrypted disks (encryption.* keys),
// compression algorithms other than deflate, sparse header versions above
// 3 and unknown incompatible flags, extent files outside the descriptor's
// directory (absolute paths or ".."). Refused with errs.ErrCorrupt: a
// capacity over 64 TiB, bad grain or table sizes, a grain directory over
// 256 MiB or a descriptor over 1 MiB, tables or grains outside the file or
// overlapping the header, descriptor, directory or each other, damaged
// markers, zlib streams or footers, and newline-damaged headers.
//
// # Writing
//
// Create writes three subformats (-o subformat=...):
//
// streamOptimized, for EC2, OVA and ESXi, in VMware's layout exactly:
//
//	sector 0        header: version 3, flags 0x30001 (newline test,
//	                compressed grains, markers), grain 128 sectors,
//	                512-entry tables, gdOffset GD_AT_END, overHead 128
//	sectors 1-20    descriptor: createType="streamOptimized", one RDONLY
//	                SPARSE extent, ddb.adapterType "lsilogic",
//	                ddb.virtualHWVersion "8" (as VMware's own stream files)
//	up to sector 128  zeros
//	grains          in LBA order: {lba, size} marker + zlib stream, padded
//	                to a sector; all-zero grains are left out
//	after each span of 512 grains that has grains: a GT marker and the
//	                grain table (VMware writes no table for an empty span
//	                and leaves its directory entry 0)
//	GD marker + grain directory, footer marker + footer (the header with
//	the real gdOffset), end-of-stream marker (512 zero bytes)
//
// It writes front to back to any Target (a pipe, standard output): it is
// sequential and refuses going back. Grains are deflated by
// klauspost/compress zlib at level 1 (BestSpeed) on CreateOptions.Workers
// goroutines (GOMAXPROCS by default) through disk.Ordered.
//
// monolithicSparse (the default, as qemu) needs a seekable file and is laid
// out as qemu-img lays it out: header version 1 with flags 0x3 (newline
// test, redundant directory), the descriptor in sectors 1-20, the redundant
// directory and its tables, the directory and its tables, padding to a
// grain, then 64 KiB grains in the order they are first written. Writes are
// random-access and concurrent; grains are allocated under a lock,
// consecutively within one write so that a run of new grains is one
// pwrite, and all-zero pieces of unallocated grains are not written. Tables
// stay in memory (4 KiB per 32 MiB written) until Commit writes them in
// full, so the file has no holes; grains written only in part are filled
// at Commit. The file's 32-bit grain offsets limit it to about 2 TiB.
//
// monolithicFlat writes the descriptor to the Target and the data to a raw,
// sparse <name>-flat.vmdk beside it (the Target must be a file), created
// with disk.CreateOutputFile, renamed into place by Commit and removed by
// Close without Commit. Zero punches holes.
//
// Options: adapter_type (ide, lsilogic, buslogic, pvscsi, legacyESX;
// lsilogic for streamOptimized, ide otherwise), hwversion (4, or 8 for
// streamOptimized), toolsversion (ddb.toolsVersion, left out by default).
// Sizes are rounded up to 512 bytes. Delta disks (a backing file) are not
// written.
package vmdk
