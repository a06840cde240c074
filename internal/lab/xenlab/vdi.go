package xenlab

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// vdiCreate is VDI.create: an empty dynamic VHD file in the SR directory.
func (s *Server) vdiCreate(c *call) (any, error) {
	rec, err := s.ctorRecord("VDI", c.args[0].(map[string]any))
	if err != nil {
		return nil, err
	}
	if rec["type"] == "cbt_metadata" {
		return nil, apiErr(errVDIIncompatibleType, "", "cbt_metadata")
	}
	size := rec["virtual_size"].(int64)
	if size < 0 {
		return nil, apiErr(errInvalidValue, "virtual_size", strconv.FormatInt(size, 10))
	}
	if size > maxVHDSize {
		return nil, apiErr(errVDITooLarge, "", strconv.FormatInt(maxVHDSize, 10))
	}
	size = (size + 511) &^ 511
	s.mu.Lock()
	sr, err := s.db.get("SR", rec["SR"].(string))
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	uuid := newUUID()
	path := filepath.Join(s.srDir(sr), uuid+".vhd")
	s.mu.Unlock()
	if err := s.createVHD(c.ctx, path, size); err != nil {
		return nil, internalErr("create VHD for VDI %s: %v", uuid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db.objs[sr.Ref] == nil {
		os.Remove(path)
		return nil, apiErr(errHandleInvalid, "SR", sr.Ref)
	}
	rec["uuid"] = uuid
	rec["virtual_size"] = size
	v := s.insertVDILocked(sr, rec)
	return v.Ref, s.saveLocked()
}

func (s *Server) insertVDILocked(sr *object, rec map[string]any) *object {
	uuid := rec["uuid"].(string)
	rec["location"] = uuid
	rec["managed"] = true
	rec["SR"] = sr.Ref
	if _, ok := rec["allowed_operations"]; !ok {
		rec["allowed_operations"] = []any{"clone", "copy", "destroy", "snapshot", "enable_cbt", "disable_cbt",
			"data_destroy", "list_changed_blocks", "update", "generate_config", "force_unlock", "forget"}
	}
	v := s.db.insert("VDI", rec)
	s.db.addRef(sr, "VDIs", v.Ref)
	s.db.vdis[uuid] = &vdiMeta{}
	s.updateUtilisationLocked(v)
	return v
}

// updateUtilisationLocked sets physical_utilisation from the file size.
func (s *Server) updateUtilisationLocked(v *object) {
	var n int64
	if st, err := os.Stat(s.vdiPathLocked(v)); err == nil {
		n = st.Size()
	}
	if v.int("physical_utilisation") != n {
		v.Rec["physical_utilisation"] = n
	}
}

func (s *Server) metaLocked(v *object) *vdiMeta {
	m := s.db.vdis[v.str("uuid")]
	if m == nil {
		m = &vdiMeta{}
		s.db.vdis[v.str("uuid")] = m
	}
	return m
}

// vdiInUseLocked reports whether a VDI is attached to a VM that is not
// halted.
func (s *Server) vdiInUseLocked(v *object) bool {
	for _, r := range v.refs("VBDs") {
		b := s.db.objs[r]
		if b == nil {
			continue
		}
		if vm := s.db.objs[b.str("VM")]; vm != nil && vm.str("power_state") != "Halted" {
			return true
		}
	}
	return false
}

// beginOpLocked marks a VDI as busy with op (VDI.current_operations),
// refusing when another operation holds it. Exports may run together.
func (s *Server) beginOpLocked(v *object, op string) (string, error) {
	for k, o := range v.smap("current_operations") {
		if op != "export" || o != "export" {
			return "", apiErr(errOtherOperation, "VDI", v.Ref, fmt.Sprint(o), k)
		}
	}
	key := "OpaqueRef:" + newUUID()
	v.smap("current_operations")[key] = op
	s.db.touch(v)
	return key, nil
}

func (s *Server) endOpLocked(ref, key string) {
	if v := s.db.objs[ref]; v != nil {
		delete(v.smap("current_operations"), key)
		s.db.touch(v)
	}
}

func (s *Server) vdiDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if s.vdiInUseLocked(v) {
		return nil, apiErr(errVDIInUse, v.Ref, "destroy")
	}
	for k, o := range v.smap("current_operations") {
		return nil, apiErr(errOtherOperation, "VDI", v.Ref, fmt.Sprint(o), k)
	}
	s.destroyVDILocked(v)
	return "", s.saveLocked()
}

// destroyVDILocked removes a VDI, its VBDs and its file. Its CBT bitmaps
// go when no VDI of the chain is left.
func (s *Server) destroyVDILocked(v *object) {
	for _, r := range v.refs("VBDs") {
		if b := s.db.objs[r]; b != nil {
			s.removeVBDLocked(b)
		}
	}
	if sr := s.db.objs[v.str("SR")]; sr != nil {
		s.db.delRef(sr, "VDIs", v.Ref)
	}
	if p := s.db.objs[v.str("snapshot_of")]; p != nil {
		s.db.delRef(p, "snapshots", v.Ref)
	}
	os.Remove(s.vdiPathLocked(v))
	m := s.db.vdis[v.str("uuid")]
	delete(s.db.vdis, v.str("uuid"))
	s.db.remove(v)
	if m != nil && m.Chain != "" {
		for _, o := range s.db.vdis {
			if o.Chain == m.Chain {
				return
			}
		}
		os.RemoveAll(s.cbtDir(m.Chain))
	}
}

// copyVDI copies a VDI into a new one in the same SR: a snapshot
// (is_a_snapshot, snapshot_of, CBT metadata carried over) or a clone.
// The copy is not a differencing child: every VDI file stands alone. It
// shares the source's file (a hard link) until either is written: the
// lab writes a VDI by building a new file and renaming it into place,
// which leaves the other link as it was, and a guest, the only writer in
// place, gets a copy of its own before it starts (unshare). So a
// snapshot takes no time and no space, as on a real pool. It returns the
// new VDI's reference.
func (s *Server) copyVDI(ctx context.Context, ref string, snapshot bool, name string, progress func(float64)) (string, error) {
	s.mu.Lock()
	v, err := s.db.get("VDI", ref)
	if err != nil {
		s.mu.Unlock()
		return "", err
	}
	if v.str("type") == "cbt_metadata" {
		s.mu.Unlock()
		return "", apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
	}
	op := "snapshot"
	if !snapshot {
		op = "clone"
	}
	key, err := s.beginOpLocked(v, op)
	if err != nil {
		s.mu.Unlock()
		return "", err
	}
	sr := s.db.objs[v.str("SR")]
	src := s.vdiPathLocked(v)
	uuid := newUUID()
	dst := filepath.Join(s.srDir(sr), uuid+".vhd")
	s.mu.Unlock()

	err = s.shareFile(ctx, src, dst, progress)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.endOpLocked(ref, key)
	if err != nil {
		os.Remove(dst)
		s.saveLocked()
		return "", internalErr("copy VDI %s: %v", v.str("uuid"), err)
	}
	v = s.db.objs[ref]
	if v == nil {
		os.Remove(dst)
		return "", apiErr(errHandleInvalid, "VDI", ref)
	}
	rec := deepCopy(v.Rec).(map[string]any)
	for _, f := range []string{"VBDs", "snapshots", "crash_dumps", "current_operations", "allowed_operations"} {
		delete(rec, f)
	}
	rec["uuid"] = uuid
	if name != "" {
		rec["name_label"] = name
	}
	if snapshot {
		rec["is_a_snapshot"] = true
		rec["snapshot_of"] = v.Ref
		rec["snapshot_time"] = xapiTime(time.Now())
	} else {
		rec["is_a_snapshot"] = false
		rec["snapshot_of"] = nullRef
		rec["cbt_enabled"] = false
	}
	nv := s.insertVDILocked(sr, rec)
	if snapshot {
		s.db.addRef(v, "snapshots", nv.Ref)
		if v.bool("cbt_enabled") {
			m := s.metaLocked(v)
			*s.metaLocked(nv) = vdiMeta{Chain: m.Chain, Epoch: m.Epoch}
			m.Epoch++
		}
	}
	return nv.Ref, s.saveLocked()
}

func (s *Server) vdiSnapshot(c *call) (any, error) {
	return s.copyVDI(c.ctx, c.args[0].(string), true, "", c.progress)
}

func (s *Server) vdiClone(c *call) (any, error) {
	return s.copyVDI(c.ctx, c.args[0].(string), false, "", c.progress)
}

// vdiCopy is VDI.copy(vdi, sr, base_vdi, into_vdi) for the lab's one SR
// type: a full copy into a new VDI of sr, or into an existing into_vdi.
func (s *Server) vdiCopy(c *call) (any, error) {
	ref, srRef, into := c.args[0].(string), c.args[1].(string), c.args[3].(string)
	if into == nullRef || into == "" {
		s.mu.Lock()
		if srRef != nullRef {
			if _, err := s.db.get("SR", srRef); err != nil {
				s.mu.Unlock()
				return nil, err
			}
		}
		s.mu.Unlock()
		return s.copyVDI(c.ctx, ref, false, "", c.progress)
	}
	s.mu.Lock()
	v, err := s.db.get("VDI", ref)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	dst, err := s.db.get("VDI", into)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if dst.int("virtual_size") < v.int("virtual_size") {
		s.mu.Unlock()
		return nil, apiErr("VDI_TOO_SMALL", dst.Ref, strconv.FormatInt(v.int("virtual_size"), 10))
	}
	srcPath := s.vdiPathLocked(v)
	s.mu.Unlock()
	img, err := s.openVHD(c.ctx, srcPath)
	if err != nil {
		return nil, internalErr("open VDI %s: %v", ref, err)
	}
	defer img.Close()
	if err := s.writeVDI(c.ctx, into, imageRuns(img), c.progress); err != nil {
		return nil, err
	}
	return into, nil
}

// vdiSetField sets a VDI field that the datamodel makes settable through
// an explicit message (name_label, name_description).
func (s *Server) vdiSetField(field string) handlerFunc {
	return func(c *call) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		v, err := s.db.get("VDI", c.args[0].(string))
		if err != nil {
			return nil, err
		}
		s.db.set(v, field, c.args[1])
		return "", s.saveLocked()
	}
}

