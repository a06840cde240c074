package xenlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/disk/xva"
	"github.com/ferry-project/ferry/internal/errs"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/jsonrpc", s.serveJSONRPC)
	mux.HandleFunc("/export_raw_vdi", s.serveExportRawVDI)
	mux.HandleFunc("/import_raw_vdi", s.serveImportRawVDI)
	mux.HandleFunc("/export", s.serveExport)
	mux.HandleFunc("/import", s.serveImport)
	mux.HandleFunc("/console", s.serveConsole)
	mux.HandleFunc("/", s.serveXMLRPC)
	return mux
}

// transfer is one authenticated HTTP transfer and the task that follows
// it.
type transfer struct {
	s       *Server
	w       http.ResponseWriter
	r       *http.Request
	session string
	logout  bool
	task    string
}

// beginTransfer authenticates a request (session_id, or HTTP basic auth
// as a temporary session) and picks its task: the task_id given, or a new
// one. It answers 401 itself and returns nil when authentication fails.
func (s *Server) beginTransfer(w http.ResponseWriter, r *http.Request, label string) *transfer {
	q := r.URL.Query()
	t := &transfer{s: s, w: w, r: r}
	taskID := q.Get("task_id")
	authFail := func() *transfer {
		s.mu.Lock()
		if taskID != "" {
			s.failTaskLocked(taskID, apiErr(errAuthFailed))
			s.saveLocked()
		}
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="`+label+`"`)
		http.Error(w, "401 Unauthorised: a valid session_id or HTTP basic credentials are needed", http.StatusUnauthorized)
		return nil
	}
	if sid := q.Get("session_id"); sid != "" {
		if !s.validSession(sid) {
			return authFail()
		}
		t.session = sid
	} else if user, pw, ok := r.BasicAuth(); ok {
		if !s.checkPassword(user, pw) {
			return authFail()
		}
		s.mu.Lock()
		t.session, t.logout = s.loginLocked(user, "HTTP basic auth"), true
		s.mu.Unlock()
	} else {
		return authFail()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if tk := s.db.byClass["task"][taskID]; tk != nil {
		t.task = tk.Ref
	} else {
		t.task = s.newTaskLocked(label, "", t.session).Ref
	}
	s.saveLocked()
	return t
}

// end logs out a temporary session.
func (t *transfer) end() {
	if !t.logout {
		return
	}
	t.s.mu.Lock()
	t.s.logoutLocked(t.session)
	t.s.saveLocked()
	t.s.mu.Unlock()
}

// fail answers an error (before any body was written) and fails the task.
func (t *transfer) fail(status int, err error) {
	ae := asAPIError(err)
	t.s.mu.Lock()
	t.s.failTaskLocked(t.task, ae)
	t.s.saveLocked()
	t.s.mu.Unlock()
	t.s.log.Info("transfer failed", "path", t.r.URL.Path, "status", status, "err", ae.Error())
	t.w.Header().Set("Task-Id", t.task)
	http.Error(t.w, fmt.Sprintf("%d %s: %s", status, http.StatusText(status), ae.Error()), status)
}

// abort fails the task after the response has started: the connection is
// cut so that the client sees a truncated body, never a complete one.
func (t *transfer) abort(err error) {
	ae := asAPIError(err)
	t.s.mu.Lock()
	t.s.failTaskLocked(t.task, ae)
	t.s.saveLocked()
	t.s.mu.Unlock()
	t.s.log.Info("transfer aborted", "path", t.r.URL.Path, "err", ae.Error())
	panic(http.ErrAbortHandler)
}

func (t *transfer) complete(res any) {
	t.s.mu.Lock()
	t.s.completeTaskLocked(t.task, res)
	t.s.saveLocked()
	t.s.mu.Unlock()
}

// cancelled reports whether the transfer's task was cancelled.
func (t *transfer) context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.r.Context())
	stop := context.AfterFunc(t.s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// progress updates the task, and fails the context when the task is
// cancelled.
func (t *transfer) progress(cancel context.CancelFunc) func(float64) {
	set := t.s.taskProgress(t.task)
	return func(f float64) {
		t.s.mu.Lock()
		c := t.s.taskCancelledLocked(t.task)
		t.s.mu.Unlock()
		if c {
			cancel()
			return
		}
		set(f)
	}
}

// lookupVDILocked finds a VDI by reference or uuid, as xapi's handlers
// accept either.
func (s *Server) lookupLocked(class, id string) (*object, error) {
	if o := s.db.byClass[class][id]; o != nil {
		return o, nil
	}
	if o := s.db.byUUID(class, id); o != nil {
		return o, nil
	}
	if strings.HasPrefix(id, refPrefix) {
		return nil, apiErr(errHandleInvalid, class, id)
	}
	return nil, apiErr(errUUIDInvalid, class, id)
}

func statusOf(err error) int {
	var ae *apiError
	switch {
	case errs.Is(err, errs.Corrupt), errs.Is(err, errs.InvalidArgument), errs.Is(err, errs.Unimplemented):
		return http.StatusBadRequest
	case errors.As(err, &ae) && (ae.Code == "VDI_TOO_SMALL" || ae.Code == errInvalidValue):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// rawVDIFormat reads the format parameter of export_raw_vdi and
// import_raw_vdi: raw (the default) or vhd. Anything else fails the
// transfer as xapi does, and ok is false.
func rawVDIFormat(t *transfer, q url.Values) (format string, ok bool) {
	format = strings.ToLower(q.Get("format"))
	if format == "" {
		format = "raw"
	}
	if format != "raw" && format != "vhd" {
		t.fail(http.StatusNotFound, internalErr("Unknown format %s", q.Get("format")))
		return "", false
	}
	return format, true
}

// serveExportRawVDI is GET /export_raw_vdi?session_id&vdi&format=raw|vhd
// [&base]: the VDI streamed by the disk engine straight to the response.
func (s *Server) serveExportRawVDI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		http.Error(w, "export_raw_vdi is GET", http.StatusMethodNotAllowed)
		return
	}
	t := s.beginTransfer(w, r, "Exporting raw VDI")
	if t == nil {
		return
	}
	defer t.end()
	q := r.URL.Query()
	format, ok := rawVDIFormat(t, q)
	if !ok {
		return
	}
	if !q.Has("vdi") {
		t.fail(http.StatusInternalServerError, internalErr("Missing vdi query parameter"))
		return
	}
	s.mu.Lock()
	v, err := s.lookupLocked("VDI", q.Get("vdi"))
	var base *object
	if err == nil && q.Has("base") {
		base, err = s.lookupLocked("VDI", q.Get("base"))
		if err == nil && format != "vhd" {
			err = apiErr(errInvalidValue, "base", "a base is served with format=vhd only")
		}
		if err == nil && base.int("virtual_size") != v.int("virtual_size") {
			err = apiErr(errInvalidValue, "base", fmt.Sprintf("base %s has a virtual size of %d, the VDI %d", base.Ref, base.int("virtual_size"), v.int("virtual_size")))
		}
		if err == nil && base.str("type") == "cbt_metadata" {
			err = apiErr(errVDIIncompatibleType, base.Ref, "cbt_metadata")
		}
	}
	if err == nil && v.str("type") == "cbt_metadata" {
		err = apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
	}
	if err == nil && format == "vhd" && v.int("virtual_size") > maxVHDSize {
		err = apiErr(errVDITooLarge, v.Ref, strconv.FormatInt(maxVHDSize, 10))
	}
	var keys [][2]string
	if err == nil {
		for _, o := range []*object{v, base} {
			if o == nil {
				continue
			}
			k, berr := s.beginOpLocked(o, "export")
			if berr != nil {
				err = berr
				break
			}
			keys = append(keys, [2]string{o.Ref, k})
		}
	}
	var path, basePath, baseUUID, uuid string
	if err == nil {
		path, uuid = s.vdiPathLocked(v), v.str("uuid")
		if base != nil {
			basePath, baseUUID = s.vdiPathLocked(base), base.str("uuid")
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, k := range keys {
			s.endOpLocked(k[0], k[1])
		}
		s.saveLocked()
		s.mu.Unlock()
	}()
	if err != nil {
		t.fail(statusOf(err), err)
		return
	}
	ctx, cancel := t.context()
	defer cancel()
	img, err := s.openVHD(ctx, path)
	if err != nil {
		t.fail(http.StatusInternalServerError, internalErr("open VDI %s: %v", uuid, err))
		return
	}
	defer img.Close()
	var baseImg disk.Image
	var changed bitmap
	if base != nil {
		if baseImg, err = s.openVHD(ctx, basePath); err != nil {
			t.fail(http.StatusInternalServerError, internalErr("open base VDI %s: %v", baseUUID, err))
			return
		}
		defer baseImg.Close()
		if changed, err = diffBlocks(ctx, baseImg, img); err != nil {
			t.fail(http.StatusInternalServerError, internalErr("compare VDI %s with base %s: %v", uuid, baseUUID, err))
			return
		}
	}
	h := w.Header()
	h.Set("Task-Id", t.task)
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.%s"`, uuid, format))
	if format == "raw" {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(img.Size(), 10))
	} else {
		h.Set("Content-Type", "application/vhd")
	}
	if r.Method == http.MethodHead {
		t.complete(nil)
		return
	}
	prog := t.progress(cancel)
	out := disk.PlainTarget(w)
	switch {
	case format == "raw":
		err = streamImage(ctx, raw.Format(), out, img, nil, prog)
	case base == nil:
		err = streamImage(ctx, vhd.Format(), out, img, &disk.CreateOptions{Source: img}, prog)
	default:
		err = streamDelta(ctx, out, img, baseImg, baseUUID+".vhd", changed, prog)
	}
	if err != nil {
		t.abort(internalErr("export VDI %s: %v", uuid, err))
	}
	t.complete(nil)
}

