package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/api"
	"github.com/ferry-project/ferry/internal/api/client"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/metrics"
	"github.com/ferry-project/ferry/internal/pricing"
	"github.com/ferry-project/ferry/internal/service"
	"github.com/ferry-project/ferry/internal/site"
	"github.com/ferry-project/ferry/internal/store"
)

// DefaultListen is where ferry serve listens and the CLI looks by default.
const DefaultListen = "127.0.0.1:8443"

type serveOptions struct {
	listen        string
	data          dataOptions
	keyFile       string
	tlsCert       string
	tlsKey        string
	tlsSelfSigned bool
	refresh       time.Duration
	workers       int
	noWork        bool
	prices        string
	imagesDir     string
	leaseTTL      time.Duration
}

func newServeCommand(g *Globals) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane: REST API, job workers, inventory refresh",
		Long: `Serve the REST API (/api/v1, OpenAPI at /api/v1/openapi.json, Prometheus
metrics at /metrics) and the web UI (/; sign in with an API token), run jobs,
and keep the inventory of every site fresh.

State lives in the data directory (SQLite, ferry.db) or, with --database
postgres://..., in PostgreSQL, shared with any number of 'ferry worker'
processes. Site credentials are sealed with AES-256-GCM under the key from
--key-file or FERRY_SECRET_KEY; without either, a key is generated into the
data directory (secret.key, mode 0600) on first start: back it up.

On first start an admin token is created and printed once. TLS: give
--tls-cert and --tls-key, or --tls-self-signed to generate a certificate
(ECDSA P-256) into the data directory; its SHA-256 fingerprint is printed
for clients' --fingerprint.`,
		Example: `  ferry serve --data /var/lib/ferry --tls-self-signed
  ferry serve --listen :8443 --database postgres://ferry@db/ferry --key-file /etc/ferry/key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", DefaultListen, "address to serve on")
	o.data.add(cmd)
	f.StringVar(&o.keyFile, "key-file", "", "file holding the 32-byte secret key (hex or base64); default $"+site.KeyEnv+" or DATA/secret.key")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.BoolVar(&o.tlsSelfSigned, "tls-self-signed", false, "serve TLS with a self-signed certificate generated into the data directory")
	f.DurationVar(&o.refresh, "refresh", 5*time.Minute, "inventory refresh interval")
	f.IntVar(&o.workers, "workers", 4, "jobs run at once by this process")
	f.BoolVar(&o.noWork, "no-work", false, "run no jobs here (leave them to ferry worker processes)")
	f.StringVar(&o.prices, "prices", "", "price table (JSON) merged over the built-in one")
	f.StringVar(&o.imagesDir, "images-dir", "", "where API image conversions may read and write (default DATA/images)")
	f.DurationVar(&o.leaseTTL, "lease", 30*time.Second, "job lease: how soon a job of a dead worker resumes elsewhere")
	return cmd
}

// dataOptions are --data and --database.
type dataOptions struct {
	dir      string
	database string
}

func (d *dataOptions) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&d.dir, "data", defaultDataDir(), "data directory (state, keys, certificates; $FERRY_DATA)")
	cmd.Flags().StringVar(&d.database, "database", os.Getenv("FERRY_DATABASE"), "PostgreSQL URL (postgres://...) instead of SQLite in the data directory ($FERRY_DATABASE)")
}

func defaultDataDir() string {
	if d := os.Getenv("FERRY_DATA"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "ferry")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "ferry")
	}
	return "ferry-data"
}

// open opens the store, creating the data directory.
func (d dataOptions) open(ctx context.Context, g *Globals) (store.Store, store.Location, error) {
	loc, err := store.ParseLocation(d.dir, d.database)
	if err != nil {
		return nil, loc, err
	}
	if d.dir != "" {
		if err := os.MkdirAll(d.dir, 0o700); err != nil {
			return nil, loc, err
		}
	}
	st, err := store.Open(ctx, loc, &store.Options{Logger: g.Logger})
	return st, loc, err
}

// lockDataDir takes an exclusive lock on the data directory for the life
// of the process: with SQLite, one server at a time.
func lockDataDir(dir string) (func(), error) {
	release, held, err := tryLock(filepath.Join(dir, "ferry.lock"))
	if held {
		return nil, fmt.Errorf("data directory %s is in use by another ferry serve or worker: %w", dir, errs.ErrFailedPrecondition)
	}
	return release, err
}

// tryLock takes an exclusive lock on path (created if missing) until
// release is called; held reports that another process holds it.
func tryLock(path string) (release func(), held bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, true, nil
	}
	return func() { f.Close() }, false, nil
}

func runServe(ctx context.Context, g *Globals, o serveOptions) error {
	if (o.tlsCert == "") != (o.tlsKey == "") || (o.tlsSelfSigned && o.tlsCert != "") {
		return fmt.Errorf("give --tls-cert with --tls-key, or --tls-self-signed: %w", errs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(o.data.dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockDataDir(o.data.dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, loc, err := o.data.open(ctx, g)
	if err != nil {
		return err
	}
	defer st.Close()

	key, src, err := site.LoadKey(o.keyFile, os.Getenv(site.KeyEnv), o.data.dir)
	if err != nil {
		return err
	}
	if src.Generated {
		fmt.Fprintf(g.Stdout, "ferry: generated a new secret key in %s (mode 0600): back it up; without it the stored site credentials cannot be decrypted\n", src.Path)
	}
	prices, err := pricing.Load(o.prices)
	if err != nil {
		return err
	}
	imagesDir := o.imagesDir
	if imagesDir == "" {
		imagesDir = filepath.Join(o.data.dir, "images")
	}
	if err := os.MkdirAll(imagesDir, 0o750); err != nil {
		return err
	}

	sites := site.NewManager(st, site.Kinds(), site.NewSealer(key), &site.Options{Logger: g.Logger, Prices: prices})
	defer sites.Close()
	m := metrics.New(metrics.Sources{Store: st, Sites: func() map[string]metrics.SiteHealth {
		out := map[string]metrics.SiteHealth{}
		for n, h := range sites.HealthOf() {
			out[string(n)] = metrics.SiteHealth{Up: h.OK, VMs: h.VMs}
		}
		return out
	}})
	reg := job.NewRegistry()
	service.RegisterJobKinds(reg, g.Images, imagesDir, sites)
	jm, err := job.Open(ctx, loc, st, reg, &job.Options{Logger: g.Logger, Work: !o.noWork, Workers: o.workers,
		SingleNode: loc.Dialect == store.SQLite, LeaseTTL: o.leaseTTL, OnBytes: m.AddBytes})
	if err != nil {
		return err
	}
	cp := &service.ControlPlane{Store: st, Sites: sites, Jobs: jm, Logger: g.Logger, Prices: prices}

	tok, created, err := service.BootstrapToken(ctx, st, "admin", false, "ferry serve (first start)")
	if err != nil {
		jm.Stop(ctx)
		return err
	}
	if created {
		fmt.Fprintf(g.Stdout, "ferry: first start: created an admin token (shown only now): %s\n", tok.Secret)
	}

	var tlsConf *tls.Config
	switch {
	case o.tlsSelfSigned:
		certFile, keyFile, fresh, err := selfSignedCert(filepath.Join(o.data.dir, "tls"))
		if err != nil {
			jm.Stop(ctx)
			return err
		}
		o.tlsCert, o.tlsKey = certFile, keyFile
		if fresh {
			fmt.Fprintf(g.Stdout, "ferry: generated a self-signed TLS certificate in %s\n", certFile)
		}
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			jm.Stop(ctx)
			return fmt.Errorf("TLS: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		fmt.Fprintf(g.Stdout, "ferry: TLS certificate SHA-256 fingerprint: %s\n", client.Fingerprint(cert.Certificate[0]))
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		jm.Stop(ctx)
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	scheme := "http"
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
		scheme = "https"
	} else if host, _, _ := net.SplitHostPort(o.listen); host != "127.0.0.1" && host != "localhost" && host != "::1" {
		g.Logger.Warn("serving plain HTTP on a non-loopback address: tokens cross the network in clear; use --tls-self-signed or --tls-cert")
	}

	if err := jm.Start(ctx); err != nil {
		ln.Close()
		jm.Stop(ctx)
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	refreshDone := make(chan struct{})
	go func() { sites.Run(runCtx, o.refresh); close(refreshDone) }()

	srv := &http.Server{
		Handler:           api.New(cp, &api.Options{Logger: g.Logger, Metrics: m, Version: Version}).Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Fprintf(g.Stdout, "ferry: serving %s://%s (state: %s %s)\n", scheme, ln.Addr(), loc.Dialect, loc.Redacted())
	if f, ok := g.Stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	stopRun()
	<-refreshDone
	jerr := jm.Stop(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, jerr)
}

// selfSignedCert returns dir/cert.pem and dir/key.pem, generating an ECDSA
// P-256 certificate for localhost, 127.0.0.1, ::1 and the host name when
// they do not exist.
func selfSignedCert(dir string) (certFile, keyFile string, fresh bool, err error) {
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := os.Stat(certFile); err == nil {
		return certFile, keyFile, false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", false, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", false, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ferry " + host, Organization: []string{"ferry"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	if host != "" && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return "", "", false, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", false, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return "", "", false, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", false, err
	}
	return certFile, keyFile, true, nil
}

// ---- talking to a server (every remote command: site, vm, job, token,
// audit)

// remoteOptions find the server and the token.
type remoteOptions struct {
	server      string
	tokenFile   string
	caFile      string
	fingerprint string
	output      string
}

func (r *remoteOptions) add(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&r.server, "server", "", "ferry server URL ($FERRY_SERVER; default http://"+DefaultListen+")")
	f.StringVar(&r.tokenFile, "token-file", "", "file holding the API token ($FERRY_TOKEN_FILE; without either, the token itself from $FERRY_TOKEN)")
	f.StringVar(&r.caFile, "ca-file", "", "CA certificates (PEM) to trust for an https server ($FERRY_CA_FILE)")
	f.StringVar(&r.fingerprint, "fingerprint", "", "pin the server's certificate by its SHA-256 fingerprint ($FERRY_FINGERPRINT)")
	f.StringVarP(&r.output, "output", "o", "human", "output format: human or json")
}

func (r *remoteOptions) client() (*client.Client, error) {
	if r.output != "human" && r.output != "json" {
		return nil, fmt.Errorf("--output %q: want human or json: %w", r.output, errs.ErrInvalidArgument)
	}
	server := firstOf(r.server, os.Getenv("FERRY_SERVER"), "http://"+DefaultListen)
	token := os.Getenv("FERRY_TOKEN")
	if tf := firstOf(r.tokenFile, os.Getenv("FERRY_TOKEN_FILE")); tf != "" {
		b, err := os.ReadFile(tf)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(server, &client.Options{Token: token,
		CAFile: firstOf(r.caFile, os.Getenv("FERRY_CA_FILE")), Fingerprint: firstOf(r.fingerprint, os.Getenv("FERRY_FINGERPRINT"))})
}

func (r *remoteOptions) json() bool { return r.output == "json" }

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
