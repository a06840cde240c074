package awslab

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Signature Version 4, as AWS documents it: a canonical request (method,
// URI, query, signed headers, payload hash), a string to sign (algorithm,
// time, credential scope, hash of the canonical request) and a signing key
// derived from the secret by HMAC-SHA256 over date, region, service and
// "aws4_request".

const (
	sigAlgorithm    = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	scopeDateFormat = "20060102"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	emptySHA256     = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	// maxSkew is how far a request's time may be from the lab's.
	maxSkew = 15 * time.Minute
)

// authKind classifies why a request was not authenticated; each service
// reports each kind with its own error code.
type authKind int

const (
	authMissing      authKind = iota + 1 // no signature at all
	authMalformed                        // a signature that does not parse
	authUnknownKey                       // an access key the lab does not know
	authBadSignature                     // the signature does not match
	authExpired                          // too old, too new, or a presigned URL past its expiry
	authWrongRegion                      // scoped to another region
	authUnsupported                      // another algorithm (SigV2, SigV4a)
	authBodyMismatch                     // x-amz-content-sha256 differs from the body
)

type authError struct {
	kind authKind
	msg  string
}

func (e *authError) Error() string { return e.msg }

func authErr(kind authKind, format string, a ...any) *authError {
	return &authError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// credentialScope is the Credential field: key/date/region/service/aws4_request.
type credentialScope struct {
	AccessKey, Date, Region, Service, Terminator string
}

func (c credentialScope) scope() string {
	return c.Date + "/" + c.Region + "/" + c.Service + "/" + c.Terminator
}

// sigV4Auth is a parsed Authorization header or presigned query.
type sigV4Auth struct {
	Credential    credentialScope
	SignedHeaders []string
	Signature     string
	// Presigned: from the query string; AmzDate and Expires come with it.
	Presigned bool
	AmzDate   string
	Expires   int64
}

// parseCredential parses key/date/region/service/aws4_request.
func parseCredential(v string) (credentialScope, error) {
	parts := strings.Split(v, "/")
	if len(parts) != 5 {
		return credentialScope{}, fmt.Errorf("credential %q: want KEY/DATE/REGION/SERVICE/aws4_request", v)
	}
	c := credentialScope{parts[0], parts[1], parts[2], parts[3], parts[4]}
	if c.AccessKey == "" || c.Region == "" || c.Service == "" {
		return c, fmt.Errorf("credential %q: empty part", v)
	}
	if _, err := time.Parse(scopeDateFormat, c.Date); err != nil || len(c.Date) != 8 {
		return c, fmt.Errorf("credential %q: date %q is not YYYYMMDD", v, c.Date)
	}
	if c.Terminator != "aws4_request" {
		return c, fmt.Errorf("credential %q: scope ends in %q, not aws4_request", v, c.Terminator)
	}
	return c, nil
}

// parseSignedHeaders parses "host;x-amz-date": lower case names, sorted,
// separated by semicolons.
func parseSignedHeaders(v string) ([]string, error) {
	if v == "" {
		return nil, errors.New("no signed headers")
	}
	hs := strings.Split(v, ";")
	for i, h := range hs {
		if h == "" || h != strings.ToLower(h) || strings.ContainsAny(h, " \t:") {
			return nil, fmt.Errorf("signed header %q: want a lower-case header name", h)
		}
		if i > 0 && hs[i-1] >= h {
			return nil, fmt.Errorf("signed headers %q: not sorted or repeated", v)
		}
	}
	return hs, nil
}

func validSignature(sig string) bool {
	if len(sig) != 64 {
		return false
	}
	for _, c := range sig {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// parseAuthorization parses an Authorization header of the form
// "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request,
// SignedHeaders=host;x-amz-date, Signature=<64 hex>".
func parseAuthorization(h string) (sigV4Auth, error) {
	var a sigV4Auth
	alg, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || alg != sigAlgorithm {
		return a, fmt.Errorf("authorization algorithm %q: only %s is supported", alg, sigAlgorithm)
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(rest, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return a, fmt.Errorf("authorization component %q: want KEY=VALUE", part)
		}
		if seen[k] {
			return a, fmt.Errorf("authorization component %s repeated", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "Credential":
			a.Credential, err = parseCredential(v)
		case "SignedHeaders":
			a.SignedHeaders, err = parseSignedHeaders(v)
		case "Signature":
			if !validSignature(v) {
				err = fmt.Errorf("signature %q: want 64 lower-case hex digits", v)
			}
			a.Signature = v
		default:
			err = fmt.Errorf("authorization component %q unknown", k)
		}
		if err != nil {
			return a, err
		}
	}
	for _, k := range []string{"Credential", "SignedHeaders", "Signature"} {
		if !seen[k] {
			return a, fmt.Errorf("authorization has no %s", k)
		}
	}
	return a, nil
}

// parsePresigned parses the X-Amz-* query parameters of a presigned URL.
func parsePresigned(q url.Values) (sigV4Auth, error) {
	a := sigV4Auth{Presigned: true}
	if alg := q.Get("X-Amz-Algorithm"); alg != sigAlgorithm {
		return a, fmt.Errorf("X-Amz-Algorithm %q: only %s is supported", alg, sigAlgorithm)
	}
	var err error
	if a.Credential, err = parseCredential(q.Get("X-Amz-Credential")); err != nil {
		return a, err
	}
	if a.SignedHeaders, err = parseSignedHeaders(q.Get("X-Amz-SignedHeaders")); err != nil {
		return a, err
	}
	a.Signature = q.Get("X-Amz-Signature")
	if !validSignature(a.Signature) {
		return a, fmt.Errorf("X-Amz-Signature %q: want 64 lower-case hex digits", a.Signature)
	}
	a.AmzDate = q.Get("X-Amz-Date")
	a.Expires, err = strconv.ParseInt(q.Get("X-Amz-Expires"), 10, 64)
	if err != nil || a.Expires < 1 || a.Expires > 604800 {
		return a, fmt.Errorf("X-Amz-Expires %q: want 1 to 604800 seconds", q.Get("X-Amz-Expires"))
	}
	return a, nil
}

// requestAuth finds a request's signature: the Authorization header or a
// presigned query. ok is false when the request carries none.
func requestAuth(r *http.Request) (a sigV4Auth, ok bool, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		a, err = parseAuthorization(h)
		return a, true, err
	}
	q := r.URL.Query()
	if q.Has("X-Amz-Algorithm") || q.Has("X-Amz-Credential") || q.Has("X-Amz-Signature") {
		a, err = parsePresigned(q)
		return a, true, err
	}
	return a, false, nil
}

// verified is a request whose signature checked out.
type verified struct {
	service    string
	scope      string
	amzDate    string
	signingKey []byte
	signature  string
	// payload is the payload hash signed: a hex SHA-256, UNSIGNED-PAYLOAD
	// or a STREAMING-* marker.
	payload string
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, "aws4_request")
}

// uriEncode percent-encodes everything but the unreserved characters
// (A-Z a-z 0-9 - _ . ~), and '/' unless encodeSlash.
func uriEncode(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' || c == '/' && !encodeSlash {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// rawPath is the request's path as it came on the wire.
func rawPath(r *http.Request) string {
	p := r.RequestURI
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if u, err := url.Parse(p); err == nil && u.Scheme != "" {
		p = u.EscapedPath()
	}
	if p == "" {
		p = r.URL.EscapedPath()
	}
	if p == "" {
		p = "/"
	}
	return p
}

// canonicalURI follows the SigV4 rules: S3 signs the path as sent; every
// other service signs it normalised and encoded once more.
func canonicalURI(r *http.Request, service string) string {
	p := rawPath(r)
	if service == "s3" {
		return p
	}
	segs := strings.Split(p, "/")
	var out []string
	for i, seg := range segs {
		switch {
		case seg == "." || seg == "" && i > 0 && i < len(segs)-1:
			continue
		case seg == "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			continue
		}
		out = append(out, seg)
	}
	p = strings.Join(out, "/")
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return uriEncode(p, false)
}

// canonicalQuery sorts the query's parameters by name and value, each
// encoded as uriEncode does; X-Amz-Signature is left out.
func canonicalQuery(rawQuery string) string {
	type kv struct{ k, v string }
	var kvs []kv
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		ku, err1 := url.QueryUnescape(k)
		vu, err2 := url.QueryUnescape(v)
		if err1 != nil {
			ku = k
		}
		if err2 != nil {
			vu = v
		}
		if ku == "X-Amz-Signature" {
			continue
		}
		kvs = append(kvs, kv{uriEncode(ku, true), uriEncode(vu, true)})
	}
	slices.SortFunc(kvs, func(a, b kv) int {
		if c := strings.Compare(a.k, b.k); c != 0 {
			return c
		}
		return strings.Compare(a.v, b.v)
	})
	var b strings.Builder
	for i, e := range kvs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(e.k)
		b.WriteByte('=')
		b.WriteString(e.v)
	}
	return b.String()
}

// headerValue is a header's canonical value: its values trimmed, inner
// runs of spaces collapsed, joined by commas.
func headerValue(r *http.Request, name string) string {
	switch name {
	case "host":
		return r.Host
	case "content-length":
		if v := r.Header.Get("Content-Length"); v != "" {
			return v
		}
		if r.ContentLength >= 0 {
			return strconv.FormatInt(r.ContentLength, 10)
		}
	}
	vals := r.Header.Values(name)
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(out, ",")
}

// canonicalRequest builds the canonical request of r for a.
func canonicalRequest(r *http.Request, a sigV4Auth, payload string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(canonicalURI(r, a.Credential.Service))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery))
	b.WriteByte('\n')
	for _, h := range a.SignedHeaders {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(headerValue(r, h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(a.SignedHeaders, ";"))
	b.WriteByte('\n')
	b.WriteString(payload)
	return b.String()
}

func stringToSign(amzDate, scope, canonical string) string {
	return sigAlgorithm + "\n" + amzDate + "\n" + scope + "\n" + sha256Hex([]byte(canonical))
}

// maxSignedBody bounds the bodies the lab reads whole to hash them (EC2
// forms, EBS JSON and blocks).
const maxSignedBody = 4 << 20

// verify checks a request's SigV4 signature against the lab's key pair.
// For services other than S3 a body whose hash is not given in
// x-amz-content-sha256 is read whole and hashed; r.Body is replaced by
// the bytes read. now is the wall clock.
func (s *Server) verify(r *http.Request, a sigV4Auth, now time.Time) (*verified, error) {
	c := a.Credential
	if subtle.ConstantTimeCompare([]byte(c.AccessKey), []byte(s.accessKey)) != 1 {
		return nil, authErr(authUnknownKey, "the access key %q is not known to this region", c.AccessKey)
	}
	if c.Region != s.region {
		return nil, authErr(authWrongRegion, "the credential is scoped to region %q; this endpoint serves %q", c.Region, s.region)
	}
	amzDate := a.AmzDate
	if !a.Presigned {
		amzDate = r.Header.Get("X-Amz-Date")
	}
	var t time.Time
	var err error
	if amzDate != "" {
		t, err = time.Parse(amzDateFormat, amzDate)
	} else if d := r.Header.Get("Date"); d != "" && !a.Presigned {
		t, err = http.ParseTime(d)
		amzDate = t.UTC().Format(amzDateFormat)
	} else {
		return nil, authErr(authMalformed, "the request has no X-Amz-Date")
	}
	if err != nil {
		return nil, authErr(authMalformed, "X-Amz-Date %q: want %s", amzDate, amzDateFormat)
	}
	if t.UTC().Format(scopeDateFormat) != c.Date {
		return nil, authErr(authMalformed, "the credential date %s is not the request date %s", c.Date, amzDate)
	}
	if a.Presigned {
		if now.After(t.Add(time.Duration(a.Expires) * time.Second)) {
			return nil, authErr(authExpired, "the presigned request expired at %s", t.Add(time.Duration(a.Expires)*time.Second).UTC().Format(time.RFC3339))
		}
		if t.After(now.Add(maxSkew)) {
			return nil, authErr(authExpired, "the presigned request is dated %s, in the future", amzDate)
		}
	} else if d := now.Sub(t); d > maxSkew || d < -maxSkew {
		return nil, authErr(authExpired, "the request time %s differs from the server time %s by more than 15 minutes", amzDate, now.UTC().Format(amzDateFormat))
	}
	if !slices.Contains(a.SignedHeaders, "host") {
		return nil, authErr(authMalformed, "the host header is not signed")
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	switch {
	case a.Presigned && c.Service == "s3":
		if payload == "" {
			payload = unsignedPayload
		}
	case c.Service == "s3":
		if payload == "" {
			return nil, authErr(authMalformed, "missing required header for this request: x-amz-content-sha256")
		}
	case payload == "" || validSignature(payload):
		// hash the body ourselves
		body, err := io.ReadAll(io.LimitReader(r.Body, maxSignedBody+1))
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		if len(body) > maxSignedBody {
			return nil, authErr(authMalformed, "request body over %d bytes", maxSignedBody)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		got := sha256Hex(body)
		if payload != "" && payload != got {
			return nil, authErr(authBodyMismatch, "the x-amz-content-sha256 header does not match the body")
		}
		payload = got
	}
	key := signingKey(s.secretKey.Reveal(), c.Date, c.Region, c.Service)
	canon := canonicalRequest(r, a, payload)
	sts := stringToSign(amzDate, c.scope(), canon)
	want := hex.EncodeToString(hmacSHA256(key, sts))
	if subtle.ConstantTimeCompare([]byte(want), []byte(a.Signature)) != 1 {
		s.log.Debug("signature mismatch", "service", c.Service, "method", r.Method, "path", r.URL.Path)
		return nil, authErr(authBadSignature, "the request signature we calculated does not match the signature you provided; check your key and signing method")
	}
	return &verified{service: c.Service, scope: c.scope(), amzDate: amzDate, signingKey: key, signature: a.Signature, payload: payload}, nil
}

// hashingReader checks, at EOF, that what it read hashes to want.
type hashingReader struct {
	r    io.Reader
	h    interface{ Sum([]byte) []byte }
	w    io.Writer
	want string
	err  error
}

func newHashingReader(r io.Reader, want string) *hashingReader {
	h := sha256.New()
	return &hashingReader{r: r, h: h, w: h, want: want}
}

func (h *hashingReader) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	n, err := h.r.Read(p)
	h.w.Write(p[:n])
	if err == io.EOF && hex.EncodeToString(h.h.Sum(nil)) != h.want {
		h.err = authErr(authBodyMismatch, "the provided x-amz-content-sha256 header does not match what was computed")
		return n, h.err
	}
	return n, err
}

// Streaming payloads (aws-chunked): x-amz-content-sha256 names the
// variant.
const (
	streamingSigned         = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingSignedTrailer  = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
	streamingUnsignedTrail  = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
	maxChunkHeader          = 4096
	maxTrailerBytes         = 16 << 10
	chunkSignatureAlgorithm = "AWS4-HMAC-SHA256-PAYLOAD"
	trailerSignatureAlg     = "AWS4-HMAC-SHA256-TRAILER"
)

// chunkedReader decodes an aws-chunked body: chunks of "<hex size>
// [;chunk-signature=<sig>]\r\n<data>\r\n" ending with a zero-size chunk
// and, for the trailer variants, trailing headers. Signed variants have
// each chunk's signature checked against the previous one, starting from
// the request's seed signature.
type chunkedReader struct {
	br       *bufio.Reader
	v        *verified
	signed   bool
	trailer  bool
	prevSig  string
	left     int64 // bytes left in the current chunk
	chunk    []byte
	hash     interface{ Sum([]byte) []byte }
	hw       io.Writer
	done     bool
	err      error
	Trailers http.Header
}

func newChunkedReader(r io.Reader, v *verified) *chunkedReader {
	c := &chunkedReader{br: bufio.NewReaderSize(r, 64<<10), v: v, prevSig: v.signature, Trailers: http.Header{}}
	switch v.payload {
	case streamingSigned:
		c.signed = true
	case streamingSignedTrailer:
		c.signed, c.trailer = true, true
	case streamingUnsignedTrail:
		c.trailer = true
	}
	return c
}

func (c *chunkedReader) fail(format string, a ...any) error {
	c.err = authErr(authMalformed, format, a...)
	return c.err
}

func (c *chunkedReader) readLine() (string, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxChunkHeader {
		return "", c.fail("aws-chunked line too long")
	}
	if err != nil {
		return "", c.fail("aws-chunked body ends early: %v", err)
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		if err := c.nextChunk(); err != nil {
			return 0, err
		}
	}
	n := int64(len(p))
	if n > c.left {
		n = c.left
	}
	k, err := io.ReadFull(c.br, p[:n])
	if c.hw != nil {
		c.hw.Write(p[:k])
	}
	c.left -= int64(k)
	if err != nil {
		return k, c.fail("aws-chunked chunk ends early")
	}
	if c.left == 0 {
		if err := c.endChunk(); err != nil {
			return k, err
		}
	}
	return k, nil
}

func (c *chunkedReader) nextChunk() error {
	line, err := c.readLine()
	if err != nil {
		return err
	}
	sizeStr, ext, _ := strings.Cut(line, ";")
	size, perr := strconv.ParseInt(strings.TrimSpace(sizeStr), 16, 64)
	if perr != nil || size < 0 || size > 1<<40 {
		return c.fail("aws-chunked size %q", sizeStr)
	}
	var sig string
	if c.signed {
		k, v, ok := strings.Cut(ext, "=")
		if !ok || k != "chunk-signature" || !validSignature(v) {
			return c.fail("aws-chunked chunk without a chunk-signature")
		}
		sig = v
	}
	c.chunk = []byte(sig)
	if c.signed {
		h := sha256.New()
		c.hash, c.hw = h, h
	}
	c.left = size
	if size == 0 {
		if err := c.checkChunkSig(); err != nil {
			return err
		}
		c.done = true
		return c.readTrailers()
	}
	return nil
}

// endChunk reads the CRLF after a chunk's data and checks its signature.
func (c *chunkedReader) endChunk() error {
	var crlf [2]byte
	if _, err := io.ReadFull(c.br, crlf[:]); err != nil || crlf != [2]byte{'\r', '\n'} {
		return c.fail("aws-chunked chunk not followed by CRLF")
	}
	return c.checkChunkSig()
}

func (c *chunkedReader) checkChunkSig() error {
	if !c.signed {
		return nil
	}
	dataHash := emptySHA256
	if c.hash != nil && c.left == 0 {
		dataHash = hex.EncodeToString(c.hash.Sum(nil))
	}
	sts := chunkSignatureAlgorithm + "\n" + c.v.amzDate + "\n" + c.v.scope + "\n" + c.prevSig + "\n" + emptySHA256 + "\n" + dataHash
	want := hex.EncodeToString(hmacSHA256(c.v.signingKey, sts))
	if subtle.ConstantTimeCompare([]byte(want), c.chunk) != 1 {
		c.err = authErr(authBadSignature, "the chunk signature we calculated does not match the one provided")
		return c.err
	}
	c.prevSig = want
	c.hash, c.hw = nil, nil
	return nil
}

// readTrailers reads the trailing headers after the last chunk, and
// checks the trailer signature of the signed variant.
func (c *chunkedReader) readTrailers() error {
	var canon strings.Builder
	var trailerSig string
	total := 0
	for {
		line, err := c.readLine()
		if err != nil {
			if !c.trailer {
				// a body ending right after the last chunk is complete
				c.err = nil
				return nil
			}
			return err
		}
		total += len(line)
		if total > maxTrailerBytes {
			return c.fail("aws-chunked trailers too long")
		}
		if line == "" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return c.fail("aws-chunked trailer %q", line)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		if k == "x-amz-trailer-signature" {
			trailerSig = v
			continue
		}
		c.Trailers.Add(k, v)
		canon.WriteString(k + ":" + v + "\n")
	}
	if c.signed && c.trailer {
		sts := trailerSignatureAlg + "\n" + c.v.amzDate + "\n" + c.v.scope + "\n" + c.prevSig + "\n" + sha256Hex([]byte(canon.String()))
		want := hex.EncodeToString(hmacSHA256(c.v.signingKey, sts))
		if subtle.ConstantTimeCompare([]byte(want), []byte(trailerSig)) != 1 {
			c.err = authErr(authBadSignature, "the trailer signature we calculated does not match the one provided")
			return c.err
		}
	}
	return nil
}
