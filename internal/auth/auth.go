// Package auth holds API tokens and roles.
//
// A token is "ferry_" followed by 48 hex digits (24 random bytes). Only its
// SHA-256 hash is stored; the token itself is shown once, when it is
// created. Roles are ordered: viewer (read only) < operator (everything
// but tokens and site credentials) < admin (everything).
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

// Role is what a token may do.
type Role string

const (
	Viewer   Role = "viewer"
	Operator Role = "operator"
	Admin    Role = "admin"
)

// Roles lists the roles from least to most powerful.
var Roles = []Role{Viewer, Operator, Admin}

func (r Role) rank() int {
	switch r {
	case Viewer:
		return 1
	case Operator:
		return 2
	case Admin:
		return 3
	}
	return 0
}

// Allows reports whether r may do what needs at least need.
func (r Role) Allows(need Role) bool { return r.rank() > 0 && r.rank() >= need.rank() }

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if r.rank() == 0 {
		return "", fmt.Errorf("role %q: want viewer, operator or admin: %w", s, errs.ErrInvalidArgument)
	}
	return r, nil
}

// Prefix starts every token.
const Prefix = "ferry_"

// Hash is the stored form of a token: SHA-256, hex.
func Hash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Principal is who makes a request.
type Principal struct {
	TokenID string `json:"token_id"`
	Name    string `json:"name"`
	Role    Role   `json:"role"`
}

// String names the principal in the audit log.
func (p Principal) String() string {
	if p.TokenID == "" {
		return p.Name
	}
	return p.Name + " (" + p.TokenID + ")"
}

// ErrUnauthenticated means no valid token came with a request (HTTP 401,
// as opposed to PermissionDenied's 403 for a valid token lacking a role).
var ErrUnauthenticated = errors.New("missing, malformed, unknown or revoked token")

// Created is a new token: the secret is only ever in this value.
type Created struct {
	store.Token
	Secret string `json:"token"`
}

// Create makes a token for name with role r and stores its hash.
func Create(ctx context.Context, tx store.Tx, name string, r Role, now time.Time) (Created, error) {
	if strings.TrimSpace(name) == "" || len(name) > 100 {
		return Created{}, fmt.Errorf("token name %q: want 1 to 100 characters: %w", name, errs.ErrInvalidArgument)
	}
	if _, err := ParseRole(string(r)); err != nil {
		return Created{}, err
	}
	secret := make([]byte, 24)
	id := make([]byte, 4)
	rand.Read(secret)
	rand.Read(id)
	tok := Prefix + hex.EncodeToString(secret)
	t := store.Token{ID: "t-" + hex.EncodeToString(id), Name: name, Role: string(r), Hash: Hash(tok), Created: now.UTC()}
	if err := tx.CreateToken(ctx, t); err != nil {
		return Created{}, err
	}
	return Created{Token: t, Secret: tok}, nil
}

// Authenticate checks an Authorization header value ("Bearer ferry_...").
func Authenticate(ctx context.Context, st store.Store, header string) (Principal, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return Principal{}, ErrUnauthenticated
	}
	tok = strings.TrimSpace(tok)
	if !strings.HasPrefix(tok, Prefix) || len(tok) != len(Prefix)+48 {
		return Principal{}, ErrUnauthenticated
	}
	var t store.Token
	err := st.View(ctx, func(tx store.Tx) error {
		var err error
		t, err = tx.TokenByHash(ctx, Hash(tok))
		return err
	})
	if errs.Is(err, errs.NotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, err
	}
	if !t.Revoked.IsZero() {
		return Principal{}, ErrUnauthenticated
	}
	return Principal{TokenID: t.ID, Name: t.Name, Role: Role(t.Role)}, nil
}
