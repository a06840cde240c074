package aws_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/disk/synth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/awslab"
	"github.com/ferry-project/ferry/internal/provider"
	ferryaws "github.com/ferry-project/ferry/internal/provider/aws"
	"github.com/ferry-project/ferry/internal/provider/aws/awstest"
	"github.com/ferry-project/ferry/internal/provider/aws/ebsdirect"
	"github.com/ferry-project/ferry/internal/provider/aws/s3stage"
	"github.com/ferry-project/ferry/internal/provider/providertest"
)

const (
	labAccessKey = "AKIAFERRYPROVIDER001"
	labSecretKey = "ferry/provider/test+secret/0123456789abc"
	labBucket    = "ferry-staging"
)

// lab is a lab region behind an httptest server that counts the EBS
// block and S3 part requests crossing the wire.
type lab struct {
	srv       *awslab.Server
	hs        *httptest.Server
	puts      atomic.Int64 // PutSnapshotBlock requests answered 2xx
	putBytes  atomic.Int64
	parts     atomic.Int64 // UploadPart requests answered 2xx
	listParts atomic.Int64
	// onPart, if set, is called with the count after each part stored.
	onPart atomic.Pointer[func(n int64)]
	// inflight counts requests being served, so that a test can wait for
	// the requests a cancelled client abandoned to finish on the server.
	inflight sync.WaitGroup
	// putLog lists the block indexes of the acknowledged PUTs, in order.
	mu     sync.Mutex
	putLog []int64
}

// quiesce waits until the lab has answered every request it received.
func (l *lab) quiesce() { l.inflight.Wait() }

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(s int) { w.status = s; w.ResponseWriter.WriteHeader(s) }

func newLab(t *testing.T) *lab {
	t.Helper()
	srv, err := awslab.New(t.Context(), awslab.Options{Dir: t.TempDir(), AccessKey: labAccessKey, SecretKey: labSecretKey,
		Region: "us-east-1", Logger: slog.New(slog.DiscardHandler), Delay: -1})
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{srv: srv}
	h := srv.Handler()
	l.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.inflight.Add(1)
		defer l.inflight.Done()
		sw := &statusWriter{ResponseWriter: w, status: 200}
		h.ServeHTTP(sw, r)
		ok := sw.status < 300
		switch {
		case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/snapshots/") && strings.Contains(r.URL.Path, "/blocks/"):
			if ok {
				l.puts.Add(1)
				l.putBytes.Add(r.ContentLength)
				i, _ := strconv.ParseInt(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:], 10, 64)
				l.mu.Lock()
				l.putLog = append(l.putLog, i)
				l.mu.Unlock()
			}
		case r.Method == http.MethodPut && r.URL.Query().Has("partNumber") && r.URL.Query().Has("uploadId"):
			if ok {
				n := l.parts.Add(1)
				if fn := l.onPart.Load(); fn != nil {
					(*fn)(n)
				}
			}
		case r.Method == http.MethodGet && r.URL.Query().Has("uploadId"):
			l.listParts.Add(1)
		}
	}))
	t.Cleanup(func() {
		l.hs.Close()
		srv.Close()
	})
	return l
}