// streamImage writes img to out in format f through the disk engine.
func streamImage(ctx context.Context, f *disk.Format, out disk.Target, img disk.Image, o *disk.CreateOptions, prog func(float64)) error {
	w, err := f.Create(ctx, out, img.Size(), o)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := disk.Convert(ctx, w, img, &disk.ConvertOptions{Workers: 2, Progress: fracReporter(img.Size(), prog)}); err != nil {
		return err
	}
	return w.Commit(ctx)
}

// streamDelta writes a differencing VHD over base holding the changed
// 64 KiB blocks of img, and nothing else: each changed block's sectors are
// marked in the VHD's sector bitmaps, every other sector reads from the
// parent.
func streamDelta(ctx context.Context, out disk.Target, img, base disk.Image, baseName string, changed bitmap, prog func(float64)) error {
	src := &deltaImage{Image: img, changed: changed}
	w, err := vhd.Format().Create(ctx, out, img.Size(), &disk.CreateOptions{
		Source: src, Backing: parentView{base}, BackingFile: baseName, BackingFormat: "vhd",
	})
	if err != nil {
		return err
	}
	defer w.Close()
	buf := make([]byte, cbtBlock)
	nblocks := (img.Size() + cbtBlock - 1) / cbtBlock
	total := max(changed.count(), 1)
	done := 0
	for b := range nblocks {
		if !changed.has(b) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		off := b * cbtBlock
		n := min(cbtBlock, img.Size()-off)
		if err := readFull(img, buf[:n], off); err != nil {
			return err
		}
		if _, err := w.WriteAt(buf[:n], off); err != nil {
			return err
		}
		done++
		prog(float64(done) / float64(total))
	}
	return w.Commit(ctx)
}