// cbtDir holds the bitmaps of a CBT chain, one file per epoch.
func (s *Server) cbtDir(chain string) string { return filepath.Join(s.dir, "cbt", chain) }

func (s *Server) epochFile(chain string, epoch int) string {
	return filepath.Join(s.cbtDir(chain), strconv.Itoa(epoch)+".bitmap")
}

// recordWritesLocked adds changed blocks to a CBT-enabled VDI's current
// epoch.
func (s *Server) recordWritesLocked(v *object, changed bitmap) error {
	if !v.bool("cbt_enabled") || changed.count() == 0 {
		return nil
	}
	m := s.metaLocked(v)
	if m.Chain == "" {
		return nil
	}
	path := s.epochFile(m.Chain, m.Epoch)
	cur, err := readBitmapFile(path, v.int("virtual_size"))
	if err != nil {
		return err
	}
	cur.or(changed)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return labkit.WriteFile(path, cur, 0o600)
}

func (s *Server) vdiEnableCBT(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if v.str("type") == "cbt_metadata" {
		return nil, apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
	}
	if v.bool("cbt_enabled") {
		return "", nil
	}
	m := s.metaLocked(v)
	if !v.bool("is_a_snapshot") {
		m.Chain, m.Epoch = newUUID(), 0
	}
	s.db.set(v, "cbt_enabled", true)
	return "", s.saveLocked()
}

