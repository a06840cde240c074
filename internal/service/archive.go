package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// Description is what `ferry image info` shows: a disk image or a whole-VM
// archive.
type Description struct {
	Disk    *disk.Info    `json:"disk,omitempty"`
	Archive *archive.Info `json:"archive,omitempty"`
}

// IsArchiveFormat reports whether name is a whole-VM archive format.
func (s *Images) IsArchiveFormat(name string) bool { return s.lookupArchive(name) != nil }

// lookupArchive finds an archive format by name.
func (s *Images) lookupArchive(name string) *archive.Format {
	for _, a := range s.Archives {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// probeArchive returns the archive format of the file at path, or nil.
func (s *Images) probeArchive(path, format string) (*archive.Format, error) {
	if format != "" {
		return s.lookupArchive(format), nil
	}
	if len(s.Archives) == 0 {
		return nil, nil
	}
	f, err := disk.OpenFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, a := range s.Archives {
		if a.Probe(f) {
			return a, nil
		}
	}
	return nil, nil
}

func (s *Images) openArchive(ctx context.Context, af *archive.Format, path string) (archive.Reader, error) {
	f, err := disk.OpenFile(path)
	if err != nil {
		return nil, err
	}
	r, err := af.Open(ctx, f, &archive.OpenOptions{Disks: s.Formats})
	if err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// Describe describes a disk image or an archive.
func (s *Images) Describe(ctx context.Context, r OpenRequest) (Description, error) {
	af, err := s.probeArchive(r.Path, r.Format)
	if err != nil {
		return Description{}, err
	}
	if af == nil {
		info, err := s.Info(ctx, r)
		return Description{Disk: &info}, err
	}
	ar, err := s.openArchive(ctx, af, r.Path)
	if err != nil {
		return Description{}, err
	}
	defer ar.Close()
	info := ar.Info()
	return Description{Archive: &info}, nil
}

// selectDisks resolves a disk selector ("" all, an index, or a name) against
// vm's disks.
func selectDisks(vm core.VMSpec, sel string) ([]int, error) {
	if sel == "" {
		all := make([]int, len(vm.Disks))
		for i := range all {
			all[i] = i
		}
		return all, nil
	}
	if i, err := strconv.Atoi(sel); err == nil {
		if i < 0 || i >= len(vm.Disks) {
			return nil, fmt.Errorf("disk %d: the archive has %d disks (0..%d): %w", i, len(vm.Disks), len(vm.Disks)-1, errs.ErrNotFound)
		}
		return []int{i}, nil
	}
	var names []string
	for i, d := range vm.Disks {
		if d.Name == sel {
			return []int{i}, nil
		}
		names = append(names, strconv.Quote(d.Name))
	}
	return nil, fmt.Errorf("disk %q: not in the archive (disks: %s): %w", sel, strings.Join(names, ", "), errs.ErrNotFound)
}

// diskOutputName is the output path of disk i when an archive's disks are
// written to several files: "out.qcow2" becomes "out-1.qcow2".
func diskOutputName(dst string, i, n int) string {
	if n == 1 {
		return dst
	}
	ext := filepath.Ext(dst)
	return fmt.Sprintf("%s-%d%s", strings.TrimSuffix(dst, ext), i, ext)
}

// ArchiveConvertResult says what an archive conversion did.
type ArchiveConvertResult struct {
	VM       core.VMSpec     `json:"vm"`
	Outputs  []ConvertResult `json:"outputs"`
	Duration time.Duration   `json:"duration_ns"`
}

// convertFromArchive converts disks of an archive into disk images, or the
// whole VM into another archive format.
func (s *Images) convertFromArchive(ctx context.Context, af *archive.Format, r ConvertRequest) (ArchiveConvertResult, error) {
	start := time.Now()
	var res ArchiveConvertResult
	ar, err := s.openArchive(ctx, af, r.Src.Path)
	if err != nil {
		return res, err
	}
	defer ar.Close()
	res.VM = ar.VM()
	if to := s.lookupArchive(r.DstFormat); to != nil {
		if r.Src.Disk != "" {
			return res, fmt.Errorf("convert: --disk selects one disk, but %s holds a whole VM: %w", to.Name, errs.ErrInvalidArgument)
		}
		disks := make([]disk.Image, len(res.VM.Disks))
		for i := range disks {
			if disks[i], err = ar.OpenDisk(ctx, i); err != nil {
				return res, err
			}
			defer disks[i].Close()
		}
		out, err := s.writeArchive(ctx, to, r, res.VM, disks)
		res.Outputs = []ConvertResult{out}
		res.Duration = time.Since(start)
		return res, err
	}
	idx, err := selectDisks(res.VM, r.Src.Disk)
	if err != nil {
		return res, fmt.Errorf("%s: %w", r.Src.Path, err)
	}
	rep := progress.Or(r.Progress)
	for n, i := range idx {
		img, err := ar.OpenDisk(ctx, i)
		if err != nil {
			return res, err
		}
		rep.Phase(fmt.Sprintf("disk %d/%d", n+1, len(idx)))
		one := r
		one.Dst = diskOutputName(r.Dst, i, len(idx))
		out, err := s.convertImage(ctx, img, one, time.Now())
		img.Close()
		res.Outputs = append(res.Outputs, out)
		if err != nil {
			return res, fmt.Errorf("%s disk %d (%s): %w", r.Src.Path, i, res.VM.Disks[i].Name, err)
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// writeArchive writes vm with the given disk images as an archive file at
// r.Dst (or standard output for "-").
func (s *Images) writeArchive(ctx context.Context, af *archive.Format, r ConvertRequest, vm core.VMSpec, disks []disk.Image) (ConvertResult, error) {
	start := time.Now()
	res := ConvertResult{Dst: r.Dst, DstFormat: af.Name}
	if af.Create == nil {
		return res, fmt.Errorf("create %s: ferry cannot write %s archives: %w", r.Dst, af.Name, errs.ErrUnimplemented)
	}
	for i := range vm.Disks {
		vm.Disks[i].Size = disks[i].Size()
	}
	var t disk.Target
	var out *disk.OutputFile
	if r.Dst == "-" {
		if r.Output == nil {
			return res, fmt.Errorf("convert: output is standard output but none was given: %w", errs.ErrInvalidArgument)
		}
		t = disk.PlainTarget(r.Output)
	} else {
		var err error
		if out, err = disk.CreateOutputFile(r.Dst); err != nil {
			return res, err
		}
		out.Sync = r.Sync
		defer out.Abort() // no-op after Commit
		t = out
	}
	w, err := af.Create(ctx, t, vm, &archive.CreateOptions{Disks: s.Formats, Workers: r.Workers, Options: r.Options})
	if err != nil {
		return res, fmt.Errorf("create %s: %w", r.Dst, err)
	}
	defer w.Close()
	rep := progress.Or(r.Progress)
	var total int64
	for _, d := range disks {
		total += d.Size()
	}
	rep.SetTotal(total)
	for i, img := range disks {
		rep.Phase(fmt.Sprintf("disk %d/%d", i+1, len(disks)))
		dw, err := w.NextDisk(ctx)
		if err != nil {
			return res, fmt.Errorf("%s disk %d: %w", r.Dst, i, err)
		}
		st, err := disk.Convert(ctx, dw, img, &disk.ConvertOptions{Workers: r.Workers, ZeroGranularity: r.ZeroGranularity, Progress: &phaseless{rep}})
		if err == nil {
			err = dw.Commit(ctx)
		}
		dw.Close()
		if err != nil {
			return res, fmt.Errorf("%s disk %d: %w", r.Dst, i, err)
		}
		res.Stats.Size += st.Size
		res.Stats.Read += st.Read
		res.Stats.Written += st.Written
		res.Stats.Skipped += st.Skipped
		res.Stats.ZeroDetected += st.ZeroDetected
	}
	if err := w.Commit(ctx); err != nil {
		return res, fmt.Errorf("%s: %w", r.Dst, err)
	}
	if out != nil {
		if err := out.Commit(); err != nil {
			return res, err
		}
		res.OutputSize = AllocatedBytes(r.Dst)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// phaseless forwards progress but keeps the caller's totals: Convert's own
// SetTotal of one disk must not replace the whole archive's.
type phaseless struct{ progress.Reporter }

func (p *phaseless) SetTotal(int64) {}

// BuildArchiveRequest asks for disk images to be packed with a VM
// description into an archive.
type BuildArchiveRequest struct {
	Sources []OpenRequest
	ConvertRequest
	VM core.VMSpec
}

// BuildArchive writes the images in r.Sources as the disks of r.VM into a
// new archive of format r.DstFormat.
func (s *Images) BuildArchive(ctx context.Context, r BuildArchiveRequest) (ConvertResult, error) {
	af := s.lookupArchive(r.DstFormat)
	if af == nil {
		return ConvertResult{}, fmt.Errorf("%q is not an archive format: %w", r.DstFormat, errs.ErrInvalidArgument)
	}
	vm := r.VM
	if vm.Name == "" {
		vm.Name = strings.TrimSuffix(filepath.Base(r.Dst), filepath.Ext(r.Dst))
	}
	if vm.CPUs <= 0 {
		vm.CPUs = 1
	}
	if vm.MemoryBytes <= 0 {
		vm.MemoryBytes = 1 << 30
	}
	if vm.Firmware == "" {
		vm.Firmware = core.BIOS
	}
	vm.Disks = nil
	var disks []disk.Image
	defer func() {
		for _, d := range disks {
			d.Close()
		}
	}()
	for i, src := range r.Sources {
		img, err := s.open(ctx, src)
		if err != nil {
			return ConvertResult{}, err
		}
		disks = append(disks, img)
		name := strings.TrimSuffix(filepath.Base(src.Path), filepath.Ext(src.Path))
		vm.Disks = append(vm.Disks, core.DiskSpec{Name: name, Size: img.Size(), Bootable: i == 0, Position: i})
	}
	if len(disks) == 0 {
		return ConvertResult{}, fmt.Errorf("convert: an archive needs at least one disk: %w", errs.ErrInvalidArgument)
	}
	res, err := s.writeArchive(ctx, af, r.ConvertRequest, vm, disks)
	if len(disks) > 0 {
		res.Src = disks[0].Info()
	}
	return res, err
}

// convertArchiveStream converts an archive read front to back: its disks to
// images (all, or the one r.Src.Disk selects), or the whole VM to another
// archive format.
func (s *Images) convertArchiveStream(ctx context.Context, af *archive.Format, in io.Reader, r ConvertRequest) (*ArchiveConvertResult, error) {
	start := time.Now()
	res := &ArchiveConvertResult{}
	sr, err := af.OpenStream(ctx, in, &archive.OpenOptions{Disks: s.Formats})
	if err != nil {
		return res, err
	}
	defer sr.Close()
	res.VM = sr.VM()
	n := len(res.VM.Disks)
	if to := s.lookupArchive(r.DstFormat); to != nil {
		out, err := s.streamArchiveToArchive(ctx, sr, to, r)
		res.Outputs = []ConvertResult{out}
		res.Duration = time.Since(start)
		return res, err
	}
	want, err := selectDisks(res.VM, r.Src.Disk)
	if err != nil {
		return res, fmt.Errorf("%s: %w", r.Src.Path, err)
	}
	rep := progress.Or(r.Progress)
	for {
		i, ds, err := sr.NextDisk(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, err
		}
		if !slices.Contains(want, i) {
			continue // abandoned: the next NextDisk skips it
		}
		rep.Phase(fmt.Sprintf("disk %d", i))
		one := r
		one.Dst = diskOutputName(r.Dst, i, len(want))
		out := ConvertResult{Dst: one.Dst, DstFormat: r.DstFormat, Src: ds.Info()}
		w, err := s.create(ctx, one, ds.Size(), &disk.CreateOptions{Options: r.Options, Workers: r.Workers, Sync: r.Sync, Logger: s.Logger})
		if err != nil {
			return res, err
		}
		out.Stats, err = disk.ConvertStream(ctx, w, ds, &disk.ConvertOptions{ZeroGranularity: r.ZeroGranularity, Progress: rep})
		if err == nil {
			err = w.Commit(ctx)
		}
		w.Close()
		if err != nil {
			return res, fmt.Errorf("disk %d (%s): %w", i, res.VM.Disks[i].Name, err)
		}
		out.Duration = time.Since(start)
		if one.Dst != "-" {
			out.OutputSize = AllocatedBytes(one.Dst)
		}
		res.Outputs = append(res.Outputs, out)
	}
	if len(res.Outputs) != len(want) {
		return res, fmt.Errorf("%s: the stream held %d of the archive's %d disks: %w", r.Src.Path, len(res.Outputs), n, errs.ErrCorrupt)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// streamArchiveToArchive copies a streamed archive's disks, in slot order,
// into a new archive.
func (s *Images) streamArchiveToArchive(ctx context.Context, sr archive.StreamReader, to *archive.Format, r ConvertRequest) (ConvertResult, error) {
	res := ConvertResult{Dst: r.Dst, DstFormat: to.Name}
	if r.Src.Disk != "" {
		return res, fmt.Errorf("convert: --disk selects one disk, but %s holds a whole VM: %w", to.Name, errs.ErrInvalidArgument)
	}
	var t disk.Target
	var out *disk.OutputFile
	if r.Dst == "-" {
		t = disk.PlainTarget(r.Output)
	} else {
		var err error
		if out, err = disk.CreateOutputFile(r.Dst); err != nil {
			return res, err
		}
		defer out.Abort()
		t = out
	}
	w, err := to.Create(ctx, t, sr.VM(), &archive.CreateOptions{Disks: s.Formats, Workers: r.Workers, Options: r.Options})
	if err != nil {
		return res, fmt.Errorf("create %s: %w", r.Dst, err)
	}
	defer w.Close()
	for next := 0; ; next++ {
		i, ds, err := sr.NextDisk(ctx)
		if errors.Is(err, io.EOF) {
			if next != len(sr.VM().Disks) {
				return res, fmt.Errorf("%s: stream ended after %d of %d disks: %w", r.Src.Path, next, len(sr.VM().Disks), errs.ErrCorrupt)
			}
			break
		}
		if err != nil {
			return res, err
		}
		if i != next {
			return res, fmt.Errorf("%s: the archive stores disk %d before disk %d; streamed conversion to %s needs slot order, save it to a file first: %w", r.Src.Path, i, next, to.Name, errs.ErrUnimplemented)
		}
		dw, err := w.NextDisk(ctx)
		if err != nil {
			return res, err
		}
		st, err := disk.ConvertStream(ctx, dw, ds, &disk.ConvertOptions{ZeroGranularity: r.ZeroGranularity, Progress: r.Progress})
		if err == nil {
			err = dw.Commit(ctx)
		}
		dw.Close()
		if err != nil {
			return res, fmt.Errorf("disk %d: %w", i, err)
		}
		res.Stats.Read += st.Read
		res.Stats.Written += st.Written
		res.Stats.Size += st.Size
	}
	if err := w.Commit(ctx); err != nil {
		return res, err
	}
	if out != nil {
		if err := out.Commit(); err != nil {
			return res, err
		}
		res.OutputSize = AllocatedBytes(r.Dst)
	}
	return res, nil
}