// deltaImage is an image whose extents are the changed blocks only.
type deltaImage struct {
	disk.Image
	changed bitmap
}

func (d *deltaImage) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, d.Size())
		for pos := off; pos < end; {
			b := pos / cbtBlock
			kind := disk.Unallocated
			if d.changed.has(b) {
				kind = disk.Data
			}
			e := min((b+1)*cbtBlock, end)
			for e < end && d.changed.has(e/cbtBlock) == (kind == disk.Data) {
				e = min(e+cbtBlock, end)
			}
			if !yield(disk.Extent{Off: pos, Len: e - pos, Kind: kind}, nil) {
				return
			}
			pos = e
		}
	}
}

// parentView presents the base as the parent of a differencing VHD being
// streamed, reporting no extents of its own so that only the changed
// blocks are allocated in the child (its identity and data are the
// base's).
type parentView struct{ disk.Image }

func (p parentView) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, p.Size())
		if end > off {
			yield(disk.Extent{Off: off, Len: end - off, Kind: disk.Unallocated}, nil)
		}
	}
}

// serveImportRawVDI is PUT /import_raw_vdi?session_id&vdi&format=raw|vhd:
// the stream is laid over the VDI's content in a new file renamed into
// place when complete, so a failed or truncated upload leaves the VDI as
// it was.
func (s *Server) serveImportRawVDI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		w.Header().Set("Allow", "PUT")
		http.Error(w, "import_raw_vdi is PUT", http.StatusMethodNotAllowed)
		return
	}
	t := s.beginTransfer(w, r, "Importing raw VDI")
	if t == nil {
		return
	}
	defer t.end()
	q := r.URL.Query()
	format, ok := rawVDIFormat(t, q)
	if !ok {
		return
	}
	if q.Has("chunked") {
		t.fail(http.StatusNotFound, internalErr("the lab does not serve xapi's chunked import protocol"))
		return
	}
	if len(r.TransferEncoding) > 0 || r.ContentLength < 0 {
		// xapi refuses bodies without a Content-Length
		t.fail(http.StatusNotFound, internalErr("Cannot handle encoding: %s", strings.Join(r.TransferEncoding, ",")))
		return
	}
	s.mu.Lock()
	var v *object
	var err error
	if q.Has("vdi") {
		v, err = s.lookupLocked("VDI", q.Get("vdi"))
	} else if srID := q.Get("sr_id") + q.Get("sr_uuid"); srID != "" && format == "raw" {
		var sr *object
		if sr, err = s.lookupLocked("SR", srID); err == nil {
			s.mu.Unlock()
			ref, cerr := s.createVDIFor(r.Context(), sr.Ref, "Imported VDI", r.ContentLength)
			s.mu.Lock()
			if err = cerr; err == nil {
				v = s.db.objs[ref]
			}
		}
	} else {
		err = internalErr("Not enough info supplied to import")
		if format == "vhd" {
			err = internalErr("Importing a VHD directly into an SR not yet supported")
		}
	}
	var size int64
	var ref string
	if err == nil {
		size, ref = v.int("virtual_size"), v.Ref
	}
	s.mu.Unlock()
	if err != nil {
		t.fail(http.StatusBadRequest, err)
		return
	}
	ctx, cancel := t.context()
	defer cancel()
	var st disk.Stream
	if format == "raw" {
		if r.ContentLength > size {
			t.fail(http.StatusBadRequest, apiErr("VDI_TOO_SMALL", ref, strconv.FormatInt(r.ContentLength, 10)))
			return
		}
		if r.ContentLength == 0 {
			t.complete(ref)
			return
		}
		st, err = disk.RawStream(r.Body, r.ContentLength, "request body")
	} else {
		st, err = vhd.Format().OpenStream(ctx, r.Body, &disk.OpenOptions{Size: r.ContentLength, Logger: s.log})
		if err == nil && st.Size() > size {
			st.Close()
			t.fail(http.StatusBadRequest, apiErr("VDI_TOO_SMALL", ref, strconv.FormatInt(st.Size(), 10)))
			return
		}
	}
	if err != nil {
		t.fail(http.StatusBadRequest, internalErr("import into VDI %s: %v", ref, err))
		return
	}
	defer st.Close()
	if err := s.writeVDI(ctx, ref, streamRuns(st), t.progress(cancel)); err != nil {
		t.fail(statusOf(err), err)
		return
	}
	w.Header().Set("Task-Id", t.task)
	w.Header().Set("Content-Type", "application/octet-stream")
	t.complete(ref)
}

