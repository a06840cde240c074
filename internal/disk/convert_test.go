package disk_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// memWriter records writes in memory; sequential mode checks ordering.
type memWriter struct {
	mu       sync.Mutex
	b        []byte
	written  []bool
	zeroed   int64
	seq      bool
	pos      int64
	badOrder bool
}

func newMem(size int64, seq bool) *memWriter {
	return &memWriter{b: make([]byte, size), written: make([]bool, size), seq: seq}
}

func (m *memWriter) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seq {
		if off < m.pos {
			m.badOrder = true
		}
		m.pos = off + int64(len(p))
	}
	copy(m.b[off:], p)
	for i := range p {
		m.written[off+int64(i)] = true
	}
	return len(p), nil
}
func (m *memWriter) Zero(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.b[off : off+n])
	m.zeroed += n
	return nil
}
func (m *memWriter) Commit(context.Context) error { return nil }
func (m *memWriter) Close() error                 { return nil }
func (m *memWriter) Size() int64                  { return int64(len(m.b)) }
func (m *memWriter) Sequential() bool             { return m.seq }

func TestConvert(t *testing.T) {
	for _, pt := range disktest.Patterns(true) {
		if pt.Size > 64<<20 {
			continue
		}
		for _, seq := range []bool{false, true} {
			for _, gran := range []int64{0, -1, 512} {
				name := pt.Name
				if seq {
					name += "/seq"
				}
				t.Run(name, func(t *testing.T) {
					m := newMem(pt.Size, seq)
					var c progress.Counter
					st, err := disk.Convert(t.Context(), m, disktest.PatternImage{P: pt}, &disk.ConvertOptions{ChunkSize: 1 << 20, ZeroGranularity: gran, Progress: &c})
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(m.b, pt.Bytes()) {
						t.Fatal("content differs")
					}
					if m.badOrder {
						t.Fatal("sequential writer got writes out of order")
					}
					if s := c.Snapshot(); s.Done != pt.Size || s.Total != pt.Size {
						t.Fatalf("progress %+v, want %d", s, pt.Size)
					}
					if st.Read != pt.DataBytes() {
						t.Fatalf("read %d bytes, want %d (only data)", st.Read, pt.DataBytes())
					}
					if st.Written+st.ZeroDetected != st.Read {
						t.Fatalf("stats %+v do not add up", st)
					}
					// sparse output: nothing outside the data ranges written,
					// and with zero detection no zero granule written
					for i, w := range m.written {
						if w && m.b[i] == 0 && gran > 0 {
							// a written zero byte is fine inside a granule with data
							g := int64(i) / gran * gran
							if disktest.IsZero(m.b[g:min(g+gran, pt.Size)]) {
								t.Fatalf("zero granule at %d was written", g)
							}
						}
					}
				})
			}
		}
	}
}

func TestConvertBase(t *testing.T) {
	const size = 4 << 20
	base := &disktest.Pattern{Name: "base", Size: size, Seed: 5, Data: []disk.Extent{{Off: 0, Len: size}}}
	// top = base with one range changed, one range zeroed, rest equal
	topBytes := base.Bytes()
	copy(topBytes[1<<20:], bytes.Repeat([]byte{0xAB}, 8192))
	clear(topBytes[2<<20 : 2<<20+65536])
	dir := t.TempDir()
	topPath := filepath.Join(dir, "top")
	w, err := disk.NewRegistry(raw.Format()).Create(t.Context(), topPath, "raw", size, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(topBytes, 0)
	w.Commit(t.Context())
	top, err := disk.NewRegistry(raw.Format()).Open(t.Context(), topPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	m := newMem(size, false)
	st, err := disk.Convert(t.Context(), m, top, &disk.ConvertOptions{Base: disktest.PatternImage{P: base}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Written != 8192 {
		t.Fatalf("wrote %d bytes, want only the 8192 changed", st.Written)
	}
	var wantZeroed int64
	for off := int64(2 << 20); off < 2<<20+65536; off += 4096 {
		b := make([]byte, 4096)
		base.Fill(off, b)
		if !disktest.IsZero(b) {
			wantZeroed += 4096
		}
	}
	if st.Zeroed != wantZeroed || wantZeroed == 0 {
		t.Fatalf("zeroed %d bytes, want %d (the non-zero base granules)", st.Zeroed, wantZeroed)
	}
	for i := range m.b {
		if m.written[i] && m.b[i] != topBytes[i] {
			t.Fatalf("wrong byte written at %d", i)
		}
	}
}

func TestConvertErrors(t *testing.T) {
	pt := &disktest.Pattern{Name: "p", Size: 8 << 20, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 8 << 20}}}
	t.Run("destination too small", func(t *testing.T) {
		_, err := disk.Convert(t.Context(), newMem(1<<20, false), disktest.PatternImage{P: pt}, nil)
		if !errs.Is(err, errs.InvalidArgument) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		for _, seq := range []bool{false, true} {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			_, err := disk.Convert(ctx, newMem(pt.Size, seq), disktest.PatternImage{P: pt}, nil)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("seq=%v: err %v, want canceled", seq, err)
			}
		}
	})
	t.Run("write error", func(t *testing.T) {
		for _, seq := range []bool{false, true} {
			_, err := disk.Convert(t.Context(), failWriter{newMem(pt.Size, seq)}, disktest.PatternImage{P: pt}, nil)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk full")) {
				t.Fatalf("seq=%v: err %v", seq, err)
			}
		}
	})
}

