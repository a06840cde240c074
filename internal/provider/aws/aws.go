// Package aws is ferry's site driver for Amazon EC2 regions (kind "aws"),
// built on aws-sdk-go-v2. It follows AWS's documented APIs and behaviour
// and works unchanged against AWS itself or any endpoint that serves them
// (Config.Endpoint).
//
// It implements provider.Provider and the optional Inventory,
// Snapshotter, DiskExporter, Importer and Consoler (GetConsoleOutput):
//
//   - VMs are EC2 instances that are not terminated; a VM's ID is its
//     instance ID, its name its Name tag, its host its availability zone,
//     its disks its EBS volumes in device-name order (sizes and types from
//     DescribeVolumes), its NICs its network interfaces (MAC, private IP,
//     subnet). pending, stopping and shutting-down are Pending; running is
//     Running; stopped is Halted.
//   - PowerVM: start is StartInstances, shutdown StopInstances, stop
//     StopInstances with Force, reboot RebootInstances.
//   - Snapshot takes CreateSnapshots of the instance's volumes
//     (crash-consistent across them; CreateSnapshot per volume where a
//     site lacks CreateSnapshots) and waits until they are completed. The
//     snapshot's ID is its snapshot IDs joined with ","; each disk's ID is
//     its snapshot ID. DeleteSnapshot takes either.
//   - OpenDisk reads a snapshot through the EBS direct APIs (ebsdirect);
//     with a base snapshot, only the blocks that changed.
//   - ImportVM writes every disk into a new snapshot with the EBS direct
//     APIs (only blocks that hold data travel), registers an AMI over them
//     (x86_64, HVM, ENA, legacy-bios or UEFI from the spec), launches an
//     instance of a type that fits the spec's CPUs and memory, and stops it
//     once running, so that the VM is created halted as on other sites
//     (Config.StartImported leaves it running).
//
// Beyond the contract: typed listings (ListImages, ListSnapshots,
// ListVolumes, ListSubnets, ListSecurityGroups), Launch, UploadDisk (the
// resumable EBS direct upload) and RegisterImage, and the classic S3 paths
// (ImportSnapshotS3, ImportImageS3, ExportImageS3, ExportInstanceS3,
// OpenS3Image) through the staging bucket.
//
// Everything ferry creates carries the tags ferry:managed=true and
// ferry:job=<job ID> (from the options' Tags); an operation that fails or
// is cancelled removes what it created.
//
// Errors are classified in one place (awserr): throttling, 5xx responses
// and broken connections are retried by the SDK's standard retryer
// (exponential backoff, full jitter) and by ferry's own for the EBS block
// and S3 part calls; nothing is retried once ctx is done.
package aws

import (
	"cmp"
	"context"
	"fmt"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/provider/aws/awserr"
)

// Tags ferry sets on everything it creates.
const (
	TagManaged = "ferry:managed"
	TagJob     = "ferry:job"
)

// apiVersion is the EC2 API version the SDK speaks.
const apiVersion = "2016-11-15"

// Secret is a secret key: every way of printing it shows a redaction.
type Secret string

const redacted = "[redacted]"

// Reveal returns the value, for the one place that uses it.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString redacts %#v.
func (s Secret) GoString() string { return `aws.Secret("` + s.String() + `")` }

// Format redacts every fmt verb.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", s.String())
		return
	}
	fmt.Fprint(f, s.String())
}

// LogValue redacts the secret in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText redacts the secret in JSON and other encodings.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Config configures a connection to a region.
type Config struct {
	// Name is the site's name in ferry; default "aws-<region>".
	Name core.SiteName
	// Region is required unless the shared config or environment names
	// one.
	Region string
	// Profile selects a shared config/credentials profile (and with it
	// assume-role, SSO, ...).
	Profile string
	// Endpoint, if set, replaces the endpoints of EC2, EBS, S3 and STS
	// alike (S3 is then addressed path-style).
	Endpoint string
	// AccessKey and SecretKey, if set, are static credentials; otherwise
	// the SDK's default chain (environment, shared config and profiles,
	// assume-role, container and instance roles) is used.
	AccessKey    string
	SecretKey    Secret
	SessionToken Secret
	// Bucket is the staging bucket for the S3 import and export paths;
	// Prefix the key prefix under it (default "ferry/").
	Bucket string
	Prefix string
	// RootDevice is the root device name of registered AMIs:
	// "/dev/xvda" (default) or "/dev/sda1".
	RootDevice string
	// VolumeType is the EBS volume type of imported disks; default gp3.
	VolumeType string
	// StartImported leaves an imported instance running instead of
	// stopping it.
	StartImported bool
	// ExportRole is the IAM role EC2 uses to write exports to S3; default
	// the service's (vmimport).
	ExportRole string
	// MaxAttempts bounds the SDK's tries per call; default 8.
	MaxAttempts int
	// Workers is how many EBS blocks are sent at once; default 16.
	Workers int
	// PollEvery and PollMax bound the waits between state polls; defaults
	// 2 s and 15 s.
	PollEvery, PollMax time.Duration
	// HTTPClient replaces the SDK's HTTP client (tests).
	HTTPClient *http.Client
}

