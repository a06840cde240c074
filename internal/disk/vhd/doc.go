// Package vhd reads and writes Microsoft VHD images (Virtual Hard Disk
// Image Format Specification v1.0, with XenServer's blktap conventions),
// the format of XenServer VDIs, Hyper-V, Azure and EC2 imports. qemu calls
// it "vpc", which is accepted as an alias.
//
// # Reading
//
// Fixed, dynamic and differencing VHDs are read.
//
//   - The footer is taken from the end of the file (512 bytes, or the
//     511 bytes old Virtual PC wrote). When it is missing or damaged, a
//     dynamic or differencing disk falls back to the footer copy at offset
//     0. The footer and dynamic header checksums are verified; a mismatch
//     is an errs.ErrCorrupt naming the structure.
//   - The virtual size is always the footer's current_size, as XenServer,
//     Hyper-V, Azure and EC2 read it. qemu instead uses the CHS geometry
//     for images whose creator is "vpc " or "qemu" (Virtual PC semantics),
//     which can be smaller; ferry never does.
//   - The BAT (big-endian sector numbers, 0xFFFFFFFF unallocated) is read
//     once and checked: blocks beyond the file, overlapping each other or
//     the footer copy, header, BAT or footer are refused as corrupt, and
//     so are absurd sizes (over 64 TiB, a BAT over 256 MiB or beyond the
//     file). Block sizes must be powers of two of at least 512 bytes;
//     over 256 MiB is refused as unsupported.
//   - Sector bitmaps are honoured as the specification says: in a dynamic
//     disk a sector whose bit is 0 reads as zeros and is reported
//     Unallocated; in a differencing disk it reads from the parent and
//     reports the parent's extents. Bitmaps are summarised per block
//     (full, empty, mixed) and the bits of mixed blocks are cached, about
//     8 MiB at most. Contiguous stored data is read with one ReadAt.
//   - A fixed disk on a plain file reports the file's holes (found with
//     SEEK_DATA/SEEK_HOLE) as Unallocated; holes under 64 KiB, and 4 KiB
//     at each edge of a hole, are reported as data to keep extents coarse.
//   - A differencing disk's parent is opened with OpenOptions.OpenBacking
//     (format "vhd"), trying the parent locators W2ru (relative), W2ku
//     (absolute), MacX (file:// URL, as XenServer writes it), then the
//     header's parent name. The parent's UUID must be the one the child
//     records; a different one is refused with errs.ErrFailedPrecondition
//     (the files may be intact, but the chain is not the one the child was
//     made on). Without OpenBacking the parent is refused with an error
//     naming it. Info().Backing and BackingFile describe the parent.
//   - Check reports a missing or damaged end footer, a footer copy that
//     differs, BAT entries out of range, overlapping or allocated past the
//     disk's end, and parent locators out of range or overlapping. qemu-img
//     check does not support VHD.
//   - Disk types other than fixed, dynamic and differencing are refused as
//     unsupported.
//
// OpenStream reads dynamic VHDs whose blocks are stored after the BAT in
// LBA order, as ferry writes them: footer copy, header, BAT, blocks,
// footer; anything else is refused as "not streamable". Fixed VHDs are
// read as a stream only when the stream's length is known
// (OpenOptions.Size), since the size is in the footer after the data.
// Differencing VHDs cannot be streamed.
//
// # Writing
//
// Create writes fixed and dynamic VHDs, and differencing VHDs when
// CreateOptions.Backing is an opened VHD (of the same size). Sizes are
// rounded up to 512 bytes and at most 2040 GiB. The footer records creator
// "tap\0" version 1.3 on "Wi2k", as XenServer does, because qemu,
// XenServer, Hyper-V, Azure and EC2 all size such an image by its exact
// current_size; the CHS geometry is computed with the specification's
// algorithm but never defines the size. The force_size option is accepted
// for qemu-img compatibility and has no effect.
//
// A fixed VHD is the data followed by the 512-byte footer. On a file the
// writer is random access and concurrent, and ranges never written stay
// holes; on a stream it is sequential and writes zeros for gaps.
//
// A dynamic or differencing VHD is written in one sequential pass, with no
// rewrites of earlier parts on a stream and no syncs:
//
//	0          footer copy (512 bytes)
//	512        dynamic header (1024 bytes)
//	1536       BAT, padded to a sector
//	           parent locators (differencing): W2ru, W2ku, MacX, a sector each
//	           padding, so that block data is 4 KiB aligned
//	           blocks in LBA order: sector bitmap (padded to 512) + data
//	end        footer (512 bytes)
//
// Block size is 2 MiB (or 512 KiB with block_size=512K; the two sizes
// Hyper-V accepts). Written blocks of a dynamic disk have all bitmap bits
// set, as qemu and XenServer write them; a differencing disk sets the bits
// of the sectors written or zeroed (Zero hides the parent), and a write
// covering part of a sector takes the rest from the parent.
//
// On a file the blocks are appended as they are written and the BAT is
// written at Commit; unwritten parts of a block stay holes. On a plain
// stream the BAT must go out first, so the writer needs
// CreateOptions.Source: a block is allocated if a Data extent of the
// source touches it (in a differencing disk also a Zero extent, or the
// parent's data under the source's holes, which a conversion over the
// parent zeroes). Allocated blocks that receive no data are written as
// zeros with a full bitmap (an empty one in a differencing disk); data for
// a block the source said was empty is an error naming the block. Without
// a Source a stream is refused with errs.ErrInvalidArgument.
package vhd
