package awslab

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// AWS's published SigV4 examples (S3 API reference, "Authenticating
// Requests: Using the Authorization Header" and "Transferring Payload in
// Multiple Chunks"): their keys, time and signatures.
const (
	exampleAccessKey = "AKIAIOSFODNN7EXAMPLE"
	exampleSecretKey = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

var exampleTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)

func exampleServer(t *testing.T) *Server {
	t.Helper()
	return &Server{region: "us-east-1", accessKey: exampleAccessKey, secretKey: Secret(exampleSecretKey), log: slog.New(slog.DiscardHandler)}
}

func TestSigV4Examples(t *testing.T) {
	s := exampleServer(t)
	// GET Object with a Range, signed in the header.
	r := httptest.NewRequest(http.MethodGet, "http://examplebucket.s3.amazonaws.com/test.txt", nil)
	r.Header.Set("Range", "bytes=0-9")
	r.Header.Set("x-amz-content-sha256", emptySHA256)
	r.Header.Set("x-amz-date", "20130524T000000Z")
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
	a, ok, err := requestAuth(r)
	if !ok || err != nil {
		t.Fatalf("parse: %v %v", ok, err)
	}
	if _, err := s.verify(r, a, exampleTime); err != nil {
		t.Fatalf("GET example: %v", err)
	}
	// the same request a day later is refused
	if _, err := s.verify(r, a, exampleTime.Add(24*time.Hour)); err == nil || err.(*authError).kind != authExpired {
		t.Fatalf("a day later: %v, want expired", err)
	}

	// PUT Object in 64 KiB chunks with chunk signatures.
	data := bytes.Repeat([]byte{'a'}, 65536+1024)
	var body bytes.Buffer
	sigs := []string{
		"ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
		"0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
		"b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
	}
	body.WriteString("10000;chunk-signature=" + sigs[0] + "\r\n")
	body.Write(data[:65536])
	body.WriteString("\r\n400;chunk-signature=" + sigs[1] + "\r\n")
	body.Write(data[65536:])
	body.WriteString("\r\n0;chunk-signature=" + sigs[2] + "\r\n\r\n")
	put := func(tamper func([]byte)) (*http.Request, []byte) {
		b := bytes.Clone(body.Bytes())
		if tamper != nil {
			tamper(b)
		}
		r := httptest.NewRequest(http.MethodPut, "http://s3.amazonaws.com/examplebucket/chunkObject.txt", bytes.NewReader(b))
		h := r.Header
		h.Set("x-amz-date", "20130524T000000Z")
		h.Set("x-amz-storage-class", "REDUCED_REDUNDANCY")
		h.Set("Content-Encoding", "aws-chunked")
		h.Set("x-amz-decoded-content-length", "66560")
		h.Set("Content-Length", "66824")
		h.Set("x-amz-content-sha256", streamingSigned)
		h.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
		return r, b
	}
	if body.Len() != 66824 {
		t.Fatalf("example body is %d bytes, want 66824", body.Len())
	}
	tests := []struct {
		name    string
		tamper  func([]byte)
		wantErr bool
	}{
		{"as published", nil, false},
		{"data changed", func(b []byte) { b[200] = 'b' }, true},
		{"chunk signature changed", func(b []byte) { b[bytes.Index(b, []byte(sigs[1]))] = 'f' }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := put(tt.tamper)
			a, _, err := requestAuth(r)
			if err != nil {
				t.Fatal(err)
			}
			v, err := s.verify(r, a, exampleTime)
			if err != nil {
				t.Fatalf("seed signature: %v", err)
			}
			got, err := io.ReadAll(newChunkedReader(r.Body, v))
			if tt.wantErr {
				if err == nil {
					t.Fatal("tampered body accepted")
				}
				return
			}
			if err != nil {
				t.Fatalf("chunks: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("decoded %d bytes, want the %d sent", len(got), len(data))
			}
		})
	}
}

