package xenlab

import (
	"context"
	"errors"
	"io"

	"github.com/ferry-project/ferry/internal/disk"
)

// writeVDI lays the runs of src over the VDI's content (see rewrite),
// records the changed blocks for CBT and updates the record.
func (s *Server) writeVDI(ctx context.Context, ref string, src runSource, progress func(float64)) error {
	s.mu.Lock()
	v, err := s.db.get("VDI", ref)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if v.str("type") == "cbt_metadata" {
		s.mu.Unlock()
		return apiErr(errVDIIncompatibleType, v.Ref, "cbt_metadata")
	}
	if s.vdiInUseLocked(v) {
		s.mu.Unlock()
		return apiErr(errVDIInUse, v.Ref, "import")
	}
	key, err := s.beginOpLocked(v, "import")
	if err != nil {
		s.mu.Unlock()
		return err
	}
	path := s.vdiPathLocked(v)
	s.mu.Unlock()

	changed, werr := s.rewrite(ctx, path, src, progress)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.endOpLocked(ref, key)
	if v = s.db.objs[ref]; v == nil {
		return apiErr(errHandleInvalid, "VDI", ref)
	}
	if werr != nil {
		s.saveLocked()
		return werr
	}
	if err := s.recordWritesLocked(v, changed); err != nil {
		s.saveLocked()
		return internalErr("record changed blocks of VDI %s: %v", v.str("uuid"), err)
	}
	s.updateUtilisationLocked(v)
	s.db.touch(v)
	return s.saveLocked()
}

// imageRuns yields an image's data extents in pieces of up to 1 MiB.
func imageRuns(img disk.Image) runSource {
	var exts []disk.Extent
	loaded := false
	var cur disk.Extent
	buf := make([]byte, 1<<20)
	return func(ctx context.Context) (int64, []byte, error) {
		if !loaded {
			loaded = true
			for e, err := range img.Extents(ctx, 0, img.Size()) {
				if err != nil {
					return 0, nil, err
				}
				if e.Kind == disk.Data {
					exts = append(exts, e)
				}
			}
		}
		for cur.Len == 0 {
			if len(exts) == 0 {
				return 0, nil, io.EOF
			}
			cur, exts = exts[0], exts[1:]
		}
		n := min(cur.Len, int64(len(buf)))
		if err := readFull(img, buf[:n], cur.Off); err != nil {
			return 0, nil, err
		}
		off := cur.Off
		cur.Off += n
		cur.Len -= n
		return off, buf[:n], nil
	}
}

// streamRuns adapts a disk.Stream.
func streamRuns(st disk.Stream) runSource {
	return func(ctx context.Context) (int64, []byte, error) {
		off, p, err := st.Next(ctx)
		if errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		return off, p, err
	}
}
