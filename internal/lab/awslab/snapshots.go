package awslab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/raw"
)

// noVolume is the volume ID EC2 reports for snapshots that were not taken
// from a volume (imports, EBS direct APIs).
const noVolume = "vol-ffffffff"

// maxCachedIndexes bounds the block indexes kept in memory.
const maxCachedIndexes = 16

// snapIndex returns the block index of a snapshot whose blocks are all
// recorded (an index file exists). Indexes are immutable and cached.
func (s *Server) snapIndex(id string) (index, error) {
	s.idxMu.Lock()
	if x, ok := s.idxCache[id]; ok {
		s.idxMu.Unlock()
		return x, nil
	}
	s.idxMu.Unlock()
	x, err := readIndex(s.indexPath(id))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	if len(s.idxOrder) >= maxCachedIndexes {
		delete(s.idxCache, s.idxOrder[0])
		s.idxOrder = s.idxOrder[1:]
	}
	s.idxCache[id] = x
	s.idxOrder = append(s.idxOrder, id)
	return x, nil
}

func (s *Server) forgetIndex(id string) {
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	delete(s.idxCache, id)
}

// newSnapshotLocked records a pending snapshot.
func (s *Server) newSnapshotLocked(source, volID string, size int64, desc, lineage string) *snapshot {
	now := s.now()
	sn := &snapshot{ID: newID("snap"), VolumeID: volID, Size: size, Description: desc, Status: "pending",
		Start: now, Until: now.Add(s.delay), Source: source, Lineage: lineage}
	if sn.Lineage == "" {
		sn.Lineage = sn.ID
	}
	if sn.VolumeID == "" {
		sn.VolumeID = noVolume
	}
	s.st.Snapshots[sn.ID] = sn
	s.dirty = true
	return sn
}

// startSnapshotCopyLocked stores a volume's content as a snapshot's blocks
// in the background.
func (s *Server) startSnapshotCopyLocked(sn *snapshot) {
	id, volID := sn.ID, sn.VolumeID
	s.goJobLocked(id, func(ctx context.Context) error {
		f, err := disk.OpenFile(s.volumePath(volID))
		if err != nil {
			return err
		}
		img, err := raw.Format().Open(ctx, f, nil)
		if err != nil {
			f.Close()
			return err
		}
		defer img.Close()
		s.blocks.gc.RLock()
		defer s.blocks.gc.RUnlock()
		x, stored, err := storeImage(ctx, s.blocks, img, s.progressSetter(func() *int {
			if sn := s.st.Snapshots[id]; sn != nil {
				return &sn.Progress
			}
			return nil
		}, 99))
		if err != nil {
			return err
		}
		if err := writeIndex(s.indexPath(id), x); err != nil {
			return err
		}
		s.mu.Lock()
		if sn := s.st.Snapshots[id]; sn != nil {
			sn.Bytes = stored
		}
		s.mu.Unlock()
		return nil
	}, func(err error) {
		sn := s.st.Snapshots[id]
		if sn == nil {
			return
		}
		if err != nil {
			s.log.Error("snapshot volume", "snapshot", id, "volume", volID, "err", err)
			sn.Status, sn.Message = "error", "the snapshot could not be taken: "+err.Error()
			return
		}
		sn.Ready = true
		sn.Until = later(sn.Until, s.now())
	})
}

// progressSetter returns a progress callback that stores done/total as a
// percentage (at most top) in the int that field returns, under the lock.
func (s *Server) progressSetter(field func() *int, top int) func(done, total int64) {
	last := -1
	return func(done, total int64) {
		if total <= 0 {
			return
		}
		pct := int(done * int64(top) / total)
		if pct == last {
			return
		}
		last = pct
		s.mu.Lock()
		if p := field(); p != nil {
			*p = pct
		}
		s.mu.Unlock()
	}
}

func (s *Server) snapshotLocked(id string) (*snapshot, error) {
	if id == "" {
		return nil, missing("SnapshotId")
	}
	if err := checkID("snap", id); err != nil {
		return nil, err
	}
	sn := s.st.Snapshots[id]
	if sn == nil {
		return nil, notFound("snap", id)
	}
	return sn, nil
}