func (l *lab) open(t *testing.T, secret string) *ferryaws.Provider {
	t.Helper()
	p, err := ferryaws.Open(t.Context(), ferryaws.Config{
		Region: "us-east-1", Endpoint: l.hs.URL, AccessKey: labAccessKey, SecretKey: ferryaws.Secret(secret),
		Bucket: labBucket, PollEvery: 10 * time.Millisecond, PollMax: 100 * time.Millisecond, MaxAttempts: 3,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func (l *lab) makeBucket(t *testing.T, p *ferryaws.Provider, name string) {
	t.Helper()
	if _, err := p.S3().CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatal(err)
	}
}

// nonZeroBlocks counts the 512 KiB blocks of pt holding a non-zero byte.
func nonZeroBlocks(t testing.TB, pt *synth.Pattern) int64 {
	t.Helper()
	runs, err := ebsdirect.Plan(context.Background(), synth.Image{P: pt})
	if err != nil {
		t.Fatal(err)
	}
	buf, zero := make([]byte, ebsdirect.BlockSize), make([]byte, ebsdirect.BlockSize)
	var n int64
	for _, r := range runs {
		for i := r.First; i < r.End(); i++ {
			clear(buf)
			end := min((i+1)*ebsdirect.BlockSize, pt.Size)
			pt.Fill(i*ebsdirect.BlockSize, buf[:end-i*ebsdirect.BlockSize])
			if !bytes.Equal(buf, zero) {
				n++
			}
		}
	}
	return n
}

// checkSnapshot reads a snapshot back and compares it with pt, through
// disk.Compare and, on files, qemu-img compare.
func checkSnapshot(t *testing.T, p *ferryaws.Provider, id string, pt *synth.Pattern, withQemu bool) {
	t.Helper()
	img, err := p.OpenDisk(t.Context(), core.DiskID(id), "")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if want := ebsdirect.VolumeGiB(pt.Size) << 30; img.Size() != want {
		t.Fatalf("snapshot %s is %d bytes, want %d", id, img.Size(), want)
	}
	res, err := disk.Compare(t.Context(), synth.Image{P: pt}, img, &disk.CompareOptions{Workers: 8})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Identical {
		t.Fatalf("snapshot %s differs from %s at byte %d", id, pt.Name, res.Offset)
	}
	if !withQemu {
		return
	}
	disktest.QemuImg(t)
	dir := t.TempDir()
	src, out := filepath.Join(dir, "src.raw"), filepath.Join(dir, "snap.raw")
	disktest.WriteRaw(t, pt, src)
	w, err := formats.Registry().Create(t.Context(), out, "raw", img.Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Convert(t.Context(), w, img, &disk.ConvertOptions{Workers: 8}); err != nil {
		w.Close()
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	disktest.Qemu(t, "compare", "-f", "raw", "-F", "raw", src, out)
}

// TestLabEBSDirectRoundTrip: a multi-GiB sparse disk goes into an EBS
// snapshot and back out identical, and only its non-zero blocks cross the
// wire.
func TestLabEBSDirectRoundTrip(t *testing.T) {
	size := int64(3 << 30)
	if testing.Short() {
		size = 768 << 20
	}
	pt := disktest.MakePattern("ebs-roundtrip", size, 0.4, 21)
	l := newLab(t)
	p := l.open(t, labSecretKey)
	res, err := p.UploadDisk(t.Context(), synth.Image{P: pt}, &ferryaws.UploadOptions{Name: "roundtrip", Tags: map[string]string{ferryaws.TagJob: "job-1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := nonZeroBlocks(t, pt)
	if res.BlocksSent != want || l.puts.Load() != want || l.putBytes.Load() != want*ebsdirect.BlockSize || res.BytesSent != want*ebsdirect.BlockSize {
		t.Fatalf("sent %d blocks, %d bytes (wire: %d, %d bytes); want %d non-zero blocks of %d planned", res.BlocksSent, res.BytesSent, l.puts.Load(), l.putBytes.Load(), want, res.Planned)
	}
	t.Logf("%d-byte disk, %d data bytes: %d of %d blocks sent", pt.Size, pt.DataBytes(), want, pt.Size/ebsdirect.BlockSize)
	snaps, err := p.ListSnapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range snaps {
		if s.ID == res.SnapshotID {
			found = true
			if s.State != "completed" || s.Tags[ferryaws.TagManaged] != "true" || s.Tags[ferryaws.TagJob] != "job-1" {
				t.Errorf("snapshot %+v", s)
			}
		}
	}
	if !found {
		t.Fatalf("snapshot %s not listed", res.SnapshotID)
	}
	checkSnapshot(t, p, res.SnapshotID, pt, true)
}

// TestLabEBSDirectResume: the upload's context is cancelled after some
// blocks are acknowledged; resuming from the saved checkpoint sends only
// the missing blocks.
func TestLabEBSDirectResume(t *testing.T) {
	pt := disktest.MakePattern("ebs-resume", 96<<20, 0.5, 22)
	want := nonZeroBlocks(t, pt)
	l := newLab(t)
	p := l.open(t, labSecretKey)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	var saved []byte
	save := func(_ context.Context, cp ebsdirect.Checkpoint) error {
		b, err := cp.MarshalBinary()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		saved = b
		if cp.Sent.Count() == 10 {
			cancel()
		}
		return nil
	}
	_, err := p.UploadDisk(ctx, synth.Image{P: pt}, &ferryaws.UploadOptions{Save: save})
	if !errs.Is(err, errs.Canceled) {
		t.Fatalf("first run: %v, want canceled", err)
	}
	var cp ebsdirect.Checkpoint
	if err := cp.UnmarshalBinary(saved); err != nil {
		t.Fatal(err)
	}
	done := cp.Sent.Count()
	if done < 10 || done >= want {
		t.Fatalf("checkpoint holds %d of %d blocks", done, want)
	}
	// The snapshot is still pending: reading it is refused.
	if _, err := p.OpenDisk(t.Context(), core.DiskID(cp.SnapshotID), ""); !errs.Is(err, errs.FailedPrecondition) {
		t.Fatalf("open pending snapshot: %v, want failed precondition", err)
	}
	l.quiesce()
	l.mu.Lock()
	before := len(l.putLog)
	l.mu.Unlock()
	res, err := p.UploadDisk(t.Context(), synth.Image{P: pt}, &ferryaws.UploadOptions{Resume: &cp})
	if err != nil {
		t.Fatal(err)
	}
	if res.SnapshotID != cp.SnapshotID || res.BlocksSent != want-done || res.Changed != want {
		t.Fatalf("resume: %+v; want %d missing blocks into %s", res, want-done, cp.SnapshotID)
	}
	// On the wire after the first run: no block of the checkpoint, and
	// every missing one. (Requests the cancelled run had already written
	// may still reach the lab late; they are not in the checkpoint.)
	l.mu.Lock()
	after := slices.Clone(l.putLog[before:])
	l.mu.Unlock()
	seen := map[int64]bool{}
	for _, i := range after {
		if cp.Sent.Has(i) {
			t.Errorf("block %d, committed by the first run, was sent again", i)
		}
		seen[i] = true
	}
	if int64(len(seen)) != want-done {
		t.Errorf("resume sent %d distinct blocks, want the %d missing", len(seen), want-done)
	}
	checkSnapshot(t, p, res.SnapshotID, pt, false)
}

// TestLabS3Resume: a staged upload cancelled after some parts resumes with
// ListParts and sends only the missing parts; the staged VMDK is the
// disk.
func TestLabS3Resume(t *testing.T) {
	pt := disktest.MakePattern("s3-resume", 64<<20, 0.6, 23)
	l := newLab(t)
	p := l.open(t, labSecretKey)
	l.makeBucket(t, p, labBucket)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var cp s3stage.Checkpoint
	so := &ferryaws.StageOptions{Format: ferryaws.FormatRaw, Key: "ferry/resume.raw", PartSize: s3stage.MinPartSize,
		Save: func(_ context.Context, c s3stage.Checkpoint) error { cp = c; return nil }}
	// Cancel once the lab stored three parts.
	hook := func(n int64) {
		if n == 3 {
			cancel()
		}
	}
	l.onPart.Store(&hook)
	_, err := p.StageImage(ctx, synth.Image{P: pt}, so)
	if !errs.Is(err, errs.Canceled) {
		t.Fatalf("first run: %v, want canceled", err)
	}
	l.onPart.Store(nil)
	l.quiesce()
	if cp.UploadID == "" || cp.Completed {
		t.Fatalf("checkpoint %+v", cp)
	}
	held, err := p.S3().ListParts(t.Context(), &s3.ListPartsInput{Bucket: aws.String(labBucket), Key: aws.String(cp.Key), UploadId: aws.String(cp.UploadID)})
	if err != nil {
		t.Fatal(err)
	}
	nParts := int((pt.Size + s3stage.MinPartSize - 1) / s3stage.MinPartSize)
	before := l.parts.Load()
	so2 := &ferryaws.StageOptions{Format: ferryaws.FormatRaw, PartSize: s3stage.MinPartSize, Resume: &cp}
	res, err := p.StageImage(t.Context(), synth.Image{P: pt}, so2)
	if err != nil {
		t.Fatal(err)
	}
	sent := l.parts.Load() - before
	if res.Parts != nParts || res.PartsReused != len(held.Parts) || int(sent) != nParts-res.PartsReused || res.PartsSent != int(sent) {
		t.Fatalf("resume: %+v; %d held before, %d parts on the wire, %d parts in all", res, len(held.Parts), sent, nParts)
	}
	if len(held.Parts) < 3 {
		t.Fatalf("S3 held %d parts after three were acknowledged", len(held.Parts))
	}
	img, err := p.OpenS3Image(t.Context(), res.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	cmp, err := disk.Compare(t.Context(), synth.Image{P: pt}, img, nil)
	if err != nil || !cmp.Identical {
		t.Fatalf("staged image differs: %+v %v", cmp, err)
	}
}

// TestLabClassicImportExport: a disk staged as a streamOptimized VMDK is
// imported with ImportSnapshot and reads back identical; an AMI over it
// exports to S3 and reads back identical too.
func TestLabClassicImportExport(t *testing.T) {
	pt := &synth.Pattern{Name: "classic", Size: 24 << 20, Seed: 24, Data: synth.Mixed(24<<20, 24)}
	l := newLab(t)
	p := l.open(t, labSecretKey)
	l.makeBucket(t, p, labBucket)
	snap, err := p.ImportSnapshotS3(t.Context(), synth.Image{P: pt}, &ferryaws.ClassicOptions{StageOptions: ferryaws.StageOptions{Tags: map[string]string{ferryaws.TagJob: "job-2"}}})
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, p, snap, pt, false)
	// The staged object is gone.
	out, err := p.S3().ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String(labBucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Contents) != 0 {
		t.Errorf("staged objects left: %d", len(out.Contents))
	}
	ami, err := p.RegisterImage(t.Context(), ferryaws.RegisterSpec{Name: "classic-ami", Snapshots: []string{snap}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ferryaws.FormatVMDK, ferryaws.FormatRaw} {
		key, err := p.ExportImageS3(t.Context(), ami, &ferryaws.ExportOptions{Format: f})
		if err != nil {
			t.Fatalf("export %s: %v", f, err)
		}
		img, err := p.OpenS3Image(t.Context(), key)
		if err != nil {
			t.Fatalf("open export %s: %v", key, err)
		}
		res, err := disk.Compare(t.Context(), synth.Image{P: pt}, img, nil)
		img.Close()
		if err != nil || !res.Identical {
			t.Fatalf("export %s differs: %+v %v", key, res, err)
		}
		if f != ferryaws.FormatRaw {
			continue
		}
		// The raw export, downloaded, is the disk for qemu-img too.
		disktest.QemuImg(t)
		dir := t.TempDir()
		out, err := os.Create(filepath.Join(dir, "export.raw"))
		if err != nil {
			t.Fatal(err)
		}
		n, err := p.DownloadS3(t.Context(), key, out)
		out.Close()
		if err != nil || n < pt.Size {
			t.Fatalf("download %s: %d bytes, %v", key, n, err)
		}
		disktest.WriteRaw(t, pt, filepath.Join(dir, "src.raw"))
		disktest.Qemu(t, "compare", "-f", "raw", "-F", "raw", filepath.Join(dir, "src.raw"), filepath.Join(dir, "export.raw"))
	}
}

// TestVersitygwStage: the S3 staging path against a real S3 gateway: a
// disk staged as a streamOptimized VMDK reads back as the disk through
// ranged GETs and through the transfer manager.
func TestVersitygwStage(t *testing.T) {
	srv := awstest.Versitygw(t)
	p, err := ferryaws.Open(t.Context(), ferryaws.Config{Region: srv.Region, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey,
		SecretKey: ferryaws.Secret(srv.SecretKey), Bucket: "staging", MaxAttempts: 2}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.S3().CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String("staging")}); err != nil {
		t.Fatal(err)
	}
	pt := &synth.Pattern{Name: "vgw", Size: 40 << 20, Seed: 31, Data: synth.Mixed(40<<20, 31)}
	res, err := p.StageImage(t.Context(), synth.Image{P: pt}, &ferryaws.StageOptions{PartSize: s3stage.MinPartSize, Tags: map[string]string{ferryaws.TagJob: "job-v"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(res.Key, ".vmdk") || res.Parts < 1 {
		t.Fatalf("%+v", res)
	}
	img, err := p.OpenS3Image(t.Context(), res.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Info().Format != "vmdk" {
		t.Fatalf("staged format %q", img.Info().Format)
	}
	cmp, err := disk.Compare(t.Context(), synth.Image{P: pt}, img, nil)
	if err != nil || !cmp.Identical {
		t.Fatalf("staged VMDK differs: %+v %v", cmp, err)
	}
	// qemu-img reads what was staged (versitygw keeps objects as files).
	disktest.QemuImg(t)
	staged := filepath.Join(srv.Dir, "staging", res.Key)
	dir := t.TempDir()
	disktest.WriteRaw(t, pt, filepath.Join(dir, "src.raw"))
	disktest.Qemu(t, "compare", "-f", "raw", "-F", "vmdk", filepath.Join(dir, "src.raw"), staged)
	tags, err := p.S3().GetObjectTagging(t.Context(), &s3.GetObjectTaggingInput{Bucket: aws.String("staging"), Key: aws.String(res.Key)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tg := range tags.TagSet {
		got[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
	}
	if got[ferryaws.TagManaged] != "true" || got[ferryaws.TagJob] != "job-v" {
		t.Fatalf("object tags %v", got)
	}
	// A missing bucket is NotFound.
	p2, _ := ferryaws.Open(t.Context(), ferryaws.Config{Region: srv.Region, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey,
		SecretKey: ferryaws.Secret(srv.SecretKey), Bucket: "no-such-bucket", MaxAttempts: 2}, nil)
	if _, err := p2.StageImage(t.Context(), synth.Image{P: pt}, nil); !errs.Is(err, errs.NotFound) {
		t.Fatalf("missing bucket: %v", err)
	}
}

func TestLabErrors(t *testing.T) {
	l := newLab(t)
	p := l.open(t, labSecretKey)
	bad := l.open(t, "wrong/secret/key+0123456789abcdefghijkl")
	ctx := t.Context()
	tests := []struct {
		name string
		err  func() error
		want errs.Code
	}{
		{"wrong keys", func() error {
			return bad.ListVMs(ctx, provider.Filter{}, func(core.VM) error { return nil })
		}, errs.PermissionDenied},
		{"wrong keys ebs", func() error {
			_, err := bad.UploadDisk(ctx, synth.Image{P: &synth.Pattern{Size: 1 << 20, Data: []disk.Extent{{Off: 0, Len: 4096}}, Seed: 1}}, nil)
			return err
		}, errs.PermissionDenied},
		{"missing bucket", func() error {
			_, err := p.StageImage(ctx, synth.Image{P: &synth.Pattern{Size: 1 << 20}}, &ferryaws.StageOptions{Format: ferryaws.FormatRaw})
			return err
		}, errs.NotFound},
		{"unknown ami", func() error {
			_, err := p.Launch(ctx, ferryaws.LaunchSpec{AMI: "ami-0123456789abcdef0"})
			return err
		}, errs.NotFound},
		{"unknown snapshot", func() error {
			_, err := p.OpenDisk(ctx, "snap-0123456789abcdef0", "")
			return err
		}, errs.NotFound},
		{"unknown instance", func() error {
			return p.PowerVM(ctx, "i-0123456789abcdef0", provider.Start)
		}, errs.NotFound},
		{"pending snapshot", func() error {
			st, err := p.EBS().StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1)})
			if err != nil {
				return err
			}
			_, err = p.OpenDisk(ctx, core.DiskID(*st.SnapshotId), "")
			return err
		}, errs.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err()
			if errs.CodeOf(err) != tt.want {
				t.Fatalf("%v (%v), want %v", err, errs.CodeOf(err), tt.want)
			}
			if s := err.Error(); strings.Contains(s, labSecretKey) {
				t.Fatalf("error shows the secret: %s", s)
			}
		})
	}
}

func TestLabConformance(t *testing.T) {
	l := newLab(t)
	spec, content := providertest.DefaultSpec()
	// EC2 sizes come from instance types: t3.nano has 2 vCPUs and 512 MiB,
	// and EC2 chooses MAC addresses.
	spec.CPUs, spec.MemoryBytes = 2, 512<<20
	for i := range spec.NICs {
		spec.NICs[i].MAC = ""
	}
	providertest.Run(t, func(t *testing.T) provider.Provider { return l.open(t, labSecretKey) },
		providertest.WithVM(spec, content...),
		providertest.WithUnknownIDs("i-0123456789abcdef0", "snap-0123456789abcdef0", "vol-0123456789abcdef0"),
		providertest.WithPowerTimeout(time.Minute))
}

// TestLabImportCleanup: an import that fails at its last step (an unknown
// subnet) removes the snapshots and the AMI it created; a volume read
// through a temporary snapshot leaves no snapshot behind.
func TestLabImportCleanup(t *testing.T) {
	l := newLab(t)
	p := l.open(t, labSecretKey)
	ctx := t.Context()
	spec, content := providertest.DefaultSpec()
	spec.NICs = []core.NICSpec{{Name: "eth0", Network: "prod"}}
	imgs := []disk.Image{synth.Image{P: content[0]}, synth.Image{P: content[1]}}
	_, err := p.ImportVM(ctx, spec, imgs, &provider.ImportOptions{Networks: map[string]string{"prod": "subnet-0123456789abcdef0"},
		Tags: map[string]string{ferryaws.TagJob: "job-fail"}})
	if !errs.Is(err, errs.NotFound) {
		t.Fatalf("import into an unknown subnet: %v, want NotFound", err)
	}
	leftovers := func() []string {
		var out []string
		imgs, err := p.ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range imgs {
			if im.State != "deregistered" {
				out = append(out, im.ID)
			}
		}
		snaps, err := p.ListSnapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snaps {
			out = append(out, s.ID)
		}
		var vms []string
		if err := p.ListVMs(ctx, provider.Filter{}, func(vm core.VM) error { vms = append(vms, string(vm.ID)); return nil }); err != nil {
			t.Fatal(err)
		}
		return append(out, vms...)
	}
	if left := leftovers(); len(left) != 0 {
		t.Fatalf("a failed import left %v", left)
	}

	id, err := p.ImportVM(ctx, spec, imgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	var vm core.VM
	if err := p.ListVMs(ctx, provider.Filter{IDs: []core.VMID{id}}, func(v core.VM) error { vm = v; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 2 || !strings.HasPrefix(string(vm.Disks[0].ID), "vol-") || vm.Tags[ferryaws.TagManaged] != "true" {
		t.Fatalf("imported VM %+v", vm)
	}
	before, err := p.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.OpenDisk(ctx, vm.Disks[1].ID, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := disk.Compare(ctx, synth.Image{P: content[1]}, img, nil)
	if err != nil || !res.Identical {
		t.Fatalf("volume %s reads %+v, %v", vm.Disks[1].ID, res, err)
	}
	img.Close()
	after, err := p.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("temporary snapshot left: %d snapshots before, %d after", len(before), len(after))
	}
	if err := p.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(); len(left) != 0 {
		t.Fatalf("DeleteVM left %v", left)
	}
}

// TestLabClassicImage: ImportImage from staged disks gives an AMI whose
// snapshots read back as the disks; an instance launched from it exports
// to S3 with CreateInstanceExportTask and reads back as its root disk.
func TestLabClassicImage(t *testing.T) {
	l := newLab(t)
	p := l.open(t, labSecretKey)
	l.makeBucket(t, p, labBucket)
	ctx := t.Context()
	spec, content := providertest.DefaultSpec()
	ami, err := p.ImportImageS3(ctx, spec, []disk.Image{synth.Image{P: content[0]}, synth.Image{P: content[1]}},
		&ferryaws.ClassicOptions{StageOptions: ferryaws.StageOptions{Format: ferryaws.FormatVHD}})
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := p.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var im ferryaws.Image
	for _, x := range imgs {
		if x.ID == ami {
			im = x
		}
	}
	if im.ID == "" || len(im.Snapshots) != 2 || im.Tags[ferryaws.TagManaged] != "true" {
		t.Fatalf("imported image %+v", im)
	}
	for i, s := range im.Snapshots {
		checkSnapshot(t, p, s, content[i], false)
	}
	id, err := p.Launch(ctx, ferryaws.LaunchSpec{AMI: ami, InstanceType: "t3.nano", Name: "classic"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.StopInstances(ctx, true, id); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitInstance(ctx, id, "stopped"); err != nil {
		t.Fatal(err)
	}
	key, err := p.ExportInstanceS3(ctx, id, &ferryaws.ExportOptions{Format: ferryaws.FormatVMDK})
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.OpenS3Image(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	res, err := disk.Compare(ctx, synth.Image{P: content[0]}, img, nil)
	if err != nil || !res.Identical {
		t.Fatalf("instance export %s differs: %+v %v", key, res, err)
	}
}
