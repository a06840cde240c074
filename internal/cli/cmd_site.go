package cli

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/site"
)

func newSiteCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	cmd := &cobra.Command{
		Use:   "site",
		Short: "Register, test, list and remove sites (XenServer pools, EC2 regions)",
	}
	r.add(cmd)
	cmd.AddCommand(newSiteAddCommand(g, &r), newSiteTestCommand(g, &r), newSiteListCommand(g, &r), newSiteRemoveCommand(g, &r), newSiteRefreshCommand(g, &r))
	return cmd
}

type siteAddOptions struct {
	kind         string
	url          string
	endpoint     string
	user         string
	passwordFile string
	passwordEnv  string
	region       string
	accessKeyEnv string
	siteCAFile   string
	siteFP       string
	insecure     bool
	settings     []string
}

func newSiteAddCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var o siteAddOptions
	cmd := &cobra.Command{
		Use:   "add NAME --kind xen|aws|fake [flags]",
		Short: "Register a site; its credentials are sealed on the server",
		Long: `Register a site with the server. Passwords and keys are read here (from a
file or an environment variable, never from the command line), sent to the
server and stored there encrypted (AES-256-GCM).

  xen:  --url https://POOL-MASTER --user root --password-file FILE
        [--site-ca-file PEM | --site-fingerprint SHA256 | --insecure]
  aws:  --region eu-west-1 --access-key-env AWS_ACCESS_KEY_ID [--endpoint URL]
        (reads the variable named and, beside it, the matching
        ..._SECRET_ACCESS_KEY, e.g. AWS_SECRET_ACCESS_KEY)
  fake: --url 'fake://NAME?vms=N&seed=S'  (an in-memory test double)`,
		Example: `  ferry site add dc1 --kind xen --url https://xen1.example --user root --password-file ~/.xenpw
  ferry site add aws-eu --kind aws --region eu-west-1 --access-key-env AWS_ACCESS_KEY_ID
  ferry site add lab --kind fake --url 'fake://lab?vms=500'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args[0])
			if err != nil {
				return err
			}
			c, err := r.client()
			if err != nil {
				return err
			}
			v, err := c.AddSite(cmd.Context(), req)
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, v)
			}
			fmt.Fprintf(g.Stdout, "site %s (%s) added", v.Name, v.Kind)
			if len(v.Credentials) > 0 {
				fmt.Fprintf(g.Stdout, "; credentials stored encrypted: %s", strings.Join(v.Credentials, ", "))
			}
			fmt.Fprintln(g.Stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.kind, "kind", "", "site kind: xen, aws or fake")
	f.StringVar(&o.url, "url", "", "the site's URL (xen pool master; fake://...)")
	f.StringVar(&o.endpoint, "endpoint", "", "API endpoint override (aws)")
	f.StringVar(&o.user, "user", "", "user name (xen)")
	f.StringVar(&o.passwordFile, "password-file", "", "file holding the password")
	f.StringVar(&o.passwordEnv, "password-env", "", "environment variable holding the password")
	f.StringVar(&o.region, "region", "", "region (aws)")
	f.StringVar(&o.accessKeyEnv, "access-key-env", "", "environment variable holding the access key ID (aws); the secret is read from the matching ..._SECRET_ACCESS_KEY")
	f.StringVar(&o.siteCAFile, "site-ca-file", "", "CA certificates (PEM) that sign the site's certificate (xen)")
	f.StringVar(&o.siteFP, "site-fingerprint", "", "pin the site's certificate by its SHA-256 fingerprint (xen)")
	f.BoolVar(&o.insecure, "insecure", false, "do not check the site's certificate (xen; tests only)")
	f.StringArrayVar(&o.settings, "setting", nil, "other kind-specific setting, key=value (repeatable)")
	cmd.MarkFlagRequired("kind")
	return cmd
}

func (o *siteAddOptions) request(name string) (api.AddSiteRequest, error) {
	req := api.AddSiteRequest{Name: name, Kind: o.kind, Settings: map[string]string{}, Secrets: map[string]site.Secret{}}
	if o.url != "" && o.endpoint != "" {
		return req, fmt.Errorf("give --url or --endpoint, not both: %w", errs.ErrInvalidArgument)
	}
	req.Endpoint = firstOf(o.url, o.endpoint)
	set := func(k, v string) {
		if v != "" {
			req.Settings[k] = v
		}
	}
	set("user", o.user)
	set("region", o.region)
	set("fingerprint", o.siteFP)
	if o.insecure {
		req.Settings["insecure"] = "true"
	}
	if o.siteCAFile != "" {
		b, err := os.ReadFile(o.siteCAFile)
		if err != nil {
			return req, fmt.Errorf("--site-ca-file: %w", err)
		}
		req.Settings["ca_pem"] = string(b)
	}
	for _, kv := range o.settings {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return req, fmt.Errorf("--setting %q: want key=value: %w", kv, errs.ErrInvalidArgument)
		}
		req.Settings[k] = v
	}
	switch {
	case o.passwordFile != "" && o.passwordEnv != "":
		return req, fmt.Errorf("give --password-file or --password-env, not both: %w", errs.ErrInvalidArgument)
	case o.passwordFile != "":
		b, err := os.ReadFile(o.passwordFile)
		if err != nil {
			return req, fmt.Errorf("--password-file: %w", err)
		}
		req.Secrets["password"] = site.Secret(strings.TrimRight(string(b), "\r\n"))
	case o.passwordEnv != "":
		v, ok := os.LookupEnv(o.passwordEnv)
		if !ok || v == "" {
			return req, fmt.Errorf("--password-env: $%s is not set: %w", o.passwordEnv, errs.ErrInvalidArgument)
		}
		req.Secrets["password"] = site.Secret(v)
	}
	if o.accessKeyEnv != "" {
		id := os.Getenv(o.accessKeyEnv)
		secretVar := strings.Replace(o.accessKeyEnv, "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", 1)
		if secretVar == o.accessKeyEnv {
			secretVar = o.accessKeyEnv + "_SECRET"
		}
		secret := os.Getenv(secretVar)
		if id == "" || secret == "" {
			return req, fmt.Errorf("--access-key-env: $%s and $%s must both be set: %w", o.accessKeyEnv, secretVar, errs.ErrInvalidArgument)
		}
		req.Secrets["access_key_id"] = site.Secret(id)
		req.Secrets["secret_access_key"] = site.Secret(secret)
	}
	return req, nil
}

func newSiteTestCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "test NAME",
		Short: "Connect to a site and report its version and capabilities",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			res, err := c.TestSite(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, res)
			}
			i := res.Info
			fmt.Fprintf(g.Stdout, "site %s: connected in %d ms\n  kind:     %s\n  version:  %s\n", res.Site, res.LatencyMS, i.Kind, i.Version)
			if i.Region != "" {
				fmt.Fprintf(g.Stdout, "  region:   %s\n", i.Region)
			}
			caps := i.Capabilities
			var have []string
			for _, c := range []struct {
				on   bool
				name string
			}{{caps.Snapshot, "snapshot"}, {caps.ExportDisk, "export-disk"}, {caps.ChangedBlocks, "changed-blocks"}, {caps.ImportVM, "import-vm"},
				{caps.Events, "events"}, {caps.ArchiveExport, "archive-export"}, {caps.ConsoleLog, "console-log"}, {caps.StorageListing, "storage-listing"}} {
				if c.on {
					have = append(have, c.name)
				}
			}
			fmt.Fprintf(g.Stdout, "  can:      %s\n", strings.Join(have, ", "))
			return nil
		},
	}
}

func newSiteListCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sites and their health",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			list, err := c.Sites(cmd.Context())
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, list)
			}
			tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tENDPOINT\tVMS\tHEALTH")
			for _, s := range list {
				health, vms := "-", "-"
				if h := s.Health; h != nil {
					vms = fmt.Sprint(h.VMs)
					health = "ok"
					if !h.OK {
						health = "error: " + h.Error
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Kind, firstOf(s.Endpoint, s.Settings["region"], "-"), vms, health)
			}
			return tw.Flush()
		},
	}
}

func newSiteRemoveCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove"},
		Short:   "Unregister a site (its VMs are not touched)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			if err := c.RemoveSite(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.Stdout, "site %s removed\n", args[0])
			return nil
		},
	}
}

func newSiteRefreshCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "refresh NAME",
		Short: "Refresh a site's inventory now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			res, err := c.RefreshSite(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, res)
			}
			fmt.Fprintf(g.Stdout, "site %s: %d VMs\n", res.Site, res.VMs)
			return nil
		},
	}
}