func (s *Server) snapshotNode(sn *snapshot, name string) *node {
	kids := []*node{
		el("snapshotId", sn.ID),
		el("volumeId", sn.VolumeID),
		el("status", sn.Status),
		opt("statusMessage", sn.Message),
		el("startTime", ec2Time(sn.Start)),
		el("progress", strconv.Itoa(sn.Progress)+"%"),
		el("ownerId", s.st.Account),
		el("volumeSize", sn.Size),
		el("description", sn.Description),
		el("encrypted", false),
		tagSet(s.st.Tags[sn.ID]),
		el("storageTier", "standard"),
	}
	if !sn.Completed.IsZero() {
		kids = append(kids, el("completionTime", ec2Time(sn.Completed)))
	}
	if sn.Status == "completed" {
		kids = append(kids, el("fullSnapshotSizeInBytes", sn.Bytes))
	}
	return el(name, kids)
}

func (s *Server) snapshotAttrs(sn *snapshot) attrs {
	return func(name string) ([]string, bool) {
		switch name {
		case "snapshot-id":
			return []string{sn.ID}, true
		case "volume-id":
			return []string{sn.VolumeID}, true
		case "status":
			return []string{sn.Status}, true
		case "owner-id":
			return []string{s.st.Account}, true
		case "progress":
			return []string{strconv.Itoa(sn.Progress) + "%"}, true
		case "start-time":
			return []string{ec2Time(sn.Start)}, true
		case "volume-size":
			return []string{strconv.FormatInt(sn.Size, 10)}, true
		case "description":
			return []string{sn.Description}, true
		case "encrypted":
			return []string{"false"}, true
		case "storage-tier":
			return []string{"standard"}, true
		}
		return nil, false
	}
}

