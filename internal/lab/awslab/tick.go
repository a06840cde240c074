package awslab

import (
	"maps"
	"os"
	"slices"
	"time"
)

// terminatedKept is how long a terminated instance stays visible, as in
// EC2 (about an hour); tasksKept how long finished import and export
// tasks do (seven days).
const (
	terminatedKept = time.Hour
	tasksKept      = 7 * 24 * time.Hour
)

// tickLocked moves every resource whose transitional state has lasted
// long enough (and whose work is done) to its next state. The lab calls
// it before answering each request, so states follow the clock without a
// timer of their own.
func (s *Server) tickLocked() {
	now := s.now()
	due := func(t time.Time) bool { return !now.Before(t) }
	for _, v := range sortedValues(s.st.Volumes) {
		if v.State == "creating" && v.Ready && due(v.Until) {
			v.State = "available"
			if v.Attach != nil {
				v.State = "in-use"
			}
			s.dirty = true
		}
		if a := v.Attach; a != nil && due(a.Until) {
			switch a.State {
			case "attaching":
				a.State = "attached"
				s.dirty = true
			case "detaching":
				v.Attach = nil
				if v.State == "in-use" {
					v.State = "available"
				}
				s.dirty = true
			}
		}
	}
	for _, in := range sortedValues(s.st.Instances) {
		switch in.State {
		case "pending":
			if due(in.Until) && s.volumesReadyLocked(in) {
				in.State = "running"
				in.TransitionNote = ""
				s.dirty = true
				s.maybeBootLocked(in)
			}
		case "stopping":
			if due(in.Until) && s.guests[in.ID] == nil && s.jobs[in.ID] == nil {
				in.State = "stopped"
				s.dirty = true
			}
		case "shutting-down":
			if due(in.Until) && s.guests[in.ID] == nil && s.jobs[in.ID] == nil {
				in.State = "terminated"
				in.Ended = now
				s.releaseVolumesLocked(in)
				s.dirty = true
			}
		case "terminated":
			if now.Sub(in.Ended) > terminatedKept {
				delete(s.st.Instances, in.ID)
				delete(s.st.Tags, in.ID)
				os.RemoveAll(s.instanceDir(in.ID))
				s.dirty = true
			}
		}
	}
	for _, sn := range sortedValues(s.st.Snapshots) {
		if sn.Status != "pending" {
			continue
		}
		switch {
		case sn.Ready && due(sn.Until):
			sn.Status = "completed"
			sn.Progress = 100
			sn.Completed = now
			s.dirty = true
		case !sn.Ready && sn.Source == "direct" && !sn.Deadline.IsZero() && due(sn.Deadline):
			sn.Status = "error"
			sn.Message = "the snapshot was not completed before its timeout"
			s.dirty = true
		}
	}
	for _, im := range sortedValues(s.st.Images) {
		if im.State == "pending" && due(im.Until) {
			state := "available"
			for _, m := range im.Mappings {
				if m.SnapshotID == "" {
					continue
				}
				sn := s.st.Snapshots[m.SnapshotID]
				switch {
				case sn == nil || sn.Status == "error":
					state = "failed"
				case sn.Status == "pending" && state != "failed":
					state = ""
				}
			}
			if state != "" {
				im.State = state
				s.dirty = true
			}
		}
	}
	for _, t := range sortedValues(s.st.Imports) {
		if t.Status != "active" && t.Status != "deleting" && now.Sub(t.Created) > tasksKept {
			delete(s.st.Imports, t.ID)
			delete(s.st.Tags, t.ID)
			s.dirty = true
			continue
		}
		switch {
		case t.Status == "active" && t.Done && due(t.Until):
			if t.Failed != "" {
				t.Status, t.Message = "deleting", t.Failed
				t.Until = now.Add(s.delay)
				for i := range t.Disks {
					t.Disks[i].Status, t.Disks[i].Message = "deleting", t.Failed
				}
			} else if s.importSettledLocked(t) {
				t.Status, t.Message, t.Progress = "completed", "", 100
				if t.Kind == "snapshot" {
					t.Message = "completed"
				}
				for i := range t.Disks {
					t.Disks[i].Status, t.Disks[i].Message, t.Disks[i].Progress = "completed", "completed", 100
				}
			}
			s.dirty = true
		case t.Status == "deleting" && due(t.Until):
			t.Status = "deleted"
			for i := range t.Disks {
				t.Disks[i].Status = "deleted"
			}
			s.dirty = true
		}
	}
	for _, t := range sortedValues(s.st.Exports) {
		if t.Status != "active" && t.Status != "deleting" && t.Status != "cancelling" && now.Sub(t.Created) > tasksKept {
			delete(s.st.Exports, t.ID)
			delete(s.st.Tags, t.ID)
			s.dirty = true
			continue
		}
		switch {
		case t.Status == "active" && t.Done && due(t.Until):
			if t.Failed != "" {
				if t.Kind == "instance" {
					t.Status, t.Message = "cancelled", t.Failed
				} else {
					t.Status, t.Message = "deleting", t.Failed
					t.Until = now.Add(s.delay)
				}
			} else {
				t.Status, t.Message, t.Progress = "completed", "", 100
			}
			s.dirty = true
		case t.Status == "deleting" && due(t.Until):
			t.Status = "deleted"
			s.dirty = true
		case t.Status == "cancelling" && t.Done:
			t.Status = "cancelled"
			s.dirty = true
		}
	}
}

// volumesReadyLocked reports whether every volume attached to an instance
// holds its content.
func (s *Server) volumesReadyLocked(in *instance) bool {
	for _, v := range s.instanceVolumesLocked(in.ID) {
		if !v.Ready {
			return false
		}
	}
	return true
}

// instanceVolumesLocked returns the volumes attached to an instance, by
// device name.
func (s *Server) instanceVolumesLocked(id string) []*volume {
	var out []*volume
	for _, v := range s.st.Volumes {
		if v.Attach != nil && v.Attach.InstanceID == id {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b *volume) int {
		switch {
		case a.Attach.Device < b.Attach.Device:
			return -1
		case a.Attach.Device > b.Attach.Device:
			return 1
		}
		return 0
	})
	return out
}

// releaseVolumesLocked handles the volumes of a terminated instance:
// those marked DeleteOnTermination are deleted, the others detached.
func (s *Server) releaseVolumesLocked(in *instance) {
	for _, v := range s.instanceVolumesLocked(in.ID) {
		if v.Attach.DeleteOnTermination {
			s.deleteVolumeLocked(v)
			continue
		}
		v.Attach = nil
		v.State = "available"
	}
}

// sortedValues returns a map's values in key order.
func sortedValues[T any](m map[string]*T) []*T {
	keys := slices.Sorted(maps.Keys(m))
	out := make([]*T, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// later returns the later of two times.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
