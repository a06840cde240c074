// Package qcow2 reads and writes qemu's QCOW2 disk images
// (docs/interop/qcow2.txt in qemu).
//
// # Reading
//
// Versions 2 (compat 0.10) and 3 (compat 1.1), every cluster size qemu
// allows (512 B to 2 MiB), any refcount width. The active L1 table maps
// virtual clusters to L2 tables and data clusters; reads of host-contiguous
// clusters are one file read. Version 3 zero clusters, plain or with a host
// cluster kept, read as zeros and report Zero extents. Compressed clusters
// are inflated whole into a cluster-sized buffer: "zlib" (raw deflate; qemu
// writes it with a 4 KiB window) and zstd (compression type 1). Their byte
// range comes from the L2 entry's offset and sector count and may straddle
// host clusters; packed neighbours are fetched with one read and inflated in
// parallel. L2 tables (64 MiB) and partly read decompressed clusters
// (32 MiB) are cached.
//
// A backing file named in the header is opened through
// disk.OpenOptions.OpenBacking with the format from the backing-format
// header extension (empty: probe). Clusters the image leaves unallocated
// read from it, and Extents reports them as it does; past its end they are
// zeros (Unallocated). Without OpenBacking such images are refused
// (FailedPrecondition, naming the backing file).
//
// Internal snapshots and bitmaps are ignored when reading. The dirty bit is
// accepted (data is intact, only refcounts may be stale); the corrupt bit
// is accepted and shown in Info().Specific["corrupt"]. Info().Specific
// carries qemu-img info's format-specific keys: compat, compression-type,
// lazy-refcounts, refcount-bits, corrupt, extended-l2 (and dirty-flag when
// set).
//
// Open refuses, with errs.ErrUnimplemented naming the feature: versions
// above 3, clusters over 2 MiB, encryption (crypt_method != 0), an external
// data file (incompatible bit 2), extended L2 entries (bit 4), unknown
// incompatible bits (named by number and by the feature-name table when the
// image has one) and unknown compression types. It refuses with
// errs.ErrCorrupt: bad magic, truncated headers, virtual sizes over 2^56,
// L1 tables over 32 MiB or too small for the disk, refcount tables over
// 8 MiB, tables that are unaligned, outside the file or overlapping each
// other or the header, L1 entries that point outside the file, at the
// header or a table, or at an L2 table another entry uses, and malformed
// header extensions or backing file names. Data cluster entries are checked
// as they are used (aligned, starting inside the file, clear of the header,
// L1 and refcount tables); a fault fails the read. Image.Check (the
// disk.Checker) does the full walk: it rebuilds every refcount from the
// active and snapshot L1/L2 tables, the refcount structures and bitmaps,
// and reports corruptions and leaks as qemu-img check does.
//
// # Writing
//
// Always version 3 (compat 1.1) with 16-bit refcounts unless compat=0.10
// asks for version 2; options are listed by Format().Options. The output
// must be a seekable file. Both writers report the cluster size as their
// disk.Granular allocation unit.
//
// Uncompressed (the default), the writer is random access and safe for
// concurrent WriteAt and Zero on disjoint ranges at any alignment. Host
// clusters are allocated under a lock in the order they are first written,
// from cluster 1 on; the clusters of one WriteAt that are new get
// consecutive host clusters, so a big write is one pwrite. A fresh cluster
// reads as zeros, so a partial write needs no read-modify-write, except over
// a backing file, where the rest of the cluster is first copied from the
// backing image (CreateOptions.Backing, which must then be set). Zero
// records version 3 zero clusters for whole clusters and writes zero bytes
// for partial ones; over never-written clusters of an image without backing
// file it does nothing. In version 2, whole zero clusters over a backing
// file become freshly allocated (hence zero) clusters.
//
// With compress=on (the CLI's -c) the writer is sequential: it gathers
// ascending writes into clusters, compresses them in parallel with
// disk.Ordered (CreateOptions.Workers, default GOMAXPROCS) and packs the
// results byte by byte in order; a cluster whose compressed form is not
// smaller is stored uncompressed, cluster aligned; all-zero clusters are
// not stored (or are zero clusters over a backing file). zlib output is raw
// deflate from klauspost's windowed encoder (flate.NewWriterWindow with a
// 4 KiB window; its only level, a level-5 matcher bounded to the window);
// zstd output is klauspost zstd at SpeedDefault, one frame per cluster
// without checksum.
//
// Layout of a written file: cluster 0 holds the header, the backing-format
// extension and the backing file name; data clusters follow; at Commit the
// L2 tables (only those holding an entry), the L1 table, the refcount table
// and the refcount blocks are appended, in that order, the refcount blocks
// covering every cluster including themselves (a fixed point), and the
// header is written last. Every referenced cluster has refcount 1 and the
// COPIED flag, except compressed ones (refcount = number of compressed
// clusters whose sector range touches it, no COPIED flag); clusters left
// unused by Zero over written data keep refcount 0. The result checks clean
// with qemu-img check.
package qcow2
