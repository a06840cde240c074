// Package service holds the operations that the CLI, the REST API and the
// web UI share. Each operation takes a request struct and returns a result
// struct that serialises to JSON; rendering is the caller's business.
package service

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// Images runs disk image operations over a format registry and the
// whole-VM archive formats.
type Images struct {
	Formats  *disk.Registry
	Archives []*archive.Format
	Logger   *slog.Logger
}

// NewImages returns Images over reg and archives; a nil logger discards.
func NewImages(reg *disk.Registry, archives []*archive.Format, logger *slog.Logger) *Images {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Images{Formats: reg, Archives: archives, Logger: logger}
}

// OpenRequest names an image to open.
type OpenRequest struct {
	Path   string `json:"path"`
	Format string `json:"format,omitempty"` // "" probes
	// NoBacking refuses images that name a backing file.
	NoBacking bool `json:"no_backing,omitempty"`
	// Disk selects disks of a whole-VM archive (OVA, XVA): an index from 0
	// or a disk name; "" means every disk.
	Disk string `json:"disk,omitempty"`
}

func (s *Images) open(ctx context.Context, r OpenRequest) (disk.Image, error) {
	return s.Formats.Open(ctx, r.Path, &disk.RegistryOpenOptions{Format: r.Format, NoBacking: r.NoBacking})
}

// Info describes an image and its backing chain. ActualSize is filled from
// the file system for each file of the chain.
func (s *Images) Info(ctx context.Context, r OpenRequest) (disk.Info, error) {
	img, err := s.open(ctx, r)
	if err != nil {
		return disk.Info{}, err
	}
	defer img.Close()
	info := img.Info()
	for i := &info; i != nil; i = i.Backing {
		if i.Filename == "" && i == &info {
			i.Filename = r.Path
		}
		if i.Filename != "" {
			i.ActualSize = AllocatedBytes(i.Filename)
		}
	}
	return info, nil
}

// AllocatedBytes is the space path occupies on its file system, 0 if it
// cannot be told.
func AllocatedBytes(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}

