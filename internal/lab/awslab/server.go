package awslab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/errs"
)

// Options configure a lab region.
type Options struct {
	// Dir holds the region's state: state.json, credentials.json, the
	// block store, snapshot indexes, volume files, S3 buckets and
	// instance console logs. It is created if missing.
	Dir string
	// AccessKey and SecretKey are the only credentials the lab accepts.
	// When both are empty the pair stored in Dir is used, and when Dir
	// has none a pair is generated (Generated reports it). Given keys
	// replace the stored pair.
	AccessKey string
	SecretKey string
	// Region is the region served, us-east-1 by default. Requests signed
	// for another region are refused.
	Region string
	// Logger receives the lab's log; nil discards it. Secrets and
	// signatures are never logged.
	Logger *slog.Logger
	// QEMU is the path of qemu-system-x86_64, or "" to track instance
	// states only. FindQEMU looks it up.
	QEMU string
	// Clock drives state transitions and every timestamp the lab
	// reports; nil is the wall clock. Signatures are checked for
	// freshness against the wall clock whatever Clock says.
	Clock func() time.Time
	// Delay is how long transitional states last at least (pending,
	// stopping, creating, attaching, a completing snapshot, an import or
	// export task); the real work (conversions, copies) may take longer.
	// 0 means 2 s; a negative value means no minimum.
	Delay time.Duration
	// ShutdownTimeout bounds how long StopInstances waits for a QEMU
	// guest to power off after the ACPI power button before killing it.
	// Default 10 s.
	ShutdownTimeout time.Duration
}

// FindQEMU returns the path of qemu-system-x86_64, or "" when it is not
// installed (Debian package qemu-system-x86).
func FindQEMU() string {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return ""
	}
	return p
}

// Secret is a value that must not appear in logs: a secret access key.
// String and LogValue redact it.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (s Secret) Reveal() string             { return string(s) }
func (Secret) GoString() string             { return `awslab.Secret("[redacted]")` }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Server is an EC2-compatible lab region: EC2's Query API, the EBS direct
// APIs and S3 on one endpoint over real, persistent state in a directory.
// See the package documentation for what it serves.
type Server struct {
	dir       string
	region    string
	log       *slog.Logger
	qemu      string
	now       func() time.Time
	delay     time.Duration
	stopTO    time.Duration
	accessKey string
	secretKey Secret
	generated bool
	disks     *disk.Registry
	blocks    *blockStore
	handler   http.Handler
	ec2       map[string]ec2Handler

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu guards st, jobs, guests, journals, buckets, closed and dirty.
	// Code holding mu never waits for blocks.gc (background work holds
	// gc and then takes mu).
	mu       sync.Mutex
	st       *state
	jobs     map[string]*job     // background work by resource ID
	guests   map[string]*guest   // running QEMU guests by instance ID
	journals map[string]*journal // open journals of snapshots written through EBS
	buckets  map[string]*bucket
	closed   bool
	dirty    bool

	idxMu    sync.Mutex // guards the index cache
	idxCache map[string]index
	idxOrder []string
}

// New opens (or creates) the lab region in o.Dir.
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("aws lab: no state directory given: %w", errs.ErrInvalidArgument)
	}
	if (o.AccessKey == "") != (o.SecretKey == "") {
		return nil, fmt.Errorf("aws lab: give both an access key and a secret key, or neither: %w", errs.ErrInvalidArgument)
	}
	if o.AccessKey != "" && !validAccessKey(o.AccessKey) {
		return nil, fmt.Errorf("aws lab: access key %q: 16 to 128 letters and digits: %w", o.AccessKey, errs.ErrInvalidArgument)
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	if !validRegion(o.Region) {
		return nil, fmt.Errorf("aws lab: region %q is not a region name like us-east-1: %w", o.Region, errs.ErrInvalidArgument)
	}
	switch {
	case o.Delay == 0:
		o.Delay = 2 * time.Second
	case o.Delay < 0:
		o.Delay = 0
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("aws lab: state directory %s: %w", o.Dir, err)
	}
	for _, sub := range []string{"", "blocks", "snapshots", "volumes", "s3", "instances", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("aws lab: create state directory: %w", err)
		}
	}
	// Remove what a crash left in tmp.
	if ents, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(dir, "tmp", e.Name()))
		}
	}
	s := &Server{
		dir:      dir,
		region:   o.Region,
		log:      log,
		qemu:     o.QEMU,
		now:      o.Clock,
		delay:    o.Delay,
		stopTO:   o.ShutdownTimeout,
		disks:    formats.Registry(),
		blocks:   &blockStore{dir: filepath.Join(dir, "blocks")},
		jobs:     map[string]*job{},
		guests:   map[string]*guest{},
		journals: map[string]*journal{},
		buckets:  map[string]*bucket{},
		idxCache: map[string]index{},
	}
	if err := s.loadCredentials(o.AccessKey, o.SecretKey); err != nil {
		return nil, err
	}
	st, found, err := loadState(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		st = s.bootstrap()
	}
	s.st = st
	if err := s.loadBuckets(); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.ec2 = s.ec2Actions()
	s.handler = http.HandlerFunc(s.serveHTTP)
	s.mu.Lock()
	s.recoverLocked()
	s.dirty = true
	err = s.saveLocked()
	s.mu.Unlock()
	if err != nil {
		s.cancel()
		s.wg.Wait()
		return nil, err
	}
	log.Info("aws lab ready", "dir", dir, "region", s.region, "qemu", s.qemu != "", "access_key", s.accessKey)
	return s, nil
}