func (s *Server) vdiDisableCBT(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if !v.bool("cbt_enabled") {
		return "", nil
	}
	if !v.bool("is_a_snapshot") {
		m := s.metaLocked(v)
		m.Chain, m.Epoch = "", 0
	}
	s.db.set(v, "cbt_enabled", false)
	return "", s.saveLocked()
}

// vdiDataDestroy is VDI.data_destroy(snapshot): the data goes, the CBT
// metadata stays and the VDI's type becomes cbt_metadata.
func (s *Server) vdiDataDestroy(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if !v.bool("is_a_snapshot") {
		return nil, apiErr(errOperationNotAllowed, "VDI is not a snapshot: "+v.Ref)
	}
	if !v.bool("cbt_enabled") {
		return nil, apiErr(errVDINoCBTMetadata, v.Ref)
	}
	if v.str("type") == "cbt_metadata" {
		return "", nil
	}
	if s.vdiInUseLocked(v) {
		return nil, apiErr(errVDIInUse, v.Ref, "data_destroy")
	}
	for k, o := range v.smap("current_operations") {
		return nil, apiErr(errOtherOperation, "VDI", v.Ref, fmt.Sprint(o), k)
	}
	for _, r := range v.refs("VBDs") {
		if b := s.db.objs[r]; b != nil {
			s.removeVBDLocked(b)
		}
	}
	os.Remove(s.vdiPathLocked(v))
	s.metaLocked(v).NoData = true
	s.db.set(v, "type", "cbt_metadata", "physical_utilisation", int64(0))
	v.smap("other_config")["content_id"] = "/No content: this is a cbt_metadata VDI/"
	return "", s.saveLocked()
}