func TestParseAuthorization(t *testing.T) {
	good := "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
	tests := []struct {
		name, header, wantErr string
	}{
		{"good", good, ""},
		{"no spaces", strings.ReplaceAll(good, ", ", ","), ""},
		{"sigv2", "AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", "only AWS4-HMAC-SHA256"},
		{"short credential", strings.Replace(good, "/us-east-1", "", 1), "want KEY/DATE/REGION/SERVICE"},
		{"bad date", strings.Replace(good, "20150830", "2015083x", 1), "is not YYYYMMDD"},
		{"bad terminator", strings.Replace(good, "aws4_request", "aws5_request", 1), "not aws4_request"},
		{"unsorted headers", strings.Replace(good, "content-type;host", "host;content-type", 1), "not sorted"},
		{"upper-case header", strings.Replace(good, "content-type", "Content-Type", 1), "lower-case"},
		{"short signature", strings.Replace(good, "5d672d79", "5d67", 1), "64 lower-case hex"},
		{"no signature", good[:strings.Index(good, ", Signature")], "no Signature"},
		{"repeated", good + ", Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7", "repeated"},
		{"unknown component", good + ", Foo=bar", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := parseAuthorization(tt.header)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if a.Credential.Service != "iam" || len(a.SignedHeaders) != 3 || a.Signature[:8] != "5d672d79" {
					t.Fatalf("parsed %+v", a)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// tamperRT changes a request after it was signed: the body, or nothing.
type tamperRT struct{ body bool }

func (t tamperRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.body && r.Body != nil && r.ContentLength > 0 {
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		b[len(b)-1] ^= 0x01
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestSigV4Rejects checks that each service refuses a wrong secret, an
// unknown access key and a body changed after signing, with its own error.
func TestSigV4Rejects(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	l.makeBucket(ctx, "auth")
	type call func(ctx context.Context, e *ec2.Client, b *ebs.Client, s *s3.Client) error
	ec2Call := func(ctx context.Context, e *ec2.Client, _ *ebs.Client, _ *s3.Client) error {
		_, err := e.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{})
		return err
	}
	ebsCall := func(ctx context.Context, _ *ec2.Client, b *ebs.Client, _ *s3.Client) error {
		_, err := b.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1), Description: aws.String("auth")})
		return err
	}
	s3Call := func(ctx context.Context, _ *ec2.Client, _ *ebs.Client, s *s3.Client) error {
		_, err := s.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("auth"), Key: aws.String("k"), Body: bytes.NewReader([]byte("payload"))})
		return err
	}
	tests := []struct {
		name     string
		ak, sk   string
		tamper   bool
		call     call
		wantCode string
	}{
		{"ec2 ok", testAccessKey, testSecretKey, false, ec2Call, ""},
		{"ec2 wrong secret", testAccessKey, "wrong", false, ec2Call, "AuthFailure"},
		{"ec2 unknown key", "AKIAUNKNOWNKEY000000", testSecretKey, false, ec2Call, "AuthFailure"},
		{"ec2 tampered body", testAccessKey, testSecretKey, true, ec2Call, "AuthFailure"},
		{"ebs ok", testAccessKey, testSecretKey, false, ebsCall, ""},
		{"ebs wrong secret", testAccessKey, "wrong", false, ebsCall, "InvalidSignatureException"},
		{"ebs unknown key", "AKIAUNKNOWNKEY000000", testSecretKey, false, ebsCall, "UnrecognizedClientException"},
		{"ebs tampered body", testAccessKey, testSecretKey, true, ebsCall, "InvalidSignatureException"},
		{"s3 ok", testAccessKey, testSecretKey, false, s3Call, ""},
		{"s3 wrong secret", testAccessKey, "wrong", false, s3Call, "SignatureDoesNotMatch"},
		{"s3 unknown key", "AKIAUNKNOWNKEY000000", testSecretKey, false, s3Call, "InvalidAccessKeyId"},
		{"s3 tampered body", testAccessKey, testSecretKey, true, s3Call, "XAmzContentSHA256Mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, b, s := clients(l.hs.URL, tt.ak, tt.sk, tamperRT{body: tt.tamper})
			wantCode(t, tt.call(ctx, e, b, s), tt.wantCode)
		})
	}
	// the tampered object was not stored
	if _, err := l.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String("auth"), Key: aws.String("k")}); err != nil {
		t.Fatalf("the good PUT: %v", err)
	}
	// unsigned requests
	for _, tt := range []struct {
		name, method, path, ctype, body, wantStatus, wantBody string
	}{
		{"ec2", "POST", "/", "application/x-www-form-urlencoded", "Action=DescribeInstances&Version=2016-11-15", "401", "<Code>MissingAuthenticationToken</Code>"},
		{"ebs", "POST", "/snapshots", "application/json", `{"VolumeSize":1}`, "403", ""},
		{"s3", "GET", "/auth", "", "", "403", "<Code>AccessDenied</Code>"},
	} {
		t.Run("unsigned "+tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, tt.method, l.hs.URL+tt.path, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Status[:3] != tt.wantStatus || !strings.Contains(string(b), tt.wantBody) {
				t.Fatalf("%s %s", resp.Status, b)
			}
			if tt.name == "ebs" && resp.Header.Get("x-amzn-ErrorType") != "MissingAuthenticationTokenException" {
				t.Fatalf("error type %q", resp.Header.Get("x-amzn-ErrorType"))
			}
		})
	}
}
