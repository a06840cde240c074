package awslab

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

func TestS3Objects(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	b := aws.String("objects")
	_, err := l.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("Bad_Name")})
	wantCode(t, err, "InvalidBucketName")
	_, err = l.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: b})
	wantCode(t, err, "NotFound")
	l.makeBucket(ctx, "objects")
	must[*s3.HeadBucketOutput](t)(l.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: b}))
	if loc := must[*s3.GetBucketLocationOutput](t)(l.s3.GetBucketLocation(ctx, &s3.GetBucketLocationInput{Bucket: b})); loc.LocationConstraint != "" {
		t.Fatalf("location %q, want \"\" for us-east-1", loc.LocationConstraint)
	}
	_, err = l.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String("none")})
	wantCode(t, err, "NotFound")
	_, err = l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("nobucket"), Key: aws.String("k"), Body: strings.NewReader("x")})
	wantCode(t, err, "NoSuchBucket")

	data := pattern(300<<10, 3)
	put := must[*s3.PutObjectOutput](t)(l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin"), Body: bytes.NewReader(data),
		ContentType: aws.String("application/x-test"), Metadata: map[string]string{"origin": "ferry"}, Tagging: aws.String("ferry%3Ajob=j1&kind=disk"),
		ChecksumAlgorithm: s3types.ChecksumAlgorithmCrc32}))
	sum := md5.Sum(data)
	crc := crc32.ChecksumIEEE(data)
	wantCRC := base64.StdEncoding.EncodeToString([]byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)})
	if *put.ETag != `"`+hexString(sum[:])+`"` || aws.ToString(put.ChecksumCRC32) != wantCRC {
		t.Fatalf("put: etag %s crc %s", *put.ETag, aws.ToString(put.ChecksumCRC32))
	}
	head := must[*s3.HeadObjectOutput](t)(l.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin")}))
	if *head.ContentLength != int64(len(data)) || *head.ContentType != "application/x-test" || head.Metadata["origin"] != "ferry" || *head.TagCount != 2 {
		t.Fatalf("head %+v", head)
	}
	// whole, with the checksum checked by the SDK, and ranges
	get := must[*s3.GetObjectOutput](t)(l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin"), ChecksumMode: s3types.ChecksumModeEnabled}))
	got, err := io.ReadAll(get.Body)
	get.Body.Close()
	if err != nil || !bytes.Equal(got, data) || aws.ToString(get.ChecksumCRC32) != wantCRC {
		t.Fatalf("get: %v, %d bytes", err, len(got))
	}
	for _, r := range []struct {
		rng        string
		start, end int
	}{{"bytes=1000-1999", 1000, 2000}, {"bytes=307000-", 307000, len(data)}, {"bytes=-100", len(data) - 100, len(data)}, {"bytes=0-99999999", 0, len(data)}} {
		get := must[*s3.GetObjectOutput](t)(l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin"), Range: aws.String(r.rng)}))
		got, _ := io.ReadAll(get.Body)
		get.Body.Close()
		if !bytes.Equal(got, data[r.start:r.end]) || !strings.HasPrefix(*get.ContentRange, "bytes ") {
			t.Fatalf("range %s: %d bytes, content-range %s", r.rng, len(got), aws.ToString(get.ContentRange))
		}
	}
	_, err = l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin"), Range: aws.String("bytes=999999-")})
	wantCode(t, err, "InvalidRange")
	_, err = l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("nope")})
	wantCode(t, err, "NoSuchKey")
	_, err = l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("dir/a file+name.bin"), IfMatch: aws.String(`"0000"`)})
	wantCode(t, err, "PreconditionFailed")
	// a wrong checksum or Content-MD5 is refused
	_, err = l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String("bad"), Body: bytes.NewReader(data), ChecksumCRC32: aws.String("AAAAAA==")})
	wantCode(t, err, "BadDigest")
	_, err = l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String("bad"), Body: bytes.NewReader(data), ContentMD5: aws.String(base64.StdEncoding.EncodeToString(make([]byte, 16)))})
	wantCode(t, err, "BadDigest")

	// tagging
	tg := must[*s3.GetObjectTaggingOutput](t)(l.s3.GetObjectTagging(ctx, &s3.GetObjectTaggingInput{Bucket: b, Key: aws.String("dir/a file+name.bin")}))
	if len(tg.TagSet) != 2 || *tg.TagSet[0].Key != "ferry:job" || *tg.TagSet[0].Value != "j1" {
		t.Fatalf("tags %+v", tg.TagSet)
	}
	must[*s3.PutObjectTaggingOutput](t)(l.s3.PutObjectTagging(ctx, &s3.PutObjectTaggingInput{Bucket: b, Key: aws.String("dir/a file+name.bin"),
		Tagging: &s3types.Tagging{TagSet: []s3types.Tag{{Key: aws.String("only"), Value: aws.String("one")}}}}))
	tg = must[*s3.GetObjectTaggingOutput](t)(l.s3.GetObjectTagging(ctx, &s3.GetObjectTaggingInput{Bucket: b, Key: aws.String("dir/a file+name.bin")}))
	if len(tg.TagSet) != 1 || *tg.TagSet[0].Key != "only" {
		t.Fatalf("tags after put %+v", tg.TagSet)
	}

	// listing: prefixes, delimiters, pages
	for _, k := range []string{"dir/b", "dir/sub/c", "dir/sub/d", "top", "zzz/e"} {
		must[*s3.PutObjectOutput](t)(l.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String(k), Body: strings.NewReader(k)}))
	}
	list := must[*s3.ListObjectsV2Output](t)(l.s3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: b, Prefix: aws.String("dir/"), Delimiter: aws.String("/")}))
	if len(list.Contents) != 2 || len(list.CommonPrefixes) != 1 || *list.CommonPrefixes[0].Prefix != "dir/sub/" || *list.KeyCount != 3 {
		t.Fatalf("list dir/: %+v %+v", list.Contents, list.CommonPrefixes)
	}
	var keys []string
	p := s3.NewListObjectsV2Paginator(l.s3, &s3.ListObjectsV2Input{Bucket: b, MaxKeys: aws.Int32(2)})
	pages := 0
	for p.HasMorePages() {
		pg := must[*s3.ListObjectsV2Output](t)(p.NextPage(ctx))
		pages++
		for _, o := range pg.Contents {
			keys = append(keys, *o.Key)
		}
	}
	if pages != 3 || strings.Join(keys, ",") != "dir/a file+name.bin,dir/b,dir/sub/c,dir/sub/d,top,zzz/e" {
		t.Fatalf("%d pages: %v", pages, keys)
	}
	// one entry a page, common prefixes included, in both list versions
	var entries []string
	p = s3.NewListObjectsV2Paginator(l.s3, &s3.ListObjectsV2Input{Bucket: b, MaxKeys: aws.Int32(1), Delimiter: aws.String("/")})
	for p.HasMorePages() {
		pg := must[*s3.ListObjectsV2Output](t)(p.NextPage(ctx))
		for _, o := range pg.Contents {
			entries = append(entries, *o.Key)
		}
		for _, cp := range pg.CommonPrefixes {
			entries = append(entries, *cp.Prefix)
		}
	}
	var marker *string
	for {
		pg := must[*s3.ListObjectsOutput](t)(l.s3.ListObjects(ctx, &s3.ListObjectsInput{Bucket: b, MaxKeys: aws.Int32(1), Delimiter: aws.String("/"), Marker: marker}))
		for _, o := range pg.Contents {
			entries = append(entries, *o.Key)
		}
		for _, cp := range pg.CommonPrefixes {
			entries = append(entries, *cp.Prefix)
		}
		if !*pg.IsTruncated {
			break
		}
		marker = pg.NextMarker
	}
	if strings.Join(entries, ",") != "dir/,top,zzz/,dir/,top,zzz/" {
		t.Fatalf("delimited pages: %v", entries)
	}
	_, err = l.s3.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: b})
	wantCode(t, err, "BucketNotEmpty")
	del := must[*s3.DeleteObjectsOutput](t)(l.s3.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: b, Delete: &s3types.Delete{Objects: []s3types.ObjectIdentifier{
		{Key: aws.String("dir/b")}, {Key: aws.String("top")}, {Key: aws.String("never-was")}}}}))
	if len(del.Deleted) != 3 {
		t.Fatalf("delete objects %+v", del)
	}
	must[*s3.DeleteObjectOutput](t)(l.s3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: b, Key: aws.String("zzz/e")}))
	list = must[*s3.ListObjectsV2Output](t)(l.s3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: b}))
	if *list.KeyCount != 3 {
		t.Fatalf("%d keys left", *list.KeyCount)
	}
	// a presigned GET, with no credentials of its own
	ps, err := s3.NewPresignClient(l.s3).PresignGetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("dir/sub/c")})
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(ps.URL, "X-Amz-Signature=") + len("X-Amz-Signature=")
	flipped := ps.URL[:i] + map[bool]string{true: "1", false: "0"}[ps.URL[i] == '0'] + ps.URL[i+1:]
	for _, u := range []string{ps.URL, flipped} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if u == ps.URL && (resp.StatusCode != 200 || string(body) != "dir/sub/c") || u != ps.URL && resp.StatusCode != 403 {
			t.Fatalf("presigned GET: %s %s", resp.Status, body)
		}
	}
	buckets := must[*s3.ListBucketsOutput](t)(l.s3.ListBuckets(ctx, &s3.ListBucketsInput{}))
	if len(buckets.Buckets) != 1 || *buckets.Buckets[0].Name != "objects" {
		t.Fatalf("buckets %+v", buckets.Buckets)
	}
}