// createVDIFor creates a user VDI of size in an SR, as import_raw_vdi does
// without a vdi parameter.
func (s *Server) createVDIFor(ctx context.Context, sr, name string, size int64) (string, error) {
	c := &call{ctx: ctx, args: []any{map[string]any{
		"name_label": name, "name_description": "", "SR": sr, "virtual_size": size, "type": "user",
		"sharable": false, "read_only": false, "other_config": map[string]any{},
	}}}
	ref, err := s.vdiCreate(c)
	if err != nil {
		return "", err
	}
	return ref.(string), nil
}

// serveConsole is the lab-only GET /console?session_id&vm=REF|UUID: the
// text the VM printed on its serial console (for a QEMU guest), or the
// lab's notes of its power operations (for a VM whose power state is only
// tracked). It is not part of XAPI.
func (s *Server) serveConsole(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sid := q.Get("session_id")
	if sid == "" {
		if user, pw, ok := r.BasicAuth(); !ok || !s.checkPassword(user, pw) {
			w.Header().Set("WWW-Authenticate", `Basic realm="console"`)
			http.Error(w, "401 Unauthorised", http.StatusUnauthorized)
			return
		}
	} else if !s.validSession(sid) {
		http.Error(w, "401 Unauthorised: invalid session", http.StatusUnauthorized)
		return
	}
	s.mu.Lock()
	vm, err := s.lookupLocked("VM", q.Get("vm"))
	var path string
	if err == nil {
		path = s.consolePath(vm)
	}
	s.mu.Unlock()
	if err != nil {
		http.Error(w, asAPIError(err).Error(), http.StatusNotFound)
		return
	}
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(b)
}

