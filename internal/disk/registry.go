package disk

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// DefaultMaxChain is how many images a backing chain may hold, the top
// image included, unless RegistryOptions say otherwise.
const DefaultMaxChain = 64

// Registry is a list of formats with probing, opening with backing chains,
// and creating output files. Build one with NewRegistry; the usual one is
// formats.Registry().
type Registry struct {
	formats []*Format
}

// NewRegistry returns a registry over fs, probed in the order given. The
// raw format, which claims any file, must come last.
func NewRegistry(fs ...*Format) *Registry {
	seen := map[string]bool{}
	for _, f := range fs {
		for _, n := range append([]string{f.Name}, f.Aliases...) {
			if seen[n] {
				panic("disk: format name registered twice: " + n)
			}
			seen[n] = true
		}
	}
	return &Registry{formats: fs}
}

// Formats returns the registered formats in probe order.
func (r *Registry) Formats() []*Format { return slices.Clone(r.formats) }

// Lookup finds a format by name or alias.
func (r *Registry) Lookup(name string) (*Format, error) {
	for _, f := range r.formats {
		if f.Name == name || slices.Contains(f.Aliases, name) {
			return f, nil
		}
	}
	var names []string
	for _, f := range r.formats {
		names = append(names, f.Name)
	}
	return nil, fmt.Errorf("unknown format %q (known: %s): %w", name, strings.Join(names, ", "), errs.ErrInvalidArgument)
}

// Probe returns the first format whose Probe claims f.
func (r *Registry) Probe(f File) (*Format, error) {
	for _, ft := range r.formats {
		if ft.Probe != nil && ft.Probe(f) {
			return ft, nil
		}
	}
	return nil, fmt.Errorf("%s: no known format: %w", f.Name(), errs.ErrInvalidArgument)
}

// RegistryOpenOptions are options for Registry.Open.
type RegistryOpenOptions struct {
	// Format forces a format instead of probing.
	Format string
	// NoBacking refuses images that name a backing file (for untrusted
	// input).
	NoBacking bool
	// MaxChain bounds the backing chain; 0 means DefaultMaxChain.
	MaxChain int
}

// Open opens the image at path, probing its format unless o.Format is set,
// and opens its backing chain: relative backing names resolve against the
// directory of the image that names them, loops and chains longer than
// MaxChain are refused.
func (r *Registry) Open(ctx context.Context, path string, o *RegistryOpenOptions) (Image, error) {
	if o == nil {
		o = &RegistryOpenOptions{}
	}
	max := o.MaxChain
	if max <= 0 {
		max = DefaultMaxChain
	}
	return r.open(ctx, path, o.Format, o.NoBacking, max, nil)
}

func (r *Registry) open(ctx context.Context, path, format string, noBacking bool, max int, chain []string) (Image, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if slices.Contains(chain, abs) {
		return nil, fmt.Errorf("open %s: backing chain loops back to %s: %w", chain[0], path, errs.ErrCorrupt)
	}
	chain = append(chain, abs)
	if len(chain) > max {
		return nil, fmt.Errorf("open %s: backing chain longer than %d images: %w", chain[0], max, errs.ErrCorrupt)
	}
	f, err := OpenFile(path)
	if err != nil {
		if len(chain) > 1 {
			return nil, fmt.Errorf("backing file of %s: %w", chain[len(chain)-2], err)
		}
		return nil, err
	}
	var ft *Format
	if format != "" {
		ft, err = r.Lookup(format)
	} else {
		ft, err = r.Probe(f)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	oo := &OpenOptions{}
	if !noBacking {
		dir := filepath.Dir(path)
		oo.OpenBacking = func(ctx context.Context, bpath, bformat string) (Image, error) {
			if !filepath.IsAbs(bpath) {
				bpath = filepath.Join(dir, bpath)
			}
			return r.open(ctx, bpath, bformat, noBacking, max, chain)
		}
	}
	img, err := ft.Open(ctx, f, oo)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

// Create creates a new image file at path in format with the given virtual
// size. The file is written under a temporary name; the returned Writer's
// Commit renames it into place and Close without Commit removes it. path "-"
// writes to standard output, for formats that can stream.
func (r *Registry) Create(ctx context.Context, path, format string, size int64, o *CreateOptions) (Writer, error) {
	ft, err := r.Lookup(format)
	if err != nil {
		return nil, err
	}
	if ft.Create == nil {
		return nil, fmt.Errorf("create %s: ferry cannot write %s images: %w", path, ft.Name, errs.ErrUnimplemented)
	}
	if size < 0 {
		return nil, fmt.Errorf("create %s: negative size %d: %w", path, size, errs.ErrInvalidArgument)
	}
	if err := ft.CheckOptions(o); err != nil {
		return nil, err
	}
	if path == "-" {
		return r.CreateTo(ctx, PlainTarget(os.Stdout), format, size, o)
	}
	out, err := CreateOutputFile(path)
	if err != nil {
		return nil, err
	}
	out.Sync = o != nil && o.Sync
	w, err := ft.Create(ctx, out, size, o)
	if err != nil {
		out.Abort()
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &fileWriter{Writer: w, out: out}, nil
}

// CreateTo starts writing a new image to t, a stream or a file the caller
// manages: Commit finishes the image, Close without Commit abandons it, and
// neither closes or removes t.
func (r *Registry) CreateTo(ctx context.Context, t Target, format string, size int64, o *CreateOptions) (Writer, error) {
	ft, err := r.Lookup(format)
	if err != nil {
		return nil, err
	}
	if ft.Create == nil {
		return nil, fmt.Errorf("ferry cannot write %s images: %w", ft.Name, errs.ErrUnimplemented)
	}
	if size < 0 {
		return nil, fmt.Errorf("negative size %d: %w", size, errs.ErrInvalidArgument)
	}
	if err := ft.CheckOptions(o); err != nil {
		return nil, err
	}
	if f, ok := t.(*os.File); ok {
		// a pipe or terminal posing as a file cannot seek
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			t = PlainTarget(f)
		}
	}
	return ft.Create(ctx, t, size, o)
}

// PlainTarget hides everything of w but Write, so that writers treat it as
// a stream: standard output (which may be a file opened for appending, where
// WriteAt fails), an HTTP body, a pipe.
func PlainTarget(w io.Writer) Target { return plainWriter{w} }

type plainWriter struct{ w io.Writer }

func (p plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
