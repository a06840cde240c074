package disk

import (
	"context"
	"errors"
	"testing"
)

func TestOrdered(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		failAt  int // -1: none
		sinkErr int // -1: none
	}{
		{"all", 500, -1, -1},
		{"work error", 500, 137, -1},
		{"sink error", 500, -1, 42},
		{"empty", 0, -1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			boom := errors.New("boom")
			o := NewOrdered(t.Context(), 4, func(v int) error {
				if v == tt.sinkErr {
					return boom
				}
				got = append(got, v)
				return nil
			})
			var subErr error
			for i := range tt.n {
				if subErr = o.Submit(func(context.Context) (int, error) {
					if i == tt.failAt {
						return 0, boom
					}
					return i, nil
				}); subErr != nil {
					break
				}
			}
			err := o.Wait()
			if tt.failAt < 0 && tt.sinkErr < 0 {
				if err != nil || subErr != nil {
					t.Fatalf("err %v %v", err, subErr)
				}
				if len(got) != tt.n {
					t.Fatalf("got %d results, want %d", len(got), tt.n)
				}
			} else if !errors.Is(err, boom) {
				t.Fatalf("Wait = %v, want boom", err)
			}
			for i, v := range got {
				if v != i {
					t.Fatalf("result %d is %d: out of order", i, v)
				}
			}
		})
	}
}

func TestOrderedCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	o := NewOrdered(ctx, 2, func(int) error { return nil })
	cancel()
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = o.Submit(func(ctx context.Context) (int, error) { return 0, ctx.Err() })
	}
	if werr := o.Wait(); !errors.Is(werr, context.Canceled) && !errors.Is(err, context.Canceled) {
		t.Fatalf("want canceled, got %v / %v", err, werr)
	}
}