// Handler serves the region: EC2 (POST / with Action=...), the EBS direct
// APIs (/snapshots...) and S3 (path-style /bucket/key), told apart by the
// service in the request's SigV4 credential scope.
func (s *Server) Handler() http.Handler { return s.handler }

// Credentials returns the access key pair the lab accepts.
func (s *Server) Credentials() (accessKey string, secretKey Secret) {
	return s.accessKey, s.secretKey
}

// Generated reports whether New generated the key pair (no keys were
// given and none were stored in Dir).
func (s *Server) Generated() bool { return s.generated }

// Region is the region served.
func (s *Server) Region() string { return s.region }

// Close stops running guests, cancels background work (conversions and
// copies resume when the lab is opened again), waits for it and saves the
// state. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errList []error
	for id, g := range s.guests {
		s.stopGuestLocked(id, g)
	}
	for id, j := range s.journals {
		j.close()
		delete(s.journals, id)
	}
	s.blocks.close()
	s.dirty = true
	errList = append(errList, s.saveLocked())
	return errors.Join(errList...)
}

// saveLocked writes state.json if anything changed.
func (s *Server) saveLocked() error {
	if !s.dirty {
		return nil
	}
	if err := s.st.save(s.dir); err != nil {
		s.log.Error("save lab state", "err", err)
		return err
	}
	s.dirty = false
	return nil
}

// tmpFile creates a temporary file in the lab's tmp directory.
func (s *Server) tmpFile(pattern string) (*os.File, error) {
	return os.CreateTemp(filepath.Join(s.dir, "tmp"), pattern)
}

// goJobLocked runs fn in the background for resource id until it returns
// or the lab closes; done is then called with its error under the lab's
// lock (not when the lab is closing: the work starts again with the lab).
// A job already running for id is cancelled.
func (s *Server) goJobLocked(id string, fn func(ctx context.Context) error, done func(err error)) {
	if s.closed {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	if old := s.jobs[id]; old != nil {
		old.cancel()
	}
	j := &job{cancel: cancel}
	s.jobs[id] = j
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		err := fn(ctx)
		if ctx.Err() != nil && s.ctx.Err() != nil {
			return // the lab is closing: the work starts again with it
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.jobs[id] == j {
			delete(s.jobs, id)
		}
		done(err)
		s.dirty = true
		s.saveLocked()
	}()
}

// job is background work for a resource.
type job struct{ cancel context.CancelFunc }

// cancelJobLocked stops the background work of resource id, if any.
func (s *Server) cancelJobLocked(id string) {
	if j := s.jobs[id]; j != nil {
		j.cancel()
		delete(s.jobs, id)
	}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// newID returns an ID in AWS's shape: prefix, a dash, 17 hex digits (the
// first 0).
func newID(prefix string) string { return prefix + "-0" + randHex(16) }

func newUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0F | 0x40
	u[8] = u[8]&0x3F | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func validRegion(r string) bool {
	if len(r) < 5 || len(r) > 32 {
		return false
	}
	for _, c := range r {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return r[0] != '-' && r[len(r)-1] >= '0' && r[len(r)-1] <= '9'
}

func validAccessKey(k string) bool {
	if len(k) < 16 || len(k) > 128 {
		return false
	}
	for _, c := range k {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
