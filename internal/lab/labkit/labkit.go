// Package labkit holds what ferry's lab servers (xenlab, awslab) share.
package labkit

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Serve serves h on ln until ctx is done or serving fails, then shuts the
// server down gracefully (10 s at most). stopping, if set, runs first on
// the way out, to end long polls and transfers that would hold shutdown up.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, stopping func()) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	if stopping != nil {
		stopping()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	serr := srv.Shutdown(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, serr)
}
