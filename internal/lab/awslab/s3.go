package awslab

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	hashpkg "hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

const s3Namespace = "http://s3.amazonaws.com/doc/2006-03-01/"

// Limits S3 applies.
const (
	minPartSize   = 5 << 20
	maxPartNumber = 10000
	maxPutSize    = 5 << 30
	maxXMLBody    = 1 << 20
)

// s3Error is an S3 error: code, message, HTTP status and the resource.
type s3Error struct {
	Code     string
	Message  string
	Status   int
	Bucket   string
	Key      string
	UploadID string
	Extra    []*node
}

func (e *s3Error) Error() string { return e.Code + ": " + e.Message }

func s3Err(status int, code, format string, a ...any) *s3Error {
	return &s3Error{Code: code, Message: fmt.Sprintf(format, a...), Status: status}
}

func noSuchBucket(b string) *s3Error {
	e := s3Err(http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist")
	e.Bucket = b
	return e
}

func noSuchKey(b, k string) *s3Error {
	e := s3Err(http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
	e.Bucket, e.Key = b, k
	return e
}

func noSuchUpload(id string) *s3Error {
	e := s3Err(http.StatusNotFound, "NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.")
	e.UploadID = id
	return e
}

// s3Fail writes S3's error document (headers only for HEAD).
func (s *Server) s3Fail(w http.ResponseWriter, r *http.Request, reqID string, err error) {
	var e *s3Error
	if !errors.As(err, &e) {
		var ae *authError
		if errors.As(err, &ae) {
			e = s3AuthError(ae)
		} else {
			e = s3Err(http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
			s.log.Error("s3 request", "method", r.Method, "path", r.URL.Path, "err", err)
		}
	}
	w.Header().Set("x-amz-request-id", reqID)
	if r.Method == http.MethodHead {
		w.WriteHeader(e.Status)
		return
	}
	kids := []*node{el("Code", e.Code), el("Message", e.Message)}
	kids = append(kids, e.Extra...)
	if e.Bucket != "" {
		kids = append(kids, el("BucketName", e.Bucket))
	}
	if e.Key != "" {
		kids = append(kids, el("Key", e.Key))
	}
	if e.UploadID != "" {
		kids = append(kids, el("UploadId", e.UploadID))
	}
	kids = append(kids, el("Resource", r.URL.Path), el("RequestId", reqID), el("HostId", base64.StdEncoding.EncodeToString([]byte(reqID))))
	body := document("Error", "", kids)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	io.WriteString(w, body)
}

func s3AuthError(ae *authError) *s3Error {
	switch ae.kind {
	case authMissing:
		return s3Err(http.StatusForbidden, "AccessDenied", "Access Denied")
	case authUnknownKey:
		return s3Err(http.StatusForbidden, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
	case authBadSignature:
		return s3Err(http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.")
	case authExpired:
		if strings.Contains(ae.msg, "presigned") {
			return s3Err(http.StatusForbidden, "AccessDenied", "Request has expired")
		}
		return s3Err(http.StatusForbidden, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
	case authWrongRegion:
		return s3Err(http.StatusBadRequest, "AuthorizationHeaderMalformed", "The authorization header is malformed; %s", ae.msg)
	case authUnsupported:
		return s3Err(http.StatusBadRequest, "InvalidRequest", "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.")
	case authBodyMismatch:
		return s3Err(http.StatusBadRequest, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
	}
	if strings.Contains(ae.msg, "x-amz-content-sha256") {
		return s3Err(http.StatusBadRequest, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
	}
	return s3Err(http.StatusBadRequest, "AuthorizationHeaderMalformed", "The authorization header is malformed; %s", ae.msg)
}

func s3Write(w http.ResponseWriter, reqID string, status int, root string, kids []*node) {
	body := document(root, s3Namespace, kids)
	w.Header().Set("x-amz-request-id", reqID)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func s3Time(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func quoteETag(e string) string { return `"` + e + `"` }

// validBucketName follows S3's rules for new buckets.
func validBucketName(n string) bool {
	if len(n) < 3 || len(n) > 63 || strings.Contains(n, "..") || net.ParseIP(n) != nil {
		return false
	}
	for i, c := range n {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '.' || c == '-') && i > 0 && i < len(n)-1
		if !ok {
			return false
		}
	}
	return true
}

// serveS3 serves an authenticated S3 request (path-style addressing).
func (s *Server) serveS3(w http.ResponseWriter, r *http.Request, v *verified, reqID string) {
	body, err := s.s3Body(r, v)
	if err != nil {
		s.s3Fail(w, r, reqID, err)
		return
	}
	r.Body = io.NopCloser(body)
	p := strings.TrimPrefix(r.URL.Path, "/")
	bucketName, key, _ := strings.Cut(p, "/")
	q := r.URL.Query()
	if bucketName == "" {
		if r.Method != http.MethodGet {
			s.s3Fail(w, r, reqID, s3Err(http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource."))
			return
		}
		s.listBuckets(w, reqID)
		return
	}
	if key == "" {
		err = s.serveBucket(w, r, reqID, bucketName, q)
	} else {
		err = s.serveObject(w, r, v, reqID, bucketName, key, q, body)
	}
	if err != nil {
		s.s3Fail(w, r, reqID, err)
	}
}

// s3Body unwraps a request body as its x-amz-content-sha256 says: checked
// against a SHA-256, decoded from aws-chunked, or as it is.
func (s *Server) s3Body(r *http.Request, v *verified) (*payloadReader, error) {
	pr := &payloadReader{r: r.Body, size: r.ContentLength}
	switch v.payload {
	case unsignedPayload:
	case streamingSigned, streamingSignedTrailer, streamingUnsignedTrail:
		dl := r.Header.Get("X-Amz-Decoded-Content-Length")
		n, err := strconv.ParseInt(dl, 10, 64)
		if err != nil || n < 0 {
			return nil, s3Err(http.StatusLengthRequired, "MissingContentLength", "You must provide the Content-Length HTTP header (x-amz-decoded-content-length for aws-chunked).")
		}
		cr := newChunkedReader(r.Body, v)
		pr.r, pr.size, pr.chunked = cr, n, cr
	default:
		if !validSignature(v.payload) {
			return nil, s3Err(http.StatusBadRequest, "InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-... or a SHA-256 in hex")
		}
		pr.r = newHashingReader(r.Body, v.payload)
	}
	return pr, nil
}

// payloadReader is a request body after SigV4's payload rules; trailers
// (aws-chunked) are available once it is read to the end.
type payloadReader struct {
	r       io.Reader
	size    int64 // -1 when unknown
	chunked *chunkedReader
}

func (p *payloadReader) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *payloadReader) trailer(name string) string {
	if p.chunked == nil {
		return ""
	}
	return p.chunked.Trailers.Get(name)
}

func (s *Server) listBuckets(w http.ResponseWriter, reqID string) {
	s.mu.Lock()
	var items []*node
	for _, name := range sortedBucketNames(s.buckets) {
		b := s.buckets[name]
		items = append(items, el("Bucket", el("Name", b.Name), el("CreationDate", s3Time(b.Created)), el("BucketRegion", b.Region)))
	}
	acct := s.st.Account
	s.mu.Unlock()
	s3Write(w, reqID, http.StatusOK, "ListAllMyBucketsResult", []*node{
		el("Owner", el("ID", acct), el("DisplayName", "ferry-lab")),
		el("Buckets", items),
	})
}

func sortedBucketNames(m map[string]*bucket) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// unsupportedSubresource names a bucket or object subresource the lab
// does not serve.
func unsupportedSubresource(q url.Values, known ...string) string {
	for k := range q {
		switch k {
		case "acl", "policy", "cors", "lifecycle", "versioning", "website", "logging", "notification", "replication",
			"encryption", "object-lock", "requestPayment", "accelerate", "analytics", "inventory", "metrics",
			"ownershipControls", "publicAccessBlock", "intelligent-tiering", "legal-hold", "retention", "torrent",
			"restore", "select", "versions", "attributes":
			if !slices.Contains(known, k) {
				return k
			}
		}
	}
	return ""
}

func (s *Server) serveBucket(w http.ResponseWriter, r *http.Request, reqID, name string, q url.Values) error {
	if sub := unsupportedSubresource(q); sub != "" {
		return s3Err(http.StatusNotImplemented, "NotImplemented", "The lab does not implement the bucket subresource ?%s.", sub)
	}
	switch r.Method {
	case http.MethodPut:
		return s.createBucket(w, r, reqID, name)
	case http.MethodHead:
		s.mu.Lock()
		b := s.buckets[name]
		s.mu.Unlock()
		if b == nil {
			return noSuchBucket(name)
		}
		w.Header().Set("x-amz-request-id", reqID)
		w.Header().Set("x-amz-bucket-region", b.Region)
		w.WriteHeader(http.StatusOK)
		return nil
	case http.MethodDelete:
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.buckets[name]
		if b == nil {
			return noSuchBucket(name)
		}
		if len(b.objects) > 0 || len(b.uploads) > 0 {
			e := s3Err(http.StatusConflict, "BucketNotEmpty", "The bucket you tried to delete is not empty")
			e.Bucket = name
			return e
		}
		if err := os.RemoveAll(s.bucketDir(name)); err != nil {
			return err
		}
		delete(s.buckets, name)
		w.Header().Set("x-amz-request-id", reqID)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case http.MethodGet:
		switch {
		case q.Has("location"):
			s.mu.Lock()
			b := s.buckets[name]
			s.mu.Unlock()
			if b == nil {
				return noSuchBucket(name)
			}
			loc := b.Region
			if loc == "us-east-1" {
				loc = ""
			}
			body := xml.Header + `<LocationConstraint xmlns="` + s3Namespace + `">` + loc + `</LocationConstraint>`
			w.Header().Set("x-amz-request-id", reqID)
			w.Header().Set("Content-Type", "application/xml")
			io.WriteString(w, body)
			return nil
		case q.Has("uploads"):
			return s.listUploads(w, reqID, name, q)
		}
		return s.listObjects(w, reqID, name, q)
	case http.MethodPost:
		if q.Has("delete") {
			return s.deleteObjects(w, r, reqID, name)
		}
	}
	return s3Err(http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
}

func (s *Server) createBucket(w http.ResponseWriter, r *http.Request, reqID, name string) error {
	if !validBucketName(name) {
		e := s3Err(http.StatusBadRequest, "InvalidBucketName", "The specified bucket is not valid.")
		e.Bucket = name
		return e
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxXMLBody))
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) > 0 {
		var c struct {
			LocationConstraint string `xml:"LocationConstraint"`
		}
		if err := xml.Unmarshal(body, &c); err != nil {
			return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.")
		}
		if c.LocationConstraint != "" && c.LocationConstraint != s.region || c.LocationConstraint == "" && s.region != "us-east-1" {
			return s3Err(http.StatusBadRequest, "IllegalLocationConstraintException", "The %s location constraint is incompatible for the region specific endpoint this request was sent to.", c.LocationConstraint)
		}
	} else if s.region != "us-east-1" {
		return s3Err(http.StatusBadRequest, "IllegalLocationConstraintException", "The unspecified location constraint is incompatible for the region specific endpoint this request was sent to.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buckets[name] != nil {
		if s.region == "us-east-1" {
			// us-east-1 answers success to the owner re-creating a bucket
			w.Header().Set("x-amz-request-id", reqID)
			w.Header().Set("Location", "/"+name)
			w.WriteHeader(http.StatusOK)
			return nil
		}
		e := s3Err(http.StatusConflict, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")
		e.Bucket = name
		return e
	}
	if err := s.createBucketLocked(name); err != nil {
		return err
	}
	s.log.Info("bucket created", "bucket", name)
	w.Header().Set("x-amz-request-id", reqID)
	w.Header().Set("Location", "/"+name)
	w.WriteHeader(http.StatusOK)
	return nil
}

// listObjects serves ListObjectsV2 (list-type=2) and ListObjects.
func (s *Server) listObjects(w http.ResponseWriter, reqID, name string, q url.Values) error {
	v2 := q.Get("list-type") == "2"
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	maxKeys := 1000
	if v := q.Get("max-keys"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return s3Err(http.StatusBadRequest, "InvalidArgument", "Provided max-keys not an integer or within integer range")
		}
		maxKeys = min(n, 1000)
	}
	encURL := q.Get("encoding-type") == "url"
	if et := q.Get("encoding-type"); et != "" && et != "url" {
		return s3Err(http.StatusBadRequest, "InvalidArgument", "Invalid Encoding Method specified in Request")
	}
	after := q.Get("marker")
	if delim != "" && strings.HasSuffix(after, delim) {
		after += "\xff" // a common prefix given back as the marker
	}
	if v2 {
		after = q.Get("start-after")
		if tok := q.Get("continuation-token"); tok != "" {
			b, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				return s3Err(http.StatusBadRequest, "InvalidArgument", "The continuation token provided is incorrect")
			}
			after = string(b)
		}
	}
	s.mu.Lock()
	b := s.buckets[name]
	if b == nil {
		s.mu.Unlock()
		return noSuchBucket(name)
	}
	keys := make([]string, 0, len(b.objects))
	for k := range b.objects {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	enc := func(k string) string {
		if encURL {
			return strings.ReplaceAll(url.QueryEscape(k), "%2F", "/")
		}
		return k
	}
	var contents, prefixes []*node
	seenPrefix := map[string]bool{}
	count := 0
	truncated := false
	last, lastPrefix := "", ""
	for _, k := range keys {
		cp := ""
		if delim != "" {
			if i := strings.Index(k[len(prefix):], delim); i >= 0 {
				cp = k[:len(prefix)+i+len(delim)]
			}
		}
		if cp != "" && seenPrefix[cp] {
			continue
		}
		if count >= maxKeys {
			truncated = true
			break
		}
		count++
		if cp != "" {
			seenPrefix[cp] = true
			prefixes = append(prefixes, el("CommonPrefixes", el("Prefix", enc(cp))))
			// continue after every key the prefix rolls up: no UTF-8
			// key has a 0xff byte
			last, lastPrefix = cp+"\xff", cp
			continue
		}
		o := b.objects[k]
		contents = append(contents, el("Contents",
			el("Key", enc(k)), el("LastModified", s3Time(o.Modified)), el("ETag", quoteETag(o.ETag)),
			el("Size", o.Size), el("StorageClass", "STANDARD")))
		last, lastPrefix = k, ""
	}
	s.mu.Unlock()
	kids := []*node{el("Name", name), el("Prefix", enc(prefix))}
	if v2 {
		kids = append(kids, el("KeyCount", count))
		if q.Get("continuation-token") != "" {
			kids = append(kids, el("ContinuationToken", q.Get("continuation-token")))
		}
		if q.Get("start-after") != "" {
			kids = append(kids, el("StartAfter", enc(q.Get("start-after"))))
		}
		if truncated {
			kids = append(kids, el("NextContinuationToken", base64.RawURLEncoding.EncodeToString([]byte(last))))
		}
	} else {
		kids = append(kids, el("Marker", enc(q.Get("marker"))))
		if truncated {
			next := last
			if lastPrefix != "" {
				next = lastPrefix
			}
			kids = append(kids, el("NextMarker", enc(next)))
		}
	}
	kids = append(kids, el("MaxKeys", maxKeys))
	if delim != "" {
		kids = append(kids, el("Delimiter", enc(delim)))
	}
	if encURL {
		kids = append(kids, el("EncodingType", "url"))
	}
	kids = append(kids, el("IsTruncated", truncated))
	kids = append(kids, contents...)
	kids = append(kids, prefixes...)
	s3Write(w, reqID, http.StatusOK, "ListBucketResult", kids)
	return nil
}

// deleteObjects serves POST /bucket?delete.
func (s *Server) deleteObjects(w http.ResponseWriter, r *http.Request, reqID, name string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxXMLBody+1))
	if err != nil {
		return err
	}
	if len(body) > maxXMLBody {
		return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was too large.")
	}
	if err := checkContentMD5(r, body); err != nil {
		return err
	}
	req, err := parseDeleteObjects(body)
	if err != nil {
		return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.")
	}
	s.mu.Lock()
	b := s.buckets[name]
	if b == nil {
		s.mu.Unlock()
		return noSuchBucket(name)
	}
	var kids []*node
	for _, k := range req.Keys {
		s.deleteObjectLocked(b, k)
		if !req.Quiet {
			kids = append(kids, el("Deleted", el("Key", k)))
		}
	}
	s.mu.Unlock()
	s3Write(w, reqID, http.StatusOK, "DeleteResult", kids)
	return nil
}

// deleteRequest is a DeleteObjects body.
type deleteRequest struct {
	Quiet bool
	Keys  []string
}

// parseDeleteObjects parses <Delete><Quiet/><Object><Key/></Object>...</Delete>.
func parseDeleteObjects(body []byte) (deleteRequest, error) {
	var d struct {
		XMLName xml.Name `xml:"Delete"`
		Quiet   bool     `xml:"Quiet"`
		Objects []struct {
			Key string `xml:"Key"`
		} `xml:"Object"`
	}
	if err := xml.Unmarshal(body, &d); err != nil {
		return deleteRequest{}, err
	}
	if len(d.Objects) == 0 || len(d.Objects) > 1000 {
		return deleteRequest{}, fmt.Errorf("%d objects: want 1 to 1000", len(d.Objects))
	}
	out := deleteRequest{Quiet: d.Quiet}
	for _, o := range d.Objects {
		if o.Key == "" {
			return deleteRequest{}, errors.New("an object without a key")
		}
		out.Keys = append(out.Keys, o.Key)
	}
	return out, nil
}

// parseTagging parses <Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>.
func parseTagging(body []byte) (map[string]string, error) {
	var t struct {
		XMLName xml.Name `xml:"Tagging"`
		Tags    []struct {
			Key   string `xml:"Key"`
			Value string `xml:"Value"`
		} `xml:"TagSet>Tag"`
	}
	if err := xml.Unmarshal(body, &t); err != nil {
		return nil, err
	}
	if len(t.Tags) > 10 {
		return nil, errors.New("more than 10 tags")
	}
	out := map[string]string{}
	for _, tag := range t.Tags {
		if tag.Key == "" || len(tag.Key) > 128 || len(tag.Value) > 256 {
			return nil, fmt.Errorf("tag %q: bad key or value", tag.Key)
		}
		if _, dup := out[tag.Key]; dup {
			return nil, fmt.Errorf("tag %q repeated", tag.Key)
		}
		out[tag.Key] = tag.Value
	}
	return out, nil
}

// parseTaggingHeader parses x-amz-tagging: a URL query of key=value.
func parseTaggingHeader(h string) (map[string]string, error) {
	if h == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(h)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range q {
		if k == "" || len(v) != 1 {
			return nil, fmt.Errorf("tag %q", k)
		}
		out[k] = v[0]
	}
	if len(out) > 10 {
		return nil, errors.New("more than 10 tags")
	}
	return out, nil
}

func checkContentMD5(r *http.Request, body []byte) error {
	want := r.Header.Get("Content-MD5")
	if want == "" {
		return nil
	}
	raw, err := base64.StdEncoding.DecodeString(want)
	if err != nil || len(raw) != md5.Size {
		return s3Err(http.StatusBadRequest, "InvalidDigest", "The Content-MD5 you specified was invalid.")
	}
	if sum := md5.Sum(body); !bytes.Equal(sum[:], raw) {
		return s3Err(http.StatusBadRequest, "BadDigest", "The Content-MD5 you specified did not match what we received.")
	}
	return nil
}

// checksumAlgs are the flexible checksums S3 accepts, by the names of
// their headers (x-amz-checksum-<name>).
var checksumAlgs = []string{"crc32", "crc32c", "crc64nvme", "sha1", "sha256"}

var (
	crc32cTable    = crc32.MakeTable(crc32.Castagnoli)
	crc64nvmeTable = crc64.MakeTable(bits.Reverse64(0xad93d23594c93659))
)

func newChecksum(alg string) hashpkg.Hash {
	switch alg {
	case "crc32":
		return crc32.NewIEEE()
	case "crc32c":
		return crc32.New(crc32cTable)
	case "crc64nvme":
		return crc64.New(crc64nvmeTable)
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	}
	return nil
}

// requestChecksum finds the flexible checksum a request carries or
// announces: its algorithm (lower case), and the value when it is a
// header (a trailer's value comes after the body).
func requestChecksum(r *http.Request) (alg, value string, trailer bool, err error) {
	for _, a := range checksumAlgs {
		if v := r.Header.Get("x-amz-checksum-" + a); v != "" {
			if alg != "" {
				return "", "", false, s3Err(http.StatusBadRequest, "InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
			}
			alg, value = a, v
		}
	}
	if alg != "" {
		return alg, value, false, nil
	}
	for t := range strings.SplitSeq(r.Header.Get("X-Amz-Trailer"), ",") {
		t = strings.ToLower(strings.TrimSpace(t))
		if a, ok := strings.CutPrefix(t, "x-amz-checksum-"); ok {
			if newChecksum(a) == nil {
				return "", "", false, s3Err(http.StatusBadRequest, "InvalidRequest", "Value for x-amz-trailer header is invalid.")
			}
			return a, "", true, nil
		}
	}
	if a := strings.ToLower(r.Header.Get("X-Amz-Sdk-Checksum-Algorithm")); a != "" && newChecksum(a) != nil {
		return a, "", false, nil
	}
	return "", "", false, nil
}

// received is what receiveBody stored.
type received struct {
	tmp      string
	size     int64
	md5      []byte
	alg      string // CRC32, SHA256, ... (upper case) or ""
	checksum string // base64
}

// receiveBody copies a request body into a temporary file, checking its
// length, Content-MD5, the SHA-256 SigV4 signed and any flexible checksum.
func (s *Server) receiveBody(r *http.Request, body *payloadReader, limit int64) (*received, error) {
	if body.size < 0 {
		return nil, s3Err(http.StatusLengthRequired, "MissingContentLength", "You must provide the Content-Length HTTP header.")
	}
	if body.size > limit {
		return nil, s3Err(http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
	}
	alg, want, _, err := requestChecksum(r)
	if err != nil {
		return nil, err
	}
	f, err := s.tmpFile("s3-*")
	if err != nil {
		return nil, err
	}
	rec := &received{tmp: f.Name()}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(rec.tmp)
		}
	}()
	m := md5.New()
	ws := []io.Writer{f, m}
	var ck hashpkg.Hash
	if alg != "" {
		ck = newChecksum(alg)
		ws = append(ws, ck)
	}
	n, err := io.Copy(io.MultiWriter(ws...), io.LimitReader(body, body.size+1))
	if err != nil {
		var ae *authError
		if errors.As(err, &ae) {
			return nil, ae
		}
		return nil, s3Err(http.StatusBadRequest, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header.")
	}
	if n != body.size {
		return nil, s3Err(http.StatusBadRequest, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header.")
	}
	if body.chunked != nil {
		// read the final chunk and the trailers
		if _, err := io.Copy(io.Discard, body); err != nil {
			var ae *authError
			if errors.As(err, &ae) {
				return nil, ae
			}
			return nil, s3Err(http.StatusBadRequest, "IncompleteBody", "The aws-chunked body ended early.")
		}
	}
	rec.size = n
	rec.md5 = m.Sum(nil)
	if w := r.Header.Get("Content-MD5"); w != "" {
		raw, err := base64.StdEncoding.DecodeString(w)
		if err != nil || len(raw) != md5.Size {
			return nil, s3Err(http.StatusBadRequest, "InvalidDigest", "The Content-MD5 you specified was invalid.")
		}
		if !bytes.Equal(raw, rec.md5) {
			return nil, s3Err(http.StatusBadRequest, "BadDigest", "The Content-MD5 you specified did not match what we received.")
		}
	}
	if ck != nil {
		got := base64.StdEncoding.EncodeToString(ck.Sum(nil))
		if want == "" {
			want = body.trailer("x-amz-checksum-" + alg)
		}
		if want != "" && want != got {
			return nil, s3Err(http.StatusBadRequest, "BadDigest", "The %s you specified did not match the calculated checksum.", strings.ToUpper(alg))
		}
		rec.alg, rec.checksum = strings.ToUpper(alg), got
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	ok = true
	return rec, nil
}

// objectHeaders reads the headers stored with an object.
func objectHeaders(r *http.Request) (contentType string, headers, meta map[string]string) {
	contentType = r.Header.Get("Content-Type")
	headers, meta = map[string]string{}, map[string]string{}
	for _, h := range []string{"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires"} {
		if v := r.Header.Get(h); v != "" && !(h == "Content-Encoding" && v == "aws-chunked") {
			headers[h] = strings.TrimPrefix(strings.TrimPrefix(v, "aws-chunked,"), "aws-chunked")
		}
	}
	for k, v := range r.Header {
		if m, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok && len(v) > 0 {
			meta[m] = v[0]
		}
	}
	return contentType, headers, meta
}

func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, v *verified, reqID, bucketName, key string, q url.Values, body *payloadReader) error {
	if sub := unsupportedSubresource(q); sub != "" {
		return s3Err(http.StatusNotImplemented, "NotImplemented", "The lab does not implement the object subresource ?%s.", sub)
	}
	if len(key) > 1024 {
		return s3Err(http.StatusBadRequest, "KeyTooLongError", "Your key is too long")
	}
	s.mu.Lock()
	b := s.buckets[bucketName]
	s.mu.Unlock()
	if b == nil {
		return noSuchBucket(bucketName)
	}
	uploadID := q.Get("uploadId")
	switch r.Method {
	case http.MethodPut:
		switch {
		case q.Has("tagging"):
			return s.putObjectTagging(w, r, reqID, b, key)
		case uploadID != "" || q.Has("partNumber"):
			return s.uploadPart(w, r, reqID, b, key, q, body)
		case r.Header.Get("X-Amz-Copy-Source") != "":
			return s3Err(http.StatusNotImplemented, "NotImplemented", "The lab does not implement CopyObject.")
		}
		return s.putObject(w, r, reqID, b, key, body)
	case http.MethodGet, http.MethodHead:
		switch {
		case q.Has("tagging") && r.Method == http.MethodGet:
			return s.getObjectTagging(w, reqID, b, key)
		case uploadID != "" && r.Method == http.MethodGet:
			return s.listParts(w, reqID, b, key, uploadID, q)
		}
		return s.getObject(w, r, reqID, b, key, q)
	case http.MethodDelete:
		switch {
		case q.Has("tagging"):
			s.mu.Lock()
			defer s.mu.Unlock()
			o := b.objects[key]
			if o == nil {
				return noSuchKey(b.Name, key)
			}
			o.Tags = nil
			if err := s.writeObjectMeta(b, o); err != nil {
				return err
			}
			w.Header().Set("x-amz-request-id", reqID)
			w.WriteHeader(http.StatusNoContent)
			return nil
		case uploadID != "":
			return s.abortUpload(w, reqID, b, key, uploadID)
		}
		s.mu.Lock()
		s.deleteObjectLocked(b, key)
		s.mu.Unlock()
		w.Header().Set("x-amz-request-id", reqID)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case http.MethodPost:
		switch {
		case q.Has("uploads"):
			return s.createUpload(w, r, reqID, b, key)
		case uploadID != "":
			return s.completeUpload(w, r, reqID, b, key, uploadID)
		}
	}
	return s3Err(http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
}

func (s *Server) putObject(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key string, body *payloadReader) error {
	tags, err := parseTaggingHeader(r.Header.Get("X-Amz-Tagging"))
	if err != nil {
		return s3Err(http.StatusBadRequest, "InvalidArgument", "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.")
	}
	rec, err := s.receiveBody(r, body, maxPutSize)
	if err != nil {
		return err
	}
	defer os.Remove(rec.tmp)
	ct, headers, meta := objectHeaders(r)
	if ct == "" {
		ct = "binary/octet-stream"
	}
	o := &object{Key: key, Size: rec.size, ETag: hex.EncodeToString(rec.md5), Modified: s.now().UTC(), ContentType: ct,
		Headers: headers, Meta: meta, Tags: tags, ChecksumAlg: rec.alg, Checksum: rec.checksum}
	s.mu.Lock()
	if s.buckets[b.Name] != b {
		s.mu.Unlock()
		return noSuchBucket(b.Name)
	}
	err = s.commitObjectLocked(b, o, rec.tmp)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	w.Header().Set("x-amz-request-id", reqID)
	w.Header().Set("ETag", quoteETag(o.ETag))
	if o.ChecksumAlg != "" {
		w.Header().Set("x-amz-checksum-"+strings.ToLower(o.ChecksumAlg), o.Checksum)
		w.Header().Set("x-amz-checksum-type", "FULL_OBJECT")
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// byteRange parses a Range header against size: [start, end).
func byteRange(h string, size int64) (int64, int64, error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, errors.New("unsupported range")
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, errors.New("malformed range")
	}
	switch {
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, errors.New("malformed range")
		}
		if size == 0 {
			return 0, 0, errRangeNotSatisfiable
		}
		return max(size-n, 0), size, nil
	default:
		start, err := strconv.ParseInt(a, 10, 64)
		if err != nil || start < 0 {
			return 0, 0, errors.New("malformed range")
		}
		end := size - 1
		if b != "" {
			if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
				return 0, 0, errors.New("malformed range")
			}
		}
		if start >= size {
			return 0, 0, errRangeNotSatisfiable
		}
		return start, min(end+1, size), nil
	}
}

var errRangeNotSatisfiable = errors.New("range not satisfiable")

func (s *Server) getObject(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key string, q url.Values) error {
	s.mu.Lock()
	o := b.objects[key]
	var oc object
	if o != nil {
		oc = *o
	}
	s.mu.Unlock()
	if o == nil {
		return noSuchKey(b.Name, key)
	}
	if m := r.Header.Get("If-Match"); m != "" && strings.Trim(m, `"`) != oc.ETag && m != "*" {
		return s3Err(http.StatusPreconditionFailed, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
	}
	if m := r.Header.Get("If-None-Match"); m != "" && (strings.Trim(m, `"`) == oc.ETag || m == "*") {
		w.Header().Set("ETag", quoteETag(oc.ETag))
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	f, err := os.Open(s.dataPath(b.Name, oc.Data))
	if err != nil {
		return noSuchKey(b.Name, key) // replaced or deleted meanwhile
	}
	defer f.Close()
	h := w.Header()
	h.Set("x-amz-request-id", reqID)
	h.Set("ETag", quoteETag(oc.ETag))
	h.Set("Last-Modified", oc.Modified.UTC().Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", oc.ContentType)
	for k, v := range oc.Headers {
		h.Set(k, v)
	}
	for k, v := range oc.Meta {
		h.Set("x-amz-meta-"+k, v)
	}
	if len(oc.Tags) > 0 {
		h.Set("x-amz-tagging-count", strconv.Itoa(len(oc.Tags)))
	}
	if len(oc.PartSizes) > 0 {
		h.Set("x-amz-mp-parts-count", strconv.Itoa(len(oc.PartSizes)))
	}
	start, end := int64(0), oc.Size
	status := http.StatusOK
	switch {
	case q.Get("partNumber") != "":
		n, err := strconv.Atoi(q.Get("partNumber"))
		if err != nil || n < 1 || n > maxPartNumber {
			return s3Err(http.StatusBadRequest, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
		}
		sizes := oc.PartSizes
		if len(sizes) == 0 {
			sizes = []int64{oc.Size}
		}
		if n > len(sizes) {
			return s3Err(http.StatusRequestedRangeNotSatisfiable, "InvalidPartNumber", "The requested partnumber is not satisfiable")
		}
		for _, sz := range sizes[:n-1] {
			start += sz
		}
		end = start + sizes[n-1]
		if len(oc.PartSizes) > 0 {
			status = http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, oc.Size))
		}
	case r.Header.Get("Range") != "":
		a, z, err := byteRange(r.Header.Get("Range"), oc.Size)
		switch {
		case errors.Is(err, errRangeNotSatisfiable):
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", oc.Size))
			e := s3Err(http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "The requested range is not satisfiable")
			e.Extra = []*node{el("RangeRequested", r.Header.Get("Range")), el("ActualObjectSize", oc.Size)}
			return e
		case err == nil:
			start, end, status = a, z, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, oc.Size))
		}
		// an unparsable Range is ignored, as S3 does
	}
	if status == http.StatusOK && oc.ChecksumAlg != "" && strings.EqualFold(r.Header.Get("X-Amz-Checksum-Mode"), "ENABLED") {
		h.Set("x-amz-checksum-"+strings.ToLower(oc.ChecksumAlg), oc.Checksum)
		h.Set("x-amz-checksum-type", "FULL_OBJECT")
	}
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	if _, err := io.Copy(w, io.NewSectionReader(f, start, end-start)); err != nil {
		s.log.Debug("s3 get: client went away", "bucket", b.Name, "key", key, "err", err)
	}
	return nil
}

func (s *Server) putObjectTagging(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxXMLBody))
	if err != nil {
		return err
	}
	tags, err := parseTagging(body)
	if err != nil {
		return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := b.objects[key]
	if o == nil {
		return noSuchKey(b.Name, key)
	}
	o.Tags = tags
	if err := s.writeObjectMeta(b, o); err != nil {
		return err
	}
	w.Header().Set("x-amz-request-id", reqID)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) getObjectTagging(w http.ResponseWriter, reqID string, b *bucket, key string) error {
	s.mu.Lock()
	o := b.objects[key]
	var tags []*node
	if o != nil {
		for _, k := range sortedKeys(o.Tags) {
			tags = append(tags, el("Tag", el("Key", k), el("Value", o.Tags[k])))
		}
	}
	s.mu.Unlock()
	if o == nil {
		return noSuchKey(b.Name, key)
	}
	s3Write(w, reqID, http.StatusOK, "Tagging", []*node{el("TagSet", tags)})
	return nil
}
