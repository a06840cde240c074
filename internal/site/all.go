package site

import (
	"context"
	"log/slog"

	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws"
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
		Name: provider.KindAWS, Doc: "Amazon EC2 region (EC2, EBS direct APIs, S3)",
		Settings:         []string{"region", "profile", "bucket", "prefix", "root_device", "volume_type"},
		RequiredSettings: []string{"region"},
		Secrets:          []string{"access_key_id", "secret_access_key", "session_token"},
		Open: func(ctx context.Context, c Config, l *slog.Logger) (provider.Provider, error) {
			return aws.Open(ctx, aws.Config{
				Name: c.Name, Region: c.Settings["region"], Profile: c.Settings["profile"], Endpoint: c.Endpoint,
				AccessKey: c.Secret("access_key_id"), SecretKey: aws.Secret(c.Secret("secret_access_key")),
				SessionToken: aws.Secret(c.Secret("session_token")),
				Bucket:       c.Settings["bucket"], Prefix: c.Settings["prefix"],
				RootDevice: c.Settings["root_device"], VolumeType: c.Settings["volume_type"],
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