func (s *Server) describeSnapshots(_ context.Context, p params) ([]*node, error) {
	fs, err := p.filters("Filter")
	if err != nil {
		return nil, err
	}
	for _, o := range p.list("Owner") {
		if o != "self" && o != s.st.Account {
			return []*node{set("snapshotSet", nil)}, nil
		}
	}
	ids := p.list("SnapshotId")
	var list []*snapshot
	if len(ids) > 0 {
		var unknown []string
		for _, id := range ids {
			if err := checkID("snap", id); err != nil {
				return nil, err
			}
			if sn := s.st.Snapshots[id]; sn != nil {
				list = append(list, sn)
			} else {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			return nil, ec2Err("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", strings.Join(unknown, ", "))
		}
	} else {
		list = sortedValues(s.st.Snapshots)
	}
	var hits []*node
	for _, sn := range list {
		ok, err := matchFilters(fs, s.st.Tags[sn.ID], s.snapshotAttrs(sn))
		if err != nil {
			return nil, err
		}
		if ok {
			hits = append(hits, s.snapshotNode(sn, "item"))
		}
	}
	from, to, next, err := page(p, len(hits), 5, 1000)
	if err != nil {
		return nil, err
	}
	return []*node{set("snapshotSet", hits[from:to]), opt("nextToken", next)}, nil
}

// snapshotVolumeLocked starts a snapshot of a volume.
func (s *Server) snapshotVolumeLocked(v *volume, desc string) (*snapshot, error) {
	if !v.Ready || (v.State != "available" && v.State != "in-use") {
		return nil, ec2Err("IncorrectState", "The volume '%s' is in the '%s' state.", v.ID, v.State)
	}
	sn := s.newSnapshotLocked("volume", v.ID, v.Size, desc, v.Lineage)
	s.startSnapshotCopyLocked(sn)
	s.log.Info("snapshot started", "snapshot", sn.ID, "volume", v.ID)
	return sn, nil
}

func (s *Server) createSnapshot(_ context.Context, p params) ([]*node, error) {
	v, err := s.volumeLocked(p.str("VolumeId"))
	if err != nil {
		return nil, err
	}
	tags, err := p.tagSpecs("snapshot")
	if err != nil {
		return nil, err
	}
	sn, err := s.snapshotVolumeLocked(v, p.str("Description"))
	if err != nil {
		return nil, err
	}
	if t := tags["snapshot"]; len(t) > 0 {
		s.st.Tags[sn.ID] = cloneTags(t)
	}
	return s.snapshotNode(sn, "x").kids, nil
}

func (s *Server) createSnapshots(_ context.Context, p params) ([]*node, error) {
	id := p.str("InstanceSpecification.InstanceId")
	if id == "" {
		return nil, missing("InstanceSpecification.InstanceId")
	}
	in, err := s.instanceLocked(id)
	if err != nil {
		return nil, err
	}
	if in.State == "terminated" || in.State == "shutting-down" {
		return nil, ec2Err("IncorrectInstanceState", "The instance '%s' is %s.", in.ID, in.State)
	}
	exBoot, err := p.boolean("InstanceSpecification.ExcludeBootVolume")
	if err != nil {
		return nil, err
	}
	exclude := p.list("InstanceSpecification.ExcludeDataVolumeId")
	copyTags := p.str("CopyTagsFromSource") == "volume"
	tags, err := p.tagSpecs("snapshot")
	if err != nil {
		return nil, err
	}
	var vols []*volume
	for _, v := range s.instanceVolumesLocked(in.ID) {
		if exBoot && v.Attach.Device == in.RootDevice || containsString(exclude, v.ID) {
			continue
		}
		if !v.Ready {
			return nil, ec2Err("IncorrectState", "The volume '%s' is in the '%s' state.", v.ID, v.State)
		}
		vols = append(vols, v)
	}
	var items []*node
	for _, v := range vols {
		sn, err := s.snapshotVolumeLocked(v, p.str("Description"))
		if err != nil {
			return nil, err
		}
		t := map[string]string{}
		if copyTags {
			for k, val := range s.st.Tags[v.ID] {
				t[k] = val
			}
		}
		for k, val := range tags["snapshot"] {
			t[k] = val
		}
		if len(t) > 0 {
			s.st.Tags[sn.ID] = t
		}
		items = append(items, el("item",
			el("snapshotId", sn.ID), el("volumeId", v.ID), el("state", sn.Status),
			el("startTime", ec2Time(sn.Start)), el("progress", "0%"), el("ownerId", s.st.Account),
			el("volumeSize", sn.Size), el("description", sn.Description), el("encrypted", false),
			el("availabilityZone", v.AZ), tagSet(s.st.Tags[sn.ID])))
	}
	return []*node{set("snapshotSet", items)}, nil
}

func (s *Server) deleteSnapshot(_ context.Context, p params) ([]*node, error) {
	sn, err := s.snapshotLocked(p.str("SnapshotId"))
	if err != nil {
		return nil, err
	}
	for _, im := range sortedValues(s.st.Images) {
		for _, m := range im.Mappings {
			if m.SnapshotID == sn.ID {
				return nil, ec2Err("InvalidSnapshot.InUse", "The snapshot %s is currently in use by %s", sn.ID, im.ID)
			}
		}
	}
	s.deleteSnapshotLocked(sn)
	return []*node{el("return", true)}, nil
}

func (s *Server) deleteSnapshotLocked(sn *snapshot) {
	s.cancelJobLocked(sn.ID)
	if j := s.journals[sn.ID]; j != nil {
		j.close()
		delete(s.journals, sn.ID)
	}
	delete(s.st.Snapshots, sn.ID)
	delete(s.st.Tags, sn.ID)
	s.forgetIndex(sn.ID)
	for _, ext := range []string{".idx", ".journal", ".base"} {
		os.Remove(filepath.Join(s.dir, "snapshots", sn.ID+ext))
	}
	s.dirty = true
	s.log.Info("snapshot deleted", "snapshot", sn.ID)
	s.sweepLocked()
}

// sweepLocked removes, in the background, the blocks no snapshot refers
// to any more.
func (s *Server) sweepLocked() {
	s.goJobLocked("block-sweep", func(ctx context.Context) error {
		s.blocks.gc.Lock()
		defer s.blocks.gc.Unlock()
		live := map[hash]bool{}
		files, err := os.ReadDir(filepath.Join(s.dir, "snapshots"))
		if err != nil {
			return err
		}
		for _, f := range files {
			path := filepath.Join(s.dir, "snapshots", f.Name())
			var x index
			switch filepath.Ext(f.Name()) {
			case ".idx", ".base":
				x, err = readIndex(path)
			case ".journal":
				x, err = readJournal(path)
			default:
				continue
			}
			if err != nil {
				return fmt.Errorf("sweep blocks: %w", err)
			}
			for _, e := range x {
				live[e.Hash] = true
			}
		}
		n, err := s.blocks.sweep(live)
		if n > 0 {
			s.log.Info("blocks swept", "blocks", n)
		}
		return err
	}, func(err error) {
		if err != nil {
			s.log.Error("sweep blocks", "err", err)
		}
	})
}

func containsString(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