func TestS3Multipart(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	b := aws.String("mpu")
	l.makeBucket(ctx, "mpu")
	start := func(key string) string {
		out := must[*s3.CreateMultipartUploadOutput](t)(l.s3.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: b, Key: aws.String(key)}))
		return *out.UploadId
	}
	part := func(key, id string, n int32, data []byte) s3types.CompletedPart {
		out := must[*s3.UploadPartOutput](t)(l.s3.UploadPart(ctx, &s3.UploadPartInput{Bucket: b, Key: aws.String(key), UploadId: aws.String(id), PartNumber: aws.Int32(n), Body: bytes.NewReader(data)}))
		return s3types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag}
	}
	big, small := pattern(5<<20, 1), pattern(1<<20, 2)

	// parts under 5 MiB are refused at completion, except the last
	id := start("small")
	p1, p2 := part("small", id, 1, small), part("small", id, 2, small)
	_, err := l.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id),
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{p1, p2}}})
	wantCode(t, err, "EntityTooSmall")
	// a part whose ETag does not match
	bad := p2
	bad.ETag = aws.String(`"00000000000000000000000000000000"`)
	_, err = l.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id),
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{bad}}})
	wantCode(t, err, "InvalidPart")
	_, err = l.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id),
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{p2, p1}}})
	wantCode(t, err, "InvalidPartOrder")
	ups := must[*s3.ListMultipartUploadsOutput](t)(l.s3.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: b}))
	if len(ups.Uploads) != 1 || *ups.Uploads[0].UploadId != id {
		t.Fatalf("uploads %+v", ups.Uploads)
	}
	must[*s3.AbortMultipartUploadOutput](t)(l.s3.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id)}))
	_, err = l.s3.UploadPart(ctx, &s3.UploadPartInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id), PartNumber: aws.Int32(3), Body: bytes.NewReader(small)})
	wantCode(t, err, "NoSuchUpload")
	_, err = l.s3.ListParts(ctx, &s3.ListPartsInput{Bucket: b, Key: aws.String("small"), UploadId: aws.String(id)})
	wantCode(t, err, "NoSuchUpload")

	// a good upload: a part replaced, listed, completed
	id = start("big")
	part("big", id, 1, small) // replaced below
	q1, q2 := part("big", id, 1, big), part("big", id, 2, small)
	parts := must[*s3.ListPartsOutput](t)(l.s3.ListParts(ctx, &s3.ListPartsInput{Bucket: b, Key: aws.String("big"), UploadId: aws.String(id)}))
	if len(parts.Parts) != 2 || *parts.Parts[0].Size != 5<<20 || *parts.Parts[0].ETag != *q1.ETag {
		t.Fatalf("parts %+v", parts.Parts)
	}
	done := must[*s3.CompleteMultipartUploadOutput](t)(l.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: b, Key: aws.String("big"), UploadId: aws.String(id),
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: []s3types.CompletedPart{q1, q2}}}))
	h := md5.New()
	for _, d := range [][]byte{big, small} {
		s := md5.Sum(d)
		h.Write(s[:])
	}
	if *done.ETag != `"`+hexString(h.Sum(nil))+`-2"` {
		t.Fatalf("etag %s", *done.ETag)
	}
	get := must[*s3.GetObjectOutput](t)(l.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String("big"), PartNumber: aws.Int32(2)}))
	got, _ := io.ReadAll(get.Body)
	get.Body.Close()
	if !bytes.Equal(got, small) || *get.PartsCount != 2 {
		t.Fatalf("part 2 of the object: %d bytes", len(got))
	}
}

