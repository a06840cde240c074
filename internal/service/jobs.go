package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/migrate"
	"github.com/ferry-project/ferry/internal/provider"
)

// ImageConvertKind is the job kind that converts a disk image.
const ImageConvertKind = "image.convert"

// ImageConvertArgs are an image.convert job's arguments (and its state:
// Result is filled in by the job).
type ImageConvertArgs struct {
	Src       string            `json:"src"`
	SrcFormat string            `json:"src_format,omitempty"`
	Dst       string            `json:"dst"`
	DstFormat string            `json:"dst_format"`
	Options   map[string]string `json:"options,omitempty"`
	Result    *ConvertResult    `json:"result,omitempty"`
}

// RegisterJobKinds registers every job kind the control plane runs: the
// one place the job registry is filled. Image paths are confined to
// imagesDir (relative paths inside it; "" allows any absolute path).
// Migrations reach sites through sites (nil: a node without the site key,
// whose migrations fail saying so).
func RegisterJobKinds(reg *job.Registry, images *Images, imagesDir string, sites migrate.Sites) {
	job.Register(reg, imageConvertJob(images, imagesDir))
	if sites == nil {
		sites = noSites{}
	}
	job.Register(reg, (&migrate.Migrator{Sites: sites}).Kind())
}

// noSites is the Sites of a node that cannot unseal site credentials.
type noSites struct{}

func (noSites) Provider(_ context.Context, name core.SiteName) (provider.Provider, error) {
	return nil, fmt.Errorf("site %s: this node has no site key (give ferry worker --key-file or $FERRY_SECRET_KEY): %w", name, errs.ErrFailedPrecondition)
}

// confine resolves p inside root.
func confine(root, p, what string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%s: no path: %w", what, errs.ErrInvalidArgument)
	}
	if root == "" {
		if !filepath.IsAbs(p) {
			return "", fmt.Errorf("%s %q: want an absolute path: %w", what, p, errs.ErrInvalidArgument)
		}
		return filepath.Clean(p), nil
	}
	if filepath.IsAbs(p) {
		if rel, err := filepath.Rel(root, p); err == nil && filepath.IsLocal(rel) {
			return filepath.Join(root, rel), nil
		}
		return "", fmt.Errorf("%s %q: outside the images directory %s: %w", what, p, root, errs.ErrPermissionDenied)
	}
	if !filepath.IsLocal(p) {
		return "", fmt.Errorf("%s %q: outside the images directory: %w", what, p, errs.ErrPermissionDenied)
	}
	return filepath.Join(root, p), nil
}

func imageConvertJob(images *Images, root string) job.Kind[ImageConvertArgs] {
	return job.Kind[ImageConvertArgs]{
		Name: ImageConvertKind,
		Validate: func(a *ImageConvertArgs) error {
			var err error
			if a.Src, err = confine(root, a.Src, "convert source"); err != nil {
				return err
			}
			if a.Dst, err = confine(root, a.Dst, "convert destination"); err != nil {
				return err
			}
			if a.DstFormat == "" {
				return fmt.Errorf("convert: no destination format: %w", errs.ErrInvalidArgument)
			}
			if _, err := images.Formats.Lookup(a.DstFormat); err != nil && !images.IsArchiveFormat(a.DstFormat) {
				return fmt.Errorf("convert: %w: %w", err, errs.ErrInvalidArgument)
			}
			a.Result = nil
			return nil
		},
		Steps: []job.Step[ImageConvertArgs]{{
			Name: "convert",
			// Convert writes under a temporary name and renames at the
			// end, so running it again after a crash starts clean.
			Run: func(ctx context.Context, e *job.Env, a *ImageConvertArgs) error {
				res, err := images.Convert(ctx, ConvertRequest{
					Src: OpenRequest{Path: a.Src, Format: a.SrcFormat}, Dst: a.Dst, DstFormat: a.DstFormat,
					Options: a.Options, Progress: e.Progress,
				})
				if err != nil {
					return err
				}
				a.Result = &res
				return nil
			},
			// Compensation removes the output the job made.
			Undo: func(ctx context.Context, e *job.Env, a *ImageConvertArgs) error {
				if a.Result == nil {
					return nil
				}
				if err := os.Remove(a.Dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				return nil
			},
		}},
		Result: func(a *ImageConvertArgs) any { return a.Result },
	}
}
