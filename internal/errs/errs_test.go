package errs

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestCodeOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Code
	}{
		{"nil", nil, Unknown},
		{"plain", errors.New("x"), Unknown},
		{"direct", ErrNotFound, NotFound},
		{"wrapped", fmt.Errorf("open %q: %w", "a.qcow2", ErrCorrupt), Corrupt},
		{"double wrapped", fmt.Errorf("x: %w", fmt.Errorf("y: %w", ErrUnimplemented)), Unimplemented},
		{"joined", errors.Join(errors.New("a"), ErrPermissionDenied), PermissionDenied},
		{"canceled", fmt.Errorf("convert: %w", context.Canceled), Canceled},
		{"deadline", context.DeadlineExceeded, Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CodeOf(tt.err); got != tt.want {
				t.Fatalf("CodeOf(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if tt.want != Unknown && !Is(tt.err, tt.want) {
				t.Fatalf("Is(%v, %v) = false", tt.err, tt.want)
			}
		})
	}
}

func TestMessages(t *testing.T) {
	err := fmt.Errorf("qcow2 a.img: bad magic: %w", ErrCorrupt)
	if got, want := err.Error(), "qcow2 a.img: bad magic: corrupt image"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