// vmSpecLocked describes a VM for an XVA archive.
func (s *Server) vmSpecLocked(vm *object) (core.VMSpec, []*object) {
	spec := core.VMSpec{
		Name:        vm.str("name_label"),
		Description: vm.str("name_description"),
		CPUs:        int(vm.int("VCPUs_max")),
		MemoryBytes: vm.int("memory_static_max"),
		Firmware:    core.BIOS,
	}
	if fw, _ := vm.smap("HVM_boot_params")["firmware"].(string); fw == "uefi" {
		spec.Firmware = core.UEFI
	}
	if os, _ := vm.smap("other_config")["ferry_os_type"].(string); os != "" {
		spec.OSType = os
	} else if t, _ := vm.smap("other_config")["base_template_name"].(string); t != "" {
		spec.OSType = t
	}
	type d struct {
		pos int
		vbd *object
		vdi *object
	}
	var ds []d
	for _, r := range vm.refs("VBDs") {
		b := s.db.objs[r]
		if b == nil || b.str("type") == "CD" {
			continue
		}
		vdi := s.db.objs[b.str("VDI")]
		if vdi == nil {
			continue
		}
		pos, _ := strconv.Atoi(b.str("userdevice"))
		ds = append(ds, d{pos, b, vdi})
	}
	slices.SortFunc(ds, func(a, b d) int { return a.pos - b.pos })
	var vdis []*object
	for _, x := range ds {
		spec.Disks = append(spec.Disks, core.DiskSpec{Name: x.vdi.str("name_label"), Size: x.vdi.int("virtual_size"), Bootable: x.vbd.bool("bootable"), Position: x.pos})
		vdis = append(vdis, x.vdi)
	}
	type n struct {
		dev int
		vif *object
	}
	var ns []n
	for _, r := range vm.refs("VIFs") {
		if v := s.db.objs[r]; v != nil {
			dev, _ := strconv.Atoi(v.str("device"))
			ns = append(ns, n{dev, v})
		}
	}
	slices.SortFunc(ns, func(a, b n) int { return a.dev - b.dev })
	for _, x := range ns {
		nic := core.NICSpec{MAC: x.vif.str("MAC")}
		if net := s.db.objs[x.vif.str("network")]; net != nil {
			nic.Network = net.str("name_label")
		}
		spec.NICs = append(spec.NICs, nic)
	}
	return spec, vdis
}

