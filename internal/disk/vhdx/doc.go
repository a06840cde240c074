// Package vhdx reads and writes Microsoft VHDX images ([MS-VHDX] v1.0),
// ferry's format "vhdx".
//
// # Reading
//
// Fixed, dynamic and differencing images with 512- or 4096-byte logical
// sectors and any block size from 1 to 256 MiB. The current header is the
// valid one (CRC-32C) with the highest sequence number; the first valid
// region table is used. Payload blocks in every state are read: fully
// present from the file; not present, undefined and unmapped as
// unallocated (read from the parent in a differencing disk, except
// unmapped, which reads as zeros there); zero as zeros; partially present
// through the chunk's sector bitmap (bit set: this file, clear: the
// parent). In present blocks of a file on a local file system, holes in
// the file are reported as Zero extents (SEEK_DATA), so a sparse fixed
// image is not read in full by a conversion.
//
// A differencing disk opens its parent through OpenOptions.OpenBacking,
// trying the locator's relative_path, volume_path and absolute_win32_path
// in that order (backslashes become slashes), and refuses a parent whose
// DataWriteGuid is neither parent_linkage nor parent_linkage2. Info
// exposes the DataWriteGuid as "data-write-guid".
//
// A non-zero LogGuid means the log must be replayed first. ferry replays
// it in memory, never writing the file: it finds the active sequence as
// [MS-VHDX] 2.3.3 describes (entries checked for signature, LogGuid,
// sequence numbers in descriptors and data sectors, and CRC-32C), applies
// its data and zero descriptors, newest last, as an overlay over the file,
// and extends the file to the head entry's LastFileOffset. A log that
// names no valid sequence, or a file shorter than FlushedFileOffset, is
// corrupt.
//
// Every offset, length and count is checked before use. Refused as
// corrupt: bad identifier, no valid header or region table, regions or
// metadata items out of range or overlapping (each other, the header
// section, the log), missing required metadata, bad block or sector sizes,
// virtual sizes over 64 TiB, BAT entries with reserved states, partially
// present blocks without a parent, blocks or needed sector bitmaps inside
// the header section, past the end of the file or overlapping any other
// structure. Refused as unsupported: header version other than 1, log
// version other than 0 (with a log to replay), unknown required regions and
// metadata items (named by GUID), parent locators of a type other than
// VHDX, BATs over 256 MiB (a 64 TiB disk with blocks under 2 MiB), logs
// over 64 MiB (replay), files over 128 TiB. Check reports, without failing
// Open, a damaged non-current header or second region table, reserved BAT
// bits and sector bitmap entries in disks without a parent.
//
// # Writing
//
// Dynamic (default) and fixed images; not differencing ones. Options, as
// qemu's vhdx driver: subformat=dynamic|fixed; block_size (0 picks qemu's
// choice: 8 MiB up to 1 GiB, 16 MiB up to 100 GiB, 32 MiB up to 32 TiB,
// 64 MiB beyond); log_size (default 1 MiB); block_state_zero=on|off. The
// virtual size is rounded up to 512 bytes and may be at most 64 TiB.
//
// The writer needs a seekable FileTarget, assumed empty, and lays it out
// as:
//
//	0            file type identifier (creator "ferry")
//	64 KiB       header 1 (sequence 1), 128 KiB header 2 (sequence 2):
//	             fresh FileWriteGuid and DataWriteGuid, LogGuid zero
//	192, 256 KiB region tables 1 and 2 (BAT and metadata, both required)
//	1 MiB        log, log_size bytes, left empty (a hole)
//	+log_size    metadata region, 1 MiB: file parameters (block size;
//	             LeaveBlocksAllocated when fixed), virtual size, disk id,
//	             logical and physical sector size (512 both)
//	+1 MiB       BAT, rounded up to 1 MiB
//	then         payload blocks, 1 MiB aligned
//
// A fixed image has every block fully present, in block order, and is
// sized with Truncate so that unwritten space stays a hole. A dynamic image
// allocates a block, fully present, at the end of the file the first time
// it is written; blocks never written are not present. WriteAt and Zero
// are safe for concurrent use on disjoint ranges at any alignment: block
// allocation is serialised, and each run of bytes contiguous in the file
// is one WriteAt. Zero costs nothing on space never written, marks whole
// never-written blocks of a dynamic image ZERO when block_state_zero=on,
// and writes zeros over space already written. The BAT, metadata, region
// tables and headers are written at Commit.
//
// An empty (0-byte) disk gets the BAT region qemu expects for it: qemu
// computes its entry count with an unsigned underflow and refuses a smaller
// region, so it is 64 MiB with the default block size (a hole).
package vhdx