// Provider is a connected region.
type Provider struct {
	cfg  Config
	log  *slog.Logger
	info provider.Info
	ec2  *ec2.Client
	ebs  *ebs.Client
	s3   *s3.Client
	sts  *sts.Client

	retry awserr.Backoff

	mu    sync.Mutex
	types map[string]ec2types.InstanceTypeInfo // instance type details, cached
}

var (
	_ provider.Provider     = (*Provider)(nil)
	_ provider.Inventory    = (*Provider)(nil)
	_ provider.Snapshotter  = (*Provider)(nil)
	_ provider.DiskExporter = (*Provider)(nil)
	_ provider.Importer     = (*Provider)(nil)
	_ provider.Consoler     = (*Provider)(nil)
)

// newRetryer is the SDK's standard retryer (exponential backoff with full
// jitter up to 20 s) that also retries whatever awserr calls Unavailable,
// without the client-side retry quota, so that throttling is waited out
// rather than turned into errors.
func newRetryer(maxAttempts int) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = 20 * time.Second
		o.RateLimiter = ratelimit.None
		o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			if awserr.Retryable(err) {
				return aws.TrueTernary
			}
			return aws.UnknownTernary
		}))
	})
}

// Open prepares clients for the region. It does no request: credentials
// and reachability show in the first call (wrong keys are
// PermissionDenied).
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Provider, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	cfg.Prefix = cmp.Or(cfg.Prefix, "ferry/")
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	cfg.RootDevice = cmp.Or(cfg.RootDevice, "/dev/xvda")
	if cfg.RootDevice != "/dev/xvda" && cfg.RootDevice != "/dev/sda1" {
		return nil, fmt.Errorf("aws: root device %q: want /dev/xvda or /dev/sda1: %w", cfg.RootDevice, errs.ErrInvalidArgument)
	}
	cfg.VolumeType = cmp.Or(cfg.VolumeType, "gp3")
	if cfg.PollEvery <= 0 {
		cfg.PollEvery = 2 * time.Second
	}
	if cfg.PollMax <= 0 {
		cfg.PollMax = 15 * time.Second
	}
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("aws: endpoint %q is not an http(s) URL: %w", cfg.Endpoint, errs.ErrInvalidArgument)
		}
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, fmt.Errorf("aws: give both access key and secret key, or neither: %w", errs.ErrInvalidArgument)
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer { return newRetryer(cfg.MaxAttempts) }),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(
			cfg.AccessKey, cfg.SecretKey.Reveal(), cfg.SessionToken.Reveal())))
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(cfg.HTTPClient))
	} else {
		// Keep a connection for every block in flight (and some for the
		// EC2 and S3 calls beside them): with the SDK's default of 10
		// idle connections per host, parallel block transfers close and
		// dial connections (with a TLS handshake each) all the time.
		idle := 2 * max(cfg.Workers, 16)
		opts = append(opts, config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConnsPerHost = idle
		})))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: load configuration (profile %q): %v: %w", cfg.Profile, err, errs.ErrInvalidArgument)
	}
	if ac.Region == "" {
		return nil, fmt.Errorf("aws: no region: set it in the site's configuration, AWS_REGION or the profile: %w", errs.ErrInvalidArgument)
	}
	cfg.Region = ac.Region
	p := &Provider{cfg: cfg, log: logger.With("provider", "aws", "region", ac.Region), types: map[string]ec2types.InstanceTypeInfo{}}
	p.retry = awserr.Backoff{Attempts: cfg.MaxAttempts}
	p.ec2 = ec2.NewFromConfig(ac, func(o *ec2.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	p.ebs = ebs.NewFromConfig(ac, func(o *ebs.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	p.s3 = s3.NewFromConfig(ac, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
		// Content-MD5 on every part instead of trailing checksums in
		// aws-chunked bodies, which S3-compatible servers do not all read.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	p.sts = sts.NewFromConfig(ac, func(o *sts.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = "https://ec2." + ac.Region + ".amazonaws.com"
	}
	p.info = provider.Info{
		Name: cmp.Or(cfg.Name, core.SiteName("aws-"+ac.Region)), Kind: provider.KindAWS, Endpoint: endpoint,
		Version: "EC2 " + apiVersion, Region: ac.Region,
		Capabilities: provider.Capabilities{Snapshot: true, ExportDisk: true, ChangedBlocks: true, ImportVM: true, StorageListing: true, ConsoleLog: true},
	}
	return p, nil
}

// Info describes the region.
func (p *Provider) Info() provider.Info { return p.info }

// Close releases nothing: the SDK's clients hold no session.
func (p *Provider) Close() error { return nil }

// EC2 returns the EC2 client, for what the provider does not cover.
func (p *Provider) EC2() *ec2.Client { return p.ec2 }

// EBS returns the EBS direct APIs client.
func (p *Provider) EBS() *ebs.Client { return p.ebs }

// StagingBucket is the bucket the S3 import and export paths stage
// objects in ("" when none is configured).
func (p *Provider) StagingBucket() string { return p.cfg.Bucket }

// S3 returns the S3 client.
func (p *Provider) S3() *s3.Client { return p.s3 }

// unsupported is wrapped by everything a region cannot do.
func unsupported(what string) error {
	return fmt.Errorf("aws: %s: not supported by this site: %w", what, errs.ErrUnimplemented)
}

// ferryTags returns extra plus ferry:managed=true. The job's ID comes in
// extra as ferry:job, from the caller.
func ferryTags(extra map[string]string) map[string]string {
	t := map[string]string{}
	for k, v := range extra {
		t[k] = v
	}
	t[TagManaged] = "true"
	return t
}

// ec2Tags converts tags to EC2's, keys sorted.
func ec2Tags(m map[string]string) []ec2types.Tag {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]ec2types.Tag, 0, len(keys))
	for _, k := range keys {
		out = append(out, ec2types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

// tagSpecs returns TagSpecifications of tags for each resource type.
func tagSpecs(tags map[string]string, types ...ec2types.ResourceType) []ec2types.TagSpecification {
	var out []ec2types.TagSpecification
	for _, t := range types {
		out = append(out, ec2types.TagSpecification{ResourceType: t, Tags: ec2Tags(tags)})
	}
	return out
}

func tagMap(tags []ec2types.Tag) map[string]string {
	if len(tags) == 0 {
		return nil
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

// wrap classifies an SDK error and names what failed.
func wrap(err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("aws: "+format+": %w", append(a, awserr.Classify(err))...)
}

// undo collects compensations for what an operation created; run them in
// reverse order when the operation fails.
type undo struct {
	log   *slog.Logger
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(ctx context.Context) error
}

func (u *undo) add(what string, fn func(ctx context.Context) error) {
	u.steps = append(u.steps, undoStep{what, fn})
}

// run performs the compensations on a context that outlives the
// operation's cancellation, and logs those that fail.
func (u *undo) run(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	for _, s := range slices.Backward(u.steps) {
		if err := s.fn(ctx); err != nil && !errs.Is(err, errs.NotFound) {
			u.log.Warn("aws: clean up after failure", "what", s.what, "err", err)
		} else {
			u.log.Info("aws: cleaned up after failure", "what", s.what)
		}
	}
	u.steps = nil
}

// isNotFound reports whether err is a NotFound, classified or not.
func isNotFound(err error) bool { return err != nil && awserr.CodeOf(err) == errs.NotFound }

var errNotFound = errs.ErrNotFound

// Identity is who the credentials belong to.
type Identity struct {
	Account string `json:"account"`
	ARN     string `json:"arn"`
	UserID  string `json:"user_id"`
}

// Identity checks the credentials with STS GetCallerIdentity (which needs
// no permission) and says whose they are. Wrong keys are
// PermissionDenied.
func (p *Provider) Identity(ctx context.Context) (Identity, error) {
	out, err := p.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return Identity{}, wrap(err, "check credentials")
	}
	return Identity{Account: aws.ToString(out.Account), ARN: aws.ToString(out.Arn), UserID: aws.ToString(out.UserId)}, nil
}
