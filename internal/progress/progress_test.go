package progress

import (
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCounterConcurrent(t *testing.T) {
	var c Counter
	c.SetTotal(1000 * 64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 1000 {
				c.Add(1)
			}
		})
	}
	wg.Wait()
	if s := c.Snapshot(); s.Done != 64000 || s.Total != 64000 {
		t.Fatalf("snapshot %+v", s)
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		s    Snapshot
		want []string
	}{
		{Snapshot{Done: 0, Total: 0}, []string{"0.0%", "0 B/0 B"}},
		{Snapshot{Done: 512 << 20, Total: 1 << 30, Phase: "convert"}, []string{"convert [", "50.0%", "512.0 MiB/1.0 GiB", "256.0 MiB/s"}},
		{Snapshot{Done: 2 << 30, Total: 1 << 30}, []string{"100.0%"}},
	}
	for _, tt := range tests {
		got := Render(tt.s, 2*time.Second, 10)
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("Render(%+v) = %q, missing %q", tt.s, got, w)
			}
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 30: "3.0 GiB", 1 << 40: "1.0 TiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTeeAndNop(t *testing.T) {
	var a, b Counter
	r := Tee(&a, nil, &b)
	r.SetTotal(10)
	r.Add(3)
	r.Phase("x")
	for _, c := range []*Counter{&a, &b} {
		if s := c.Snapshot(); s != (Snapshot{Phase: "x", Done: 3, Total: 10}) {
			t.Fatalf("got %+v", s)
		}
	}
	Or(nil).Add(1) // must not panic
}

func TestKeepTotal(t *testing.T) {
	var c Counter
	c.SetTotal(100)
	k := KeepTotal(&c)
	k.SetTotal(5)
	k.Add(7)
	k.Phase("copy disk 2")
	if s := c.Snapshot(); s.Total != 100 || s.Done != 7 || s.Phase != "copy disk 2" {
		t.Fatalf("through KeepTotal: %+v, want total 100, done 7, the phase", s)
	}
	KeepTotal(nil).Add(1) // a nil reporter is Nop
}
