package xen

import (
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/ferry-project/ferry/internal/lab/xenlab"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/providertest"
)

const (
	labUser = "root"
	labPass = "lab-secret-pw"
)

// lab is ferry's XenServer lab behind an httptest server.
type lab struct {
	srv *xenlab.Server
	hs  *httptest.Server
	dir string
}

// newLab starts a lab in a temporary directory.
func newLab(t testing.TB, logger *slog.Logger) *lab {
	t.Helper()
	dir := t.TempDir()
	srv, err := xenlab.New(t.Context(), xenlab.Options{Dir: dir, Users: map[string]string{labUser: labPass}, Logger: logger})
	if err != nil {
		t.Fatalf("start the lab: %v", err)
	}
	l := &lab{srv: srv, dir: dir}
	l.hs = httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		l.hs.Close()
		srv.Close()
	})
	return l
}

func (l *lab) open(t testing.TB, cfg Config, logger *slog.Logger) *Provider {
	t.Helper()
	cfg.URL = l.hs.URL
	if cfg.User == "" {
		cfg.User, cfg.Password = labUser, labPass
	}
	p, err := Open(t.Context(), cfg, logger)
	if err != nil {
		t.Fatalf("open the lab: %v", err)
	}
	return p
}

// TestConformance runs the provider suite against the lab.
func TestConformance(t *testing.T) {
	for _, cbt := range []bool{false, true} {
		name := "export-delta"
		if cbt {
			name = "cbt"
		}
		t.Run(name, func(t *testing.T) {
			l := newLab(t, nil)
			providertest.Run(t, func(t *testing.T) provider.Provider {
				return l.open(t, Config{EnableCBT: cbt}, nil)
			})
		})
	}
}