// changedBlocksLocked returns the blocks written to a CBT chain between
// from and to: the union of the epochs after from's up to to's.
func (s *Server) changedBlocksLocked(from, to *object) (bitmap, error) {
	for _, v := range []*object{from, to} {
		if !v.bool("cbt_enabled") || s.metaLocked(v).Chain == "" {
			return nil, apiErr(errVDINoCBTMetadata, v.Ref)
		}
	}
	mf, mt := s.metaLocked(from), s.metaLocked(to)
	if mf.Chain != mt.Chain {
		return nil, apiErr(errSRBackendFailureCBT, "", "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are unrelated]", "")
	}
	if mf.Epoch > mt.Epoch {
		return nil, apiErr(errSRBackendFailureCBT, "", "Failed to calculate changed blocks for given VDIs. [opterr=Source VDI is newer than the target VDI]", "")
	}
	size := to.int("virtual_size")
	out := newBitmap(size)
	for e := mf.Epoch + 1; e <= mt.Epoch; e++ {
		b, err := readBitmapFile(s.epochFile(mt.Chain, e), size)
		if err != nil {
			return nil, internalErr("%v", err)
		}
		out.or(b)
	}
	return out, nil
}

// vdiListChangedBlocks is VDI.list_changed_blocks(vdi_from, vdi_to): a
// base64 bitmap, one bit per 64 KiB block of vdi_to, most significant bit
// first.
func (s *Server) vdiListChangedBlocks(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	from, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	to, err := s.db.get("VDI", c.args[1].(string))
	if err != nil {
		return nil, err
	}
	if s.vdiInUseLocked(to) {
		return nil, apiErr(errVDIInUse, to.Ref, "list_changed_blocks")
	}
	b, err := s.changedBlocksLocked(from, to)
	if err != nil {
		return nil, err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// vdiNBDInfo: the lab serves no NBD; it answers with no servers, as a
// host without an NBD-enabled network does.
func (s *Server) vdiNBDInfo(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.db.get("VDI", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if v.str("type") == "cbt_metadata" {
		return nil, apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
	}
	return []any{}, nil
}
