// Package vdi reads and writes VirtualBox VDI disk images (format name
// "vdi", as in qemu).
//
// # Reading
//
// Header version 1.1 (what VirtualBox and qemu write), whatever banner the
// pre-header holds (VirtualBox, Sun, innotek and qemu each write their own):
// dynamic ("normal", type 1) and fixed (type 2) images, 512-byte sectors,
// blocks of any power of two from 512 bytes to 256 MiB (VirtualBox and qemu
// write 1 MiB; qemu reads nothing else). A disk size that is not a multiple
// of 512 is rounded up, as qemu does.
//
// Block map entries 0xFFFFFFFF are unallocated and 0xFFFFFFFE are zero
// blocks; both read as zeros. Other entries index the data area, where
// blocks lie in the order they were first written. Runs of blocks stored one
// after the other are read with one read of the file. Data blocks that are
// wholly a hole of the file (never written, as most of a fresh fixed image)
// are reported as Zero extents where the file system can tell.
//
// Refused with errs.ErrUnimplemented: undo (type 3) and differencing (type 4)
// images and any image naming a parent (link or parent UUID set), header
// versions other than 1.1, per-block extra data, sector sizes other than 512,
// block sizes outside 512 B–256 MiB, and block maps larger than 256 MiB
// (more than 2^26 blocks, 64 TiB with 1 MiB blocks). Refused with
// errs.ErrCorrupt: a bad signature, a truncated header, an unknown image
// type, a block size that is not a power of two, a blocks count that does
// not match the disk size, more blocks allocated than exist, a block map
// overlapping the header or the data area or extending past the end of the
// file, map entries at or beyond the allocated count, two entries naming the
// same data block, and data blocks past the end of the file.
//
// The image implements disk.Checker: besides the faults above it reports an
// allocated-blocks count that does not match the map (a corruption, as
// qemu-img check does) and data blocks no entry uses (leaks).
//
// There is no stream reader: blocks are stored in write order, not disk
// order.
//
// # Writing
//
// Writing needs a seekable file (the map is written last). The option
// static=on writes a fixed image, static=off (the default) a dynamic one, as
// qemu's vdi driver does. The layout ferry writes is:
//
//	0x000  pre-header: banner "<<< Oracle VM VirtualBox Disk Image >>>\n",
//	       signature 0xBEDA107F, version 1.1; then the 0x190-byte v1+
//	       header (1 MiB blocks, no geometry, fresh random image and
//	       modification UUIDs, no parent)
//	0x200  block map: one little-endian uint32 per 1 MiB block
//	D      data blocks, D being the first multiple of 1 MiB after the map
//
// A dynamic image appends each block when it is first written with
// non-zero data, in write order as VirtualBox does; zeros written where
// nothing was are not stored, so all-zero blocks stay unallocated. Writes are
// safe from many goroutines on disjoint ranges at any alignment: blocks are
// allocated under a lock and a write covering several blocks stored one
// after the other is one write of the file. A fixed image maps block i to
// data block i and is sized at once with truncate, so it stays sparse. Zero
// costs nothing where nothing was written; elsewhere it punches a hole in the
// file or writes zeros. The block map, the allocated-blocks count and the
// header are written at Commit, after the file is sized to hold every
// allocated block. Virtual sizes are rounded up to 512 bytes; sizes over
// 64 TiB are refused.
package vdi