// serveExport is GET /export?session_id&uuid=VM_UUID|ref=VM[&use_compression]:
// the VM as an XVA written by internal/disk/xva straight to the response.
func (s *Server) serveExport(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "export is GET", http.StatusMethodNotAllowed)
		return
	}
	t := s.beginTransfer(w, r, "Exporting VM")
	if t == nil {
		return
	}
	defer t.end()
	q := r.URL.Query()
	id := q.Get("uuid")
	if id == "" {
		id = q.Get("ref")
	}
	s.mu.Lock()
	vm, err := s.lookupLocked("VM", id)
	if err == nil && vm.str("power_state") != "Halted" {
		err = badPower(vm, "Halted")
	}
	var spec core.VMSpec
	var vdis []*object
	var paths []string
	var keys [][2]string
	if err == nil {
		spec, vdis = s.vmSpecLocked(vm)
		for _, v := range vdis {
			if v.str("type") == "cbt_metadata" {
				err = apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
				break
			}
			k, berr := s.beginOpLocked(v, "export")
			if berr != nil {
				err = berr
				break
			}
			keys = append(keys, [2]string{v.Ref, k})
			paths = append(paths, s.vdiPathLocked(v))
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, k := range keys {
			s.endOpLocked(k[0], k[1])
		}
		s.saveLocked()
		s.mu.Unlock()
	}()
	if err != nil {
		t.fail(statusOf(err), err)
		return
	}
	ctx, cancel := t.context()
	defer cancel()
	var imgs []disk.Image
	defer func() {
		for _, im := range imgs {
			im.Close()
		}
	}()
	var total int64
	for _, p := range paths {
		im, err := s.openVHD(ctx, p)
		if err != nil {
			t.fail(http.StatusInternalServerError, internalErr("open VDI %s: %v", p, err))
			return
		}
		imgs = append(imgs, im)
		total += im.Size()
	}
	w.Header().Set("Task-Id", t.task)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.xva"`, vm.str("uuid")))
	var out io.Writer = w
	var closer io.Closer
	switch strings.ToLower(q.Get("use_compression")) {
	case "true", "gzip":
		z := gzip.NewWriter(w)
		out, closer = z, z
	case "zstd":
		z, zerr := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		if zerr != nil {
			t.abort(zerr)
		}
		out, closer = z, z
	}
	prog := t.progress(cancel)
	rep := fracReporter(max(total, 1), prog)
	aw, err := xva.Format().Create(ctx, disk.PlainTarget(out), spec, nil)
	if err != nil {
		t.abort(internalErr("export VM %s: %v", id, err))
	}
	defer aw.Close()
	for _, im := range imgs {
		dw, err := aw.NextDisk(ctx)
		if err == nil {
			_, err = disk.Convert(ctx, dw, im, &disk.ConvertOptions{Workers: 2, Progress: rep})
			if err == nil {
				err = dw.Commit(ctx)
			}
			dw.Close()
		}
		if err != nil {
			t.abort(internalErr("export VM %s: %v", id, err))
		}
	}
	if err := aw.Commit(ctx); err != nil {
		t.abort(internalErr("export VM %s: %v", id, err))
	}
	if closer != nil {
		if err := closer.Close(); err != nil {
			t.abort(internalErr("export VM %s: %v", id, err))
		}
	}
	t.complete(nil)
}

// serveImport is PUT /import?session_id&sr_id|sr_uuid: an XVA (plain,
// gzip or zstd) becomes a new VM with its disks. On any failure everything
// created is removed.
func (s *Server) serveImport(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		w.Header().Set("Allow", "PUT")
		http.Error(w, "import is PUT", http.StatusMethodNotAllowed)
		return
	}
	t := s.beginTransfer(w, r, "VM.import")
	if t == nil {
		return
	}
	defer t.end()
	if len(r.TransferEncoding) > 0 || r.ContentLength < 0 {
		t.fail(http.StatusForbidden, apiErr(errImportError, "Cannot_handle_chunked"))
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	var sr *object
	var err error
	switch {
	case q.Get("sr_id") != "":
		sr, err = s.db.get("SR", q.Get("sr_id"))
	case q.Get("sr_uuid") != "":
		sr, err = s.lookupLocked("SR", q.Get("sr_uuid"))
	default:
		for _, p := range s.db.all("pool") {
			sr = s.db.objs[p.str("default_SR")]
		}
		if sr == nil {
			err = apiErr("DEFAULT_SR_NOT_FOUND", nullRef)
		}
	}
	s.mu.Unlock()
	if err != nil {
		t.fail(http.StatusInternalServerError, err)
		return
	}
	ctx, cancel := t.context()
	defer cancel()
	ref, err := s.importXVA(ctx, r.Body, sr.Ref, r.ContentLength, t.progress(cancel))
	if err != nil {
		t.fail(statusOf(err), err)
		return
	}
	w.Header().Set("Task-Id", t.task)
	t.complete([]any{ref})
}

// importXVA reads an XVA stream into a new VM in sr.
func (s *Server) importXVA(ctx context.Context, body io.Reader, sr string, length int64, prog func(float64)) (string, error) {
	cr := &countReader{r: body}
	ar, err := xva.Format().OpenStream(ctx, cr, nil)
	if err != nil {
		return "", importErr(err)
	}
	defer ar.Close()
	spec := ar.VM()
	var created struct {
		vm   string
		vdis []string
	}
	undo := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if vm := s.db.objs[created.vm]; vm != nil {
			s.destroyVMLocked(vm)
		}
		for _, r := range created.vdis {
			if v := s.db.objs[r]; v != nil {
				s.destroyVDILocked(v)
			}
		}
		s.saveLocked()
	}
	for _, d := range spec.Disks {
		ref, err := s.createVDIFor(ctx, sr, d.Name, d.Size)
		if err != nil {
			undo()
			return "", err
		}
		created.vdis = append(created.vdis, ref)
	}
	s.mu.Lock()
	created.vm = s.vmFromSpecLocked(spec, created.vdis).Ref
	s.saveLocked()
	s.mu.Unlock()
	for {
		i, st, err := ar.NextDisk(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			undo()
			return "", importErr(err)
		}
		err = s.writeVDI(ctx, created.vdis[i], streamRuns(st), func(float64) {
			if length > 0 {
				prog(float64(cr.n) / float64(length))
			}
		})
		st.Close()
		if err != nil {
			undo()
			if errs.CodeOf(err) != errs.Unknown {
				return "", importErr(err)
			}
			return "", err
		}
	}
	return created.vm, nil
}

