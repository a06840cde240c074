// Package site is the control plane's site registry: the kinds of site
// ferry can connect to (an explicit map, filled in all.go), the sites
// registered in the store with their credentials sealed under the secret
// key, connections to them, and the VM inventory, refreshed on a schedule
// and from provider events.
package site

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
)

// Config is everything needed to connect to one site.
type Config struct {
	Name     core.SiteName
	Kind     provider.Kind
	Endpoint string
	// Settings are the kind's non-secret options (user, region, ca_pem,
	// fingerprint, insecure, ...).
	Settings map[string]string
	// Secrets are the kind's credentials (password, access_key_id,
	// secret_access_key, ...).
	Secrets map[string]Secret
}

// Secret returns a credential's value ("" when unset).
func (c Config) Secret(name string) string { return c.Secrets[name].Reveal() }

// Opener connects to a site. It must honour ctx and return errors wrapping
// internal/errs codes (PermissionDenied for refused credentials,
// Unavailable for an unreachable site).
type Opener func(ctx context.Context, c Config, logger *slog.Logger) (provider.Provider, error)

// Kind describes one kind of site.
type Kind struct {
	Name provider.Kind
	// Doc is a one-line description for help texts.
	Doc string
	// Settings and Secrets list the keys the kind accepts;
	// RequiredSettings and RequiredSecrets those it needs.
	Settings, RequiredSettings []string
	Secrets, RequiredSecrets   []string
	// NeedEndpoint says the site must have an endpoint (a URL).
	NeedEndpoint bool
	Open         Opener
}

// Registry maps kind names to kinds.
type Registry struct{ kinds map[provider.Kind]Kind }

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{kinds: map[provider.Kind]Kind{}} }

// Add registers k; it panics on a duplicate (a programmer error).
func (r *Registry) Add(k Kind) {
	if _, dup := r.kinds[k.Name]; dup || k.Name == "" || k.Open == nil {
		panic(fmt.Sprintf("site: bad or duplicate kind %q", k.Name))
	}
	r.kinds[k.Name] = k
}

// Lookup returns the kind named name.
func (r *Registry) Lookup(name provider.Kind) (Kind, error) {
	k, ok := r.kinds[name]
	if !ok {
		return Kind{}, fmt.Errorf("site kind %q: this ferry knows %v: %w", name, r.Names(), errs.ErrInvalidArgument)
	}
	return k, nil
}

// Names lists the registered kinds.
func (r *Registry) Names() []provider.Kind {
	var out []provider.Kind
	for n := range r.kinds {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// validate checks c against its kind.
func (k Kind) validate(c Config) error {
	if k.NeedEndpoint && c.Endpoint == "" {
		return fmt.Errorf("site %s: kind %s needs an endpoint (--url): %w", c.Name, k.Name, errs.ErrInvalidArgument)
	}
	for key := range c.Settings {
		if !slices.Contains(k.Settings, key) {
			return fmt.Errorf("site %s: kind %s has no setting %q (it has %v): %w", c.Name, k.Name, key, k.Settings, errs.ErrInvalidArgument)
		}
	}
	for key := range c.Secrets {
		if !slices.Contains(k.Secrets, key) {
			return fmt.Errorf("site %s: kind %s takes no credential %q (it takes %v): %w", c.Name, k.Name, key, k.Secrets, errs.ErrInvalidArgument)
		}
	}
	for _, key := range k.RequiredSettings {
		if c.Settings[key] == "" {
			return fmt.Errorf("site %s: kind %s needs setting %q: %w", c.Name, k.Name, key, errs.ErrInvalidArgument)
		}
	}
	for _, key := range k.RequiredSecrets {
		if c.Secrets[key] == "" {
			return fmt.Errorf("site %s: kind %s needs credential %q: %w", c.Name, k.Name, key, errs.ErrInvalidArgument)
		}
	}
	return nil
}
