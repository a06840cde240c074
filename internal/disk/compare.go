package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/ferry-project/ferry/internal/progress"
)

// CompareOptions tune Compare; nil means defaults.
type CompareOptions struct {
	// Workers is how many chunks are read at once. Default 4.
	Workers int
	// ChunkSize is the unit of work. Default 4 MiB.
	ChunkSize int64
	// Strict treats a size difference as a difference, as qemu-img
	// compare -s does. Otherwise the bytes past the smaller image must
	// read as zeros.
	Strict   bool
	Progress progress.Reporter
}

// CompareResult is the outcome of Compare.
type CompareResult struct {
	Identical bool  `json:"identical"`
	Offset    int64 `json:"offset"` // first differing byte; -1 when identical
	SizeA     int64 `json:"size_a"`
	SizeB     int64 `json:"size_b"`
}

var errFound = errors.New("difference found")

// Compare reports whether a and b read the same, and where they first
// differ. Ranges that both images report as reading zeros are not read.
func Compare(ctx context.Context, a, b Image, opts *CompareOptions) (CompareResult, error) {
	var o CompareOptions
	if opts != nil {
		o = *opts
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 4 << 20
	}
	rep := progress.Or(o.Progress)
	res := CompareResult{Offset: -1, SizeA: a.Size(), SizeB: b.Size()}
	if o.Strict && res.SizeA != res.SizeB {
		res.Offset = min(res.SizeA, res.SizeB)
		return res, nil
	}
	total := max(res.SizeA, res.SizeB)
	rep.SetTotal(total)
	found := int64(-1)
	ord := NewOrdered(ctx, o.Workers, func(d int64) error {
		if d >= 0 {
			found = d
			return errFound
		}
		return nil
	})
	var subErr error
	for off := int64(0); off < total && subErr == nil; off += o.ChunkSize {
		n := min(o.ChunkSize, total-off)
		subErr = ord.Submit(func(ctx context.Context) (int64, error) {
			d, err := compareChunk(ctx, a, b, off, n)
			rep.Add(n)
			return d, err
		})
	}
	err := ord.Wait()
	if errors.Is(err, errFound) || errors.Is(subErr, errFound) {
		res.Offset = found
		return res, nil
	}
	if err == nil {
		err = subErr
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return res, fmt.Errorf("compare: %w", err)
	}
	res.Identical = true
	return res, nil
}

// hasData reports whether img has a data extent in [off, off+n).
func hasData(ctx context.Context, img Image, off, n int64) (bool, error) {
	if off >= img.Size() {
		return false, nil
	}
	for e, err := range img.Extents(ctx, off, n) {
		if err != nil {
			return false, err
		}
		if e.Kind == Data {
			return true, nil
		}
	}
	return false, nil
}

// readZeroPadded reads [off, off+len(p)) of img, zeros past its end.
func readZeroPadded(img Image, p []byte, off int64) error {
	clear(p)
	if off >= img.Size() {
		return nil
	}
	q := p[:min(int64(len(p)), img.Size()-off)]
	return readFull(img, q, off)
}

func compareChunk(ctx context.Context, a, b Image, off, n int64) (int64, error) {
	da, err := hasData(ctx, a, off, n)
	if err != nil {
		return -1, err
	}
	db, err := hasData(ctx, b, off, n)
	if err != nil {
		return -1, err
	}
	if !da && !db {
		return -1, nil
	}
	pa, pb := make([]byte, n), make([]byte, n)
	if da {
		if err := readZeroPadded(a, pa, off); err != nil {
			return -1, err
		}
	}
	if db {
		if err := readZeroPadded(b, pb, off); err != nil {
			return -1, err
		}
	}
	if bytes.Equal(pa, pb) {
		return -1, nil
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return off + int64(i), nil
		}
	}
	return -1, nil
}