// ConvertRequest asks for one image to be converted into a new file.
type ConvertRequest struct {
	Src       OpenRequest       `json:"src"`
	Dst       string            `json:"dst"`
	DstFormat string            `json:"dst_format"`
	Options   map[string]string `json:"options,omitempty"`
	// BackingFile makes the output an overlay over this file, written
	// only where the source differs from it; BackingFormat its format
	// ("" probes). A relative name is relative to the output's directory.
	BackingFile   string `json:"backing_file,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
	// Workers and ZeroGranularity: see disk.ConvertOptions.
	Workers         int   `json:"workers,omitempty"`
	ZeroGranularity int64 `json:"zero_granularity,omitempty"`
	// Sync flushes the output to stable storage before it is renamed into
	// place.
	Sync bool `json:"sync,omitempty"`

	Progress progress.Reporter `json:"-"`
	// Input is read instead of a file when Src.Path is "-": a
	// non-seekable source read front to back. InputSize is its length if
	// known (needed for raw input). Probing peeks at the first MiB through
	// bufio.NewReaderSize(Input, 1<<20); pass such a reader when the same
	// request goes to ConvertArchive and then Convert, so the peek
	// consumes nothing.
	Input     io.Reader `json:"-"`
	InputSize int64     `json:"-"`
	// Output receives the image when Dst is "-".
	Output io.Writer `json:"-"`
}

// ConvertResult says what a conversion did.
type ConvertResult struct {
	Src        disk.Info         `json:"src"`
	Dst        string            `json:"dst"`
	DstFormat  string            `json:"dst_format"`
	Stats      disk.ConvertStats `json:"stats"`
	Duration   time.Duration     `json:"duration_ns"`
	OutputSize int64             `json:"output_bytes"` // allocated bytes of the output file
}

// Convert converts r.Src into a new image at r.Dst. Nothing is left at
// r.Dst unless the conversion succeeds. A whole-VM archive source is
// converted disk by disk (see ConvertArchive); use that for its result.
func (s *Images) Convert(ctx context.Context, r ConvertRequest) (ConvertResult, error) {
	start := time.Now()
	res := ConvertResult{Dst: r.Dst}
	if r.Dst == "" {
		return res, fmt.Errorf("convert: no output path: %w", errs.ErrInvalidArgument)
	}
	if af := s.lookupArchive(r.DstFormat); af != nil {
		return s.BuildArchive(ctx, BuildArchiveRequest{Sources: []OpenRequest{r.Src}, ConvertRequest: r})
	}
	ft, err := s.Formats.Lookup(r.DstFormat)
	if err != nil {
		return res, err
	}
	res.DstFormat = ft.Name
	if r.Src.Path == "-" {
		return s.convertStream(ctx, r, res, start)
	}
	src, err := s.open(ctx, r.Src)
	if err != nil {
		return res, err
	}
	defer src.Close()
	return s.convertImage(ctx, src, r, start)
}

// ConvertArchive converts an archive's disks into images (one output per
// selected disk) or the whole VM into another archive format. It returns
// (nil, nil) when r.Src is not an archive.
func (s *Images) ConvertArchive(ctx context.Context, r ConvertRequest) (*ArchiveConvertResult, error) {
	if r.Src.Path == "-" {
		return s.convertArchiveFromInput(ctx, &r)
	}
	af, err := s.probeArchive(r.Src.Path, r.Src.Format)
	if err != nil || af == nil {
		return nil, err
	}
	if _, err := s.Formats.Lookup(r.DstFormat); err != nil && s.lookupArchive(r.DstFormat) == nil {
		return nil, err
	}
	res, err := s.convertFromArchive(ctx, af, r)
	return &res, err
}

// convertArchiveFromInput probes r.Input for an archive; if it holds one it
// converts it as a stream, and otherwise returns (nil, nil) having consumed
// nothing (see ConvertRequest.Input).
func (s *Images) convertArchiveFromInput(ctx context.Context, r *ConvertRequest) (*ArchiveConvertResult, error) {
	if r.Input == nil {
		return nil, fmt.Errorf("convert: source is standard input but no input was given: %w", errs.ErrInvalidArgument)
	}
	br := bufio.NewReaderSize(r.Input, 1<<20)
	var af *archive.Format
	if r.Src.Format != "" {
		af = s.lookupArchive(r.Src.Format)
	} else {
		head, _ := br.Peek(1 << 20)
		hf := disk.BytesFile("-", head)
		for _, a := range s.Archives {
			if a.OpenStream != nil && a.Probe(hf) {
				af = a
				break
			}
		}
	}
	if af == nil {
		return nil, nil
	}
	if af.OpenStream == nil {
		return nil, fmt.Errorf("%s archives cannot be read from a stream: %w", af.Name, errs.ErrUnimplemented)
	}
	return s.convertArchiveStream(ctx, af, br, *r)
}

// create starts the output of a conversion: a file under a temporary name,
// or r.Output for "-".
func (s *Images) create(ctx context.Context, r ConvertRequest, size int64, co *disk.CreateOptions) (disk.Writer, error) {
	if r.Dst == "-" {
		if r.Output == nil {
			return nil, fmt.Errorf("convert: output is standard output but none was given: %w", errs.ErrInvalidArgument)
		}
		return s.Formats.CreateTo(ctx, disk.PlainTarget(r.Output), r.DstFormat, size, co)
	}
	return s.Formats.Create(ctx, r.Dst, r.DstFormat, size, co)
}

// convertImage converts an opened image per r.
func (s *Images) convertImage(ctx context.Context, src disk.Image, r ConvertRequest, start time.Time) (ConvertResult, error) {
	res := ConvertResult{Dst: r.Dst, DstFormat: r.DstFormat, Src: src.Info()}
	if ft, err := s.Formats.Lookup(r.DstFormat); err == nil {
		res.DstFormat = ft.Name
	}
	co := &disk.CreateOptions{Options: r.Options, Source: src, BackingFile: r.BackingFile, BackingFormat: r.BackingFormat, Workers: r.Workers, Sync: r.Sync, Logger: s.Logger}
	var base disk.Image
	if r.BackingFile != "" {
		bpath := r.BackingFile
		if !filepath.IsAbs(bpath) {
			bpath = filepath.Join(filepath.Dir(r.Dst), bpath)
		}
		var err error
		base, err = s.open(ctx, OpenRequest{Path: bpath, Format: r.BackingFormat})
		if err != nil {
			return res, fmt.Errorf("backing file: %w", err)
		}
		defer base.Close()
		co.Backing = base
		if co.BackingFormat == "" {
			co.BackingFormat = base.Info().Format
		}
	}
	w, err := s.create(ctx, r, src.Size(), co)
	if err != nil {
		return res, err
	}
	defer w.Close() // aborts unless committed
	rep := progress.Or(r.Progress)
	rep.Phase("convert")
	res.Stats, err = disk.Convert(ctx, w, src, &disk.ConvertOptions{Workers: r.Workers, ZeroGranularity: r.ZeroGranularity, Base: base, Progress: rep, Logger: s.Logger})
	if err != nil {
		return res, fmt.Errorf("%s -> %s: %w", r.Src.Path, r.Dst, err)
	}
	if err := w.Commit(ctx); err != nil {
		return res, fmt.Errorf("%s: %w", r.Dst, err)
	}
	res.Duration = time.Since(start)
	if r.Dst != "-" {
		res.OutputSize = AllocatedBytes(r.Dst)
	}
	s.Logger.Info("converted", "src", r.Src.Path, "dst", r.Dst, "format", res.DstFormat, "bytes", res.Stats.Written, "duration", res.Duration)
	return res, nil
}

func (s *Images) convertStream(ctx context.Context, r ConvertRequest, res ConvertResult, start time.Time) (ConvertResult, error) {
	if r.Input == nil {
		return res, fmt.Errorf("convert: source is standard input but no input was given: %w", errs.ErrInvalidArgument)
	}
	if r.BackingFile != "" {
		return res, fmt.Errorf("convert: -B needs a seekable source, not a stream: %w", errs.ErrUnimplemented)
	}
	src, err := s.Formats.OpenStream(ctx, r.Input, r.Src.Format, r.InputSize)
	if err != nil {
		return res, err
	}
	defer src.Close()
	res.Src = src.Info()
	if res.Src.Filename == "" {
		res.Src.Filename = "-"
	}
	w, err := s.create(ctx, r, src.Size(), &disk.CreateOptions{Options: r.Options, Workers: r.Workers, Sync: r.Sync, Logger: s.Logger})
	if err != nil {
		return res, err
	}
	defer w.Close()
	rep := progress.Or(r.Progress)
	rep.Phase("convert")
	res.Stats, err = disk.ConvertStream(ctx, w, src, &disk.ConvertOptions{ZeroGranularity: r.ZeroGranularity, Progress: rep, Logger: s.Logger})
	if err != nil {
		return res, fmt.Errorf("- -> %s: %w", r.Dst, err)
	}
	if err := w.Commit(ctx); err != nil {
		return res, fmt.Errorf("%s: %w", r.Dst, err)
	}
	res.Duration = time.Since(start)
	if r.Dst != "-" {
		res.OutputSize = AllocatedBytes(r.Dst)
	}
	return res, nil
}

// CompareResult adds the two images' descriptions to disk.CompareResult.
type CompareResult struct {
	disk.CompareResult
	A disk.Info `json:"a"`
	B disk.Info `json:"b"`
}

// Compare compares two images' content.
func (s *Images) Compare(ctx context.Context, a, b OpenRequest, strict bool, rep progress.Reporter) (CompareResult, error) {
	ia, err := s.open(ctx, a)
	if err != nil {
		return CompareResult{}, err
	}
	defer ia.Close()
	ib, err := s.open(ctx, b)
	if err != nil {
		return CompareResult{}, err
	}
	defer ib.Close()
	r, err := disk.Compare(ctx, ia, ib, &disk.CompareOptions{Strict: strict, Progress: rep})
	return CompareResult{CompareResult: r, A: ia.Info(), B: ib.Info()}, err
}

// ErrCheckUnsupported is returned by Check for formats without a checker.
var ErrCheckUnsupported = errors.New("format does not support checks")

// Check runs the image's structural check.
func (s *Images) Check(ctx context.Context, r OpenRequest) (disk.CheckResult, error) {
	img, err := s.open(ctx, r)
	if err != nil {
		return disk.CheckResult{}, err
	}
	defer img.Close()
	c, ok := img.(disk.Checker)
	if !ok {
		return disk.CheckResult{Filename: r.Path, Format: img.Info().Format}, fmt.Errorf("check %s: %s: %w: %w", r.Path, img.Info().Format, ErrCheckUnsupported, errs.ErrUnimplemented)
	}
	res, err := c.Check(ctx)
	if res.Filename == "" {
		res.Filename = r.Path
	}
	return res, err
}

// MapEntry is one run of an image's allocation map, as qemu-img map
// --output json writes it.
type MapEntry struct {
	Start  int64  `json:"start"`
	Length int64  `json:"length"`
	Kind   string `json:"kind"`
	Data   bool   `json:"data"`
	Zero   bool   `json:"zero"`
}

// Map reports the image's extents, merged where adjacent runs share a kind.
func (s *Images) Map(ctx context.Context, r OpenRequest) (iter.Seq2[MapEntry, error], func() error, error) {
	img, err := s.open(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	seq := func(yield func(MapEntry, error) bool) {
		m := disk.NewMerger(func(e disk.Extent, _ error) bool {
			return yield(MapEntry{Start: e.Off, Length: e.Len, Kind: e.Kind.String(), Data: e.Kind == disk.Data, Zero: e.Kind != disk.Data}, nil)
		})
		for e, err := range img.Extents(ctx, 0, img.Size()) {
			if err != nil {
				yield(MapEntry{}, err)
				return
			}
			if !m.Push(e) {
				return
			}
		}
		m.Flush()
	}
	return seq, img.Close, nil
}
