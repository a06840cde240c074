package xenlab

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// RunOptions configure Run.
type RunOptions struct {
	Options
	// Listen is the TCP address to serve on, e.g. 127.0.0.1:8480; port 0
	// picks a free one.
	Listen string
	// Stdout receives the address served and, when no user is given and
	// none is stored, the generated user's password (printed once).
	Stdout io.Writer
	// Ready, if set, is called with the address once the lab serves.
	Ready func(addr string)
}

// Run serves a lab until ctx is done, then stops it cleanly.
func Run(ctx context.Context, o RunOptions) error {
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	lab, err := New(ctx, o.Options)
	if err != nil {
		return err
	}
	if len(o.Users) == 0 && !lab.hasUsers() {
		pw := generatePassword()
		if err := lab.SetUser("root", pw); err != nil {
			lab.Close()
			return err
		}
		fmt.Fprintf(o.Stdout, "generated user root with password %s (shown once; pass --user NAME:PASSWORD to choose)\n", pw)
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		lab.Close()
		return fmt.Errorf("xen lab: listen on %s: %w", o.Listen, err)
	}
	addr := ln.Addr().String()
	fmt.Fprintf(o.Stdout, "xen lab serving XAPI on http://%s (JSON-RPC at /jsonrpc), state in %s\n", addr, lab.dir)
	if o.Ready != nil {
		o.Ready(addr)
	}
	// lab.cancel ends long polls (event.from) and transfers
	err = labkit.Serve(ctx, ln, lab.Handler(), lab.cancel)
	return errors.Join(err, lab.Close())
}

// SetUser adds or changes a user's password.
func (s *Server) SetUser(name, password string) error {
	if name == "" || strings.ContainsAny(name, ":") {
		return fmt.Errorf("xen lab: user name %q: %w", name, errs.ErrInvalidArgument)
	}
	u, err := hashPassword(password)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.db.users[name] = u
	s.db.dirty = true
	return s.saveLocked()
}

func (s *Server) hasUsers() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.db.users) > 0
}

func generatePassword() string {
	b := make([]byte, 15)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.EncodeToString(b))
}