type failWriter struct{ *memWriter }

func (failWriter) WriteAt([]byte, int64) (int, error) { return 0, errors.New("disk full") }

func TestCompare(t *testing.T) {
	pt := &disktest.Pattern{Name: "p", Size: 20 << 20, Seed: 3, Data: []disk.Extent{{Off: 1 << 20, Len: 5 << 20}, {Off: 15 << 20, Len: 1 << 20}}}
	other := *pt
	other.Data = append([]disk.Extent{}, pt.Data...)
	other.Data[1].Off += 4096 // moves data: first difference at 15 MiB
	bigger := *pt
	bigger.Size += 1 << 20
	biggerData := bigger
	biggerData.Data = append(append([]disk.Extent{}, pt.Data...), disk.Extent{Off: 20<<20 + 100, Len: 10})
	tests := []struct {
		name   string
		a, b   *disktest.Pattern
		strict bool
		same   bool
		off    int64
	}{
		{"same", pt, pt, false, true, -1},
		{"moved data", pt, &other, false, false, 15 << 20},
		{"bigger zero tail", pt, &bigger, false, true, -1},
		{"bigger zero tail strict", pt, &bigger, true, false, 20 << 20},
		{"bigger with data", pt, &biggerData, false, false, 20<<20 + 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := disk.Compare(t.Context(), disktest.PatternImage{P: tt.a}, disktest.PatternImage{P: tt.b}, &disk.CompareOptions{Strict: tt.strict, ChunkSize: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if r.Identical != tt.same || r.Offset != tt.off {
				t.Fatalf("got %+v, want identical=%v offset=%d", r, tt.same, tt.off)
			}
		})
	}
}

// unitWriter is a memWriter that allocates in 64 KiB units.
type unitWriter struct{ *memWriter }

func (unitWriter) AllocationUnit() int64 { return 64 << 10 }

func TestConvertAllocationUnit(t *testing.T) {
	// 4 KiB of data in each of two 64 KiB units, one unit all zero
	pt := &disktest.Pattern{Name: "u", Size: 192 << 10, Seed: 11, Data: []disk.Extent{{Off: 0, Len: 192 << 10}}}
	src := make([]byte, pt.Size)
	copy(src[:4096], bytes.Repeat([]byte{0xAA}, 4096))
	copy(src[128<<10:], bytes.Repeat([]byte{0xBB}, 4096))
	img := bytesImage(src)
	m := unitWriter{newMem(pt.Size, false)}
	st, err := disk.Convert(t.Context(), m, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.b, src) {
		t.Fatal("content differs")
	}
	// two whole units written, zeros included; the zero unit skipped
	if st.Written != 128<<10 || st.ZeroDetected != 64<<10 {
		t.Fatalf("stats %+v: want 128 KiB written in whole units, 64 KiB skipped", st)
	}
}

// bytesImage is an all-data Image over b.
func bytesImage(b []byte) disk.Image {
	pt := &disktest.Pattern{Name: "b", Size: int64(len(b)), Data: []disk.Extent{{Off: 0, Len: int64(len(b))}}}
	return fixedImage{PatternImage: disktest.PatternImage{P: pt}, b: b}
}

type fixedImage struct {
	disktest.PatternImage
	b []byte
}

func (f fixedImage) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, f.b[off:])
	return n, nil
}
