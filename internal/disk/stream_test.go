package disk_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/errs"
)

// runsStream yields fixed runs.
type runsStream struct {
	size int64
	runs []disk.Extent
	fill func(off int64, p []byte)
	i    int
}

func (s *runsStream) Size() int64     { return s.size }
func (s *runsStream) Info() disk.Info { return disk.Info{Format: "test"} }
func (s *runsStream) Close() error    { return nil }
func (s *runsStream) Next(context.Context) (int64, []byte, error) {
	if s.i >= len(s.runs) {
		return 0, nil, io.EOF
	}
	r := s.runs[s.i]
	s.i++
	p := make([]byte, r.Len)
	s.fill(r.Off, p)
	return r.Off, p, nil
}

func TestConvertStream(t *testing.T) {
	pt := disktest.Patterns(true)[2] // unaligned
	tests := []struct {
		name string
		runs []disk.Extent
		code errs.Code
	}{
		{name: "pattern runs", runs: pt.Data},
		{name: "whole disk", runs: []disk.Extent{{Off: 0, Len: pt.Size}}},
		{name: "out of order", runs: []disk.Extent{pt.Data[1], pt.Data[0]}, code: errs.Corrupt},
		{name: "beyond size", runs: []disk.Extent{{Off: pt.Size - 10, Len: 20}}, code: errs.Corrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, seq := range []bool{false, true} {
				m := newMem(pt.Size, seq)
				st, err := disk.ConvertStream(t.Context(), m, &runsStream{size: pt.Size, runs: tt.runs, fill: pt.Fill}, nil)
				if tt.code != errs.Unknown {
					if !errs.Is(err, tt.code) {
						t.Fatalf("err %v, want %v", err, tt.code)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(m.b, pt.Bytes()) || m.badOrder {
					t.Fatal("content differs or order broken")
				}
				if st.Written+st.ZeroDetected != st.Read {
					t.Fatalf("stats %+v", st)
				}
			}
		})
	}
}

func TestRawStream(t *testing.T) {
	pt := disktest.Patterns(true)[3] // mixed-free short list: "full"
	data := pt.Bytes()
	reg := disk.NewRegistry(raw.Format())
	s, err := reg.OpenStream(t.Context(), io.MultiReader(bytes.NewReader(data)), "", int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	m := newMem(pt.Size, true)
	if _, err := disk.ConvertStream(t.Context(), m, s, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.b, data) {
		t.Fatal("content differs")
	}
	// unknown size refused; short stream is corrupt
	if _, err := reg.OpenStream(t.Context(), bytes.NewReader(data), "raw", 0); !errs.Is(err, errs.InvalidArgument) {
		t.Fatalf("unknown size: %v", err)
	}
	s, _ = reg.OpenStream(t.Context(), bytes.NewReader(data[:1000]), "raw", int64(len(data)))
	if _, err := disk.ConvertStream(t.Context(), newMem(pt.Size, true), s, nil); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("short stream: %v", err)
	}
}
