package auth_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

func TestRoles(t *testing.T) {
	tests := []struct {
		have, need auth.Role
		ok         bool
	}{
		{auth.Admin, auth.Admin, true}, {auth.Admin, auth.Viewer, true}, {auth.Operator, auth.Admin, false},
		{auth.Operator, auth.Operator, true}, {auth.Viewer, auth.Operator, false}, {auth.Viewer, auth.Viewer, true},
		{"", auth.Viewer, false}, {"root", auth.Viewer, false},
	}
	for _, tt := range tests {
		if got := tt.have.Allows(tt.need); got != tt.ok {
			t.Errorf("%q.Allows(%q) = %v", tt.have, tt.need, got)
		}
	}
	if _, err := auth.ParseRole("superuser"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("ParseRole: %v", err)
	}
	if r, err := auth.ParseRole(" Operator "); err != nil || r != auth.Operator {
		t.Errorf("ParseRole = %q, %v", r, err)
	}
}

func TestTokens(t *testing.T) {
	ctx := t.Context()
	st, err := store.Open(ctx, store.Location{Dialect: store.SQLite, Path: filepath.Join(t.TempDir(), "f.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var c auth.Created
	if err := st.Update(ctx, func(tx store.Tx) error {
		c, err = auth.Create(ctx, tx, "ci", auth.Operator, time.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Secret, "ferry_") || len(c.Secret) != 54 || c.Hash != auth.Hash(c.Secret) || strings.Contains(c.Hash, c.Secret) {
		t.Fatalf("created = %+v", c)
	}
	// the secret with its last digit changed (to another digit, always)
	last := c.Secret[len(c.Secret)-1]
	flipped := byte('0')
	if last == '0' {
		flipped = '1'
	}
	tests := []struct {
		header string
		ok     bool
	}{
		{"Bearer " + c.Secret, true},
		{"bearer " + c.Secret, true},
		{c.Secret, false},
		{"Basic " + c.Secret, false},
		{"Bearer " + c.Secret[:len(c.Secret)-1] + string(flipped), false},
		{"Bearer ferry_short", false},
		{"", false},
	}
	for _, tt := range tests {
		p, err := auth.Authenticate(ctx, st, tt.header)
		if tt.ok && (err != nil || p.Role != auth.Operator || p.Name != "ci" || p.TokenID != c.ID) {
			t.Errorf("%q: %+v %v", tt.header, p, err)
		}
		if !tt.ok && err != auth.ErrUnauthenticated {
			t.Errorf("%q: %v, want unauthenticated", tt.header, err)
		}
	}
	st.Update(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, c.ID, time.Now()) })
	if _, err := auth.Authenticate(ctx, st, "Bearer "+c.Secret); err != auth.ErrUnauthenticated {
		t.Errorf("revoked token: %v", err)
	}
	err = st.Update(ctx, func(tx store.Tx) error { _, err := auth.Create(ctx, tx, "", auth.Admin, time.Now()); return err })
	if !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("empty name: %v", err)
	}
}