func importErr(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	return &importError{apiErr(errImportError, err.Error()), err}
}

// importError keeps the engine's error code for the HTTP status.
type importError struct {
	*apiError
	cause error
}

func (e *importError) Unwrap() []error { return []error{e.apiError, e.cause} }

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// vmFromSpecLocked creates a halted VM for an imported archive.
func (s *Server) vmFromSpecLocked(spec core.VMSpec, vdis []string) *object {
	mem := spec.MemoryBytes
	if mem <= 0 {
		mem = 1 << 30
	}
	cpus := int64(max(spec.CPUs, 1))
	boot := map[string]any{"order": "cd"}
	platform := map[string]any{"acpi": "1", "apic": "true", "pae": "true", "nx": "true", "viridian": "false", "device-model": "qemu-upstream-compat"}
	if spec.Firmware == core.UEFI {
		boot["firmware"] = "uefi"
		platform["device-model"] = "qemu-upstream-uefi"
	}
	other := map[string]any{}
	if spec.OSType != "" {
		other["ferry_os_type"] = spec.OSType
	}
	name := spec.Name
	if name == "" {
		name = "imported VM"
	}
	vm := s.insertVMLocked(map[string]any{
		"name_label": name, "name_description": spec.Description, "power_state": "Halted",
		"user_version": int64(1), "is_a_template": false,
		"memory_static_max": mem, "memory_dynamic_max": mem, "memory_dynamic_min": mem, "memory_static_min": mem, "memory_target": mem,
		"VCPUs_max": cpus, "VCPUs_at_startup": cpus, "VCPUs_params": map[string]any{},
		"actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "restart",
		"HVM_boot_policy": "BIOS order", "HVM_boot_params": boot, "platform": platform,
		"other_config": other, "domain_type": "hvm", "recommendations": "",
	})
	for i, d := range spec.Disks {
		b := s.db.insert("VBD", map[string]any{
			"VM": vm.Ref, "VDI": vdis[i], "userdevice": strconv.Itoa(d.Position), "device": deviceName(strconv.Itoa(d.Position)),
			"bootable": d.Bootable, "mode": "RW", "type": "Disk", "empty": false,
			"other_config": map[string]any{"owner": "true"},
		})
		s.db.addRef(vm, "VBDs", b.Ref)
		if v := s.db.objs[vdis[i]]; v != nil {
			s.db.addRef(v, "VBDs", b.Ref)
		}
	}
	for i, nic := range spec.NICs {
		netName := nic.Network
		if netName == "" {
			netName = "Pool-wide network associated with eth0"
		}
		var net *object
		for _, n := range s.db.all("network") {
			if n.str("name_label") == netName {
				net = n
				break
			}
		}
		if net == nil {
			net = s.db.insert("network", map[string]any{"name_label": netName, "bridge": fmt.Sprintf("xapi%d", len(s.db.byClass["network"])), "MTU": int64(1500)})
		}
		mac, auto := nic.MAC, false
		if mac == "" {
			mac, auto = randomMAC(), true
		}
		v := s.db.insert("VIF", map[string]any{
			"VM": vm.Ref, "network": net.Ref, "device": strconv.Itoa(i), "MAC": mac, "MAC_autogenerated": auto, "MTU": int64(1500),
		})
		s.db.addRef(vm, "VIFs", v.Ref)
		s.db.addRef(net, "VIFs", v.Ref)
	}
	return vm
}

// consolePath is where a VM's console text is kept.
func (s *Server) consolePath(vm *object) string {
	return filepath.Join(s.dir, "vms", vm.str("uuid"), "console.log")
}
