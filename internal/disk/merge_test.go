package disk

import (
	"slices"
	"testing"
)

func TestMerger(t *testing.T) {
	in := []Extent{
		{Off: 0, Len: 10, Kind: Data}, {Off: 10, Len: 5, Kind: Data}, {Off: 15, Len: 0, Kind: Zero},
		{Off: 15, Len: 5, Kind: Zero}, {Off: 20, Len: 5, Kind: Unallocated}, {Off: 25, Len: 5, Kind: Unallocated},
		{Off: 30, Len: 1, Kind: Data},
	}
	want := []Extent{{Off: 0, Len: 15, Kind: Data}, {Off: 15, Len: 5, Kind: Zero}, {Off: 20, Len: 10, Kind: Unallocated}, {Off: 30, Len: 1, Kind: Data}}
	for stopAfter := 0; stopAfter <= len(want); stopAfter++ {
		var got []Extent
		m := NewMerger(func(e Extent, _ error) bool {
			got = append(got, e)
			return len(got) < stopAfter || stopAfter == len(want)
		})
		stopped := false
		for _, e := range in {
			if !m.Push(e) {
				stopped = true
				break
			}
		}
		if !stopped {
			m.Flush()
		}
		n := stopAfter
		if n == 0 {
			n = 1 // the first yield happens, and stops the rest
		}
		if !slices.Equal(got, want[:n]) {
			t.Fatalf("stop after %d: got %v, want %v", stopAfter, got, want[:n])
		}
	}
}
