// Package xenlab is a XenServer-compatible lab: it speaks XAPI's JSON-RPC
// and HTTP transfer protocols over real, persistent state, so that ferry's
// XenServer driver can be exercised where no XAPI host can run. It follows
// xapi's documented wire format and behaviour (xen-api's wire-protocol.md,
// the datamodel, the HTTP handlers), never a client's convenience.
//
//	lab, err := xenlab.New(ctx, xenlab.Options{Dir: dir, Users: map[string]string{"root": pw}})
//	srv := httptest.NewServer(lab.Handler())
//	defer lab.Close()
//
// `ferry lab xen --data DIR --listen ADDR --user NAME:PASSWORD` runs it
// (Run).
//
// # Protocol
//
// POST /jsonrpc takes JSON-RPC 1.0 and 2.0 requests and answers each in
// its own version: 1.0 {"result", "error": [CODE, params...], "id"}, 2.0
// {"jsonrpc", "result" | "error": {"code": 1, "message": CODE, "data":
// [params]}, "id"}. A malformed request (no method, a null id, params not
// an array) is an HTTP 500 with an HTML body, as xapi answers it. POST /
// answers an XML-RPC fault: only JSON-RPC is served.
//
// Calls are checked as xapi's generated server checks them: an unknown
// class or message is MESSAGE_METHOD_UNKNOWN [method]; the parameter
// count (after the session) must match the datamodel, or
// MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]
// (login_with_password accepts 2 to 4, VM.snapshot 2 or 3); the session
// must be valid, or SESSION_INVALID [handle]; each argument must have its
// datamodel type, or FIELD_TYPE_ERROR [parameter]; references must name an
// object of the class, or HANDLE_INVALID [class, ref]. A bad password is
// SESSION_AUTHENTICATION_FAILED [user, "Authentication failure"].
//
// The datamodel tables (schema.gen.go) are generated from XAPI's
// xenapi.json by gen_schema.go: the fields of every class the lab serves
// (name, type, qualifier, default), its messages and constructor
// arguments. Records carry every field of their class, at the datamodel's
// default unless the lab sets it; get_record, get_all, get_all_records,
// get_by_uuid, get_by_name_label, every field getter, setters of settable
// fields, add_to_/remove_from_ map fields and add_/remove_ set fields are
// served for every class from those tables. A message of the datamodel
// the lab does not implement is NOT_IMPLEMENTED [method], never a silent
// no-op.
//
// Async.<class>.<message> exists for explicit messages and the implicit
// create and destroy, as in xapi: it returns a task at once; the task's
// status, progress, result and error_info follow the call. As in xapi,
// task.result is an XML-RPC value ("<value>OpaqueRef:...</value>", "" for
// void). task.cancel cancels a running call or a task.create task.
//
// event.from(classes, token, timeout) returns the add, mod and del events
// of the subscribed classes ("vm", "VM/OpaqueRef:...", "*") since token,
// waiting up to timeout seconds for one; an empty token returns every
// subscribed object as an add. Events carry the record as snapshot
// (deletions do not), the class in lower case and, as xapi sends it, the
// id as a decimal string; valid_ref_counts counts every class; tokens are
// xapi's "%020d,%020d" and survive a restart.
//
// # State
//
// Dir holds state.json (every object, the event generation, users with
// salted PBKDF2-SHA256 password hashes, CBT bookkeeping), written to a
// temporary file, synced and renamed over the old one after every change,
// so a crash never leaves it half written. sr/<SR uuid>/<VDI uuid>.vhd are
// the VDIs, dynamic VHDs written by ferry's disk engine; cbt/<chain>/
// holds changed-block bitmaps; vms/<VM uuid>/ the console and QEMU logs.
// A new Dir gets a pool with one host (or two, Options.Hosts), an SR
// "Local storage" (type ext, sizes from the file system) with a PBD per
// host, and the network "Pool-wide network associated with eth0".
// Sessions persist, as in xapi's database. After a restart, tasks that
// were running are failed and VMs whose QEMU guest died with the previous
// lab are halted (their guest writes are still recorded for CBT).
//
// # VMs
//
// VM.create (every required constructor argument), destroy (halted),
// start, start_on, clean_shutdown, hard_shutdown, clean_reboot,
// hard_reboot, suspend, resume, pause, unpause, power_state_reset follow
// xapi's power state machine: a wrong state is VM_BAD_POWER_STATE [vm,
// expected, actual] with lower-case states, a template or snapshot
// VM_IS_TEMPLATE [vm]. resident_on, domid, allowed_operations, the VBDs'
// and VIFs' currently_attached and the host's resident_VMs follow the
// state. VM.set_memory, set_memory_limits, set_memory_*, set_VCPUs_max,
// set_VCPUs_at_startup check xapi's constraints. VM.snapshot makes a
// snapshot VM (is_a_snapshot, is_a_template, snapshot_of, snapshot_time)
// whose disks are VDI snapshots; VM.clone a VM with copies of its disks.
//
// With Options.QEMU set (qemu-system-x86_64; FindQEMU) and a bootable
// disk, VM.start boots the VM under TCG: -machine pc,accel=tcg, the VM's
// memory and VCPUs, its disks as IDE drives (format=vpc) with the
// bootable one first, -no-reboot, the serial console appended to
// vms/<uuid>/console.log and QMP on a socket. clean_shutdown presses the
// ACPI power button and kills the guest after Options.ShutdownTimeout;
// hard_shutdown kills it; suspend and pause stop its CPUs (QMP stop),
// resume and unpause continue them; a guest that powers off by itself
// halts the VM. Snapshots of a running guest pause it while its disks are
// copied. Without QEMU, or without a bootable disk, only the power state
// moves and the lab notes each operation in the console log.
//
// GET /console?session_id=S&vm=REF|UUID is a lab-only extension, not
// part of XAPI: the VM's console text (text/plain), for the driver's
// Consoler.
//
// # VDIs and disk transfers
//
// VDI.create makes an empty dynamic VHD (sizes rounded up to 512 bytes,
// at most 2040 GiB or VDI_TOO_LARGE). VDI.snapshot, VDI.clone, VDI.copy
// and VM.snapshot give the new VDI the source's VHD: not a differencing
// child, so that every VDI file stands alone and QEMU (whose vpc driver
// reads no differencing VHDs) can boot any of them, but a second name of
// the same file (a hard link) until either VDI is written. The lab writes
// a VDI by building a new file and renaming it into place, which leaves
// the other name's content as it was; a guest, which writes its disks in
// place, gets a file of its own before QEMU starts. So a snapshot takes no
// time and no space, as on a real pool; where the platform has no link
// counts, it is a full sparse copy.
//
// GET /export_raw_vdi?session_id&vdi=REF|UUID&format=raw|vhd[&base=REF]
// streams a VDI, written by the disk engine straight to the response:
// raw bytes (with a Content-Length), or a dynamic VHD of the allocated
// blocks; with base (format vhd only, same virtual size), a differencing
// VHD whose parent is the base (named <base uuid>.vhd) holding exactly
// the 64 KiB blocks whose content differs from the base's, every other
// sector left to the parent. PUT /import_raw_vdi?session_id&vdi&format=
// raw|vhd lays a raw stream (its Content-Length bytes from offset 0) or a
// streamed dynamic VHD (its allocated blocks) over the VDI's content,
// in a new file renamed into place only when complete: a truncated or
// malformed body, or one larger than the VDI, fails with HTTP 400 and a
// failed task and leaves the VDI untouched. As xapi, a body without a
// Content-Length (chunked) is refused (404), and import_raw_vdi without a
// vdi but with sr_id and a raw body creates "Imported VDI". GET /export?
// session_id&uuid|ref[&use_compression=true|zstd] streams a halted VM as
// an XVA (internal/disk/xva); PUT /import?session_id&sr_id|sr_uuid
// imports one (plain, gzip or zstd), and on failure removes everything it
// created. VM.import(url, sr, ...) fetches the XVA at url. Every transfer
// authenticates with session_id or HTTP basic auth (401 otherwise),
// follows task_id (progress, cancellation, result) or creates its own
// task, and answers Task-Id. Disk transfers mark the VDI's
// current_operations: an import refuses a VDI in use, and destroy refuses
// a VDI being transferred (OTHER_OPERATION_IN_PROGRESS).
//
// # Changed block tracking
//
// VDI.enable_cbt starts a chain for the VDI. Each write the lab performs
// on it records the 64 KiB blocks whose stored bytes changed, in the
// chain's current epoch; a VDI.snapshot (or VM.snapshot) of a CBT-enabled
// VDI is cbt_enabled too, closes the epoch and opens the next.
// list_changed_blocks(from, to) ORs the epochs after from's up to to's (to
// may be the live VDI, unless a running VM uses it: VDI_IN_USE) and
// returns the base64 bitmap, one bit per 64 KiB block of to, most
// significant bit first. VDIs outside the chain are SR_BACKEND_FAILURE_460
// (source and target unrelated, or source newer), a VDI without CBT
// VDI_NO_CBT_METADATA. data_destroy frees a snapshot's data and keeps its
// metadata (type cbt_metadata). disable_cbt ends the VDI's chain.
//
// Writes are recorded where the lab makes them: import_raw_vdi, VDI.copy
// into a VDI, XVA import. A write that stores the same bytes again marks
// nothing: xapi marks every block a writer touches, the lab only blocks
// whose content changed, which is what an incremental backup needs. A
// QEMU guest's writes are found by hashing each CBT-enabled disk's 64 KiB
// blocks (XXH64) at boot and again when the guest stops, and recording the
// blocks that differ.
package xenlab
