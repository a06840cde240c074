package site

import (
	"context"
	"log/slog"

	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/fake"
	"github.com/ferry-project/ferry/internal/provider/xen"
)

// Kinds returns the registry of every site kind this build supports. It is
// the one place kinds are registered.
func Kinds() *Registry {
	r := NewRegistry()
	r.Add(Kind{
		Name: provider.KindXen, Doc: "XenServer / XCP-ng pool (XAPI)", NeedEndpoint: true,
		Settings:         []string{"user", "ca_pem", "fingerprint", "insecure", "cbt"},
		RequiredSettings: []string{"user"},
		Secrets:          []string{"password"}, RequiredSecrets: []string{"password"},
		Open: func(ctx context.Context, c Config, l *slog.Logger) (provider.Provider, error) {
			return xen.Open(ctx, xen.Config{
				Name: c.Name, URL: c.Endpoint, User: c.Settings["user"], Password: xen.Secret(c.Secret("password")),
				CAPEM: []byte(c.Settings["ca_pem"]), Fingerprint: c.Settings["fingerprint"],
				Insecure: c.Settings["insecure"] == "true", EnableCBT: c.Settings["cbt"] == "true",
			}, l)
		},
	})
	r.Add(Kind{
		Name: fake.Kind,
		Doc:  "in-memory test double: generated VMs (fake://NAME?vms=N&seed=S[&region=R])",
		// A password is accepted (and ignored) so that credential
		// handling can be exercised end to end.
		Secrets: []string{"password"},
		Open: func(ctx context.Context, c Config, _ *slog.Logger) (provider.Provider, error) {
			return fake.Open(ctx, c.Name, c.Endpoint)
		},
	})
	return r
}