// TestS3ChunkedTLS drives S3 over TLS, where the SDK streams uploads as
// aws-chunked bodies with a trailing checksum (STREAMING-UNSIGNED-
// PAYLOAD-TRAILER).
func TestS3ChunkedTLS(t *testing.T) {
	l := newTestLab(t, "")
	ctx := t.Context()
	hs := httptest.NewTLSServer(l.s.Handler())
	t.Cleanup(hs.Close)
	var saw []string
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		saw = append(saw, r.Header.Get("X-Amz-Content-Sha256"))
		return hs.Client().Transport.RoundTrip(r)
	})
	c := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(hs.URL), UsePathStyle: true, HTTPClient: &http.Client{Transport: rt},
		Credentials: credentials.NewStaticCredentialsProvider(testAccessKey, testSecretKey, ""), RetryMaxAttempts: 1})
	must[*s3.CreateBucketOutput](t)(c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("tls")}))
	data := pattern(200<<10, 5)
	must[*s3.PutObjectOutput](t)(c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("tls"), Key: aws.String("k"), Body: bytes.NewReader(data), ChecksumAlgorithm: s3types.ChecksumAlgorithmCrc32c}))
	if saw[len(saw)-1] != streamingUnsignedTrail {
		t.Fatalf("the SDK sent x-amz-content-sha256 %q; this test wants the aws-chunked trailer variant", saw[len(saw)-1])
	}
	get := must[*s3.GetObjectOutput](t)(c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("tls"), Key: aws.String("k"), ChecksumMode: s3types.ChecksumModeEnabled}))
	got, _ := io.ReadAll(get.Body)
	get.Body.Close()
	if !bytes.Equal(got, data) || get.ChecksumCRC32C == nil {
		t.Fatalf("read back %d bytes, crc32c %v", len(got), get.ChecksumCRC32C)
	}
	// a checksum trailer that does not match the body is refused
	rt2 := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && r.Body != nil {
			b, _ := io.ReadAll(r.Body)
			if i := bytes.Index(b, []byte("x-amz-checksum-crc32c:")); i >= 0 {
				copy(b[i+len("x-amz-checksum-crc32c:"):], "AAAAAA==")
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		return hs.Client().Transport.RoundTrip(r)
	})
	c2 := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(hs.URL), UsePathStyle: true, HTTPClient: &http.Client{Transport: rt2},
		Credentials: credentials.NewStaticCredentialsProvider(testAccessKey, testSecretKey, ""), RetryMaxAttempts: 1})
	_, err := c2.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("tls"), Key: aws.String("k2"), Body: bytes.NewReader(data), ChecksumAlgorithm: s3types.ChecksumAlgorithmCrc32c})
	wantCode(t, err, "BadDigest")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
