// Package client is the Go client of ferry's REST API; the CLI talks to a
// server through it.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// Options tune a Client.
type Options struct {
	// Token is the bearer token (ferry_...).
	Token string
	// CAFile is a PEM bundle of CAs to trust for an https server; or
	// Fingerprint pins the server's certificate by its SHA-256 (hex,
	// colons allowed). At most one.
	CAFile      string
	Fingerprint string
	// Timeout bounds each request that is not a stream (default 5 min).
	Timeout time.Duration
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// Client talks to one ferry server.
type Client struct {
	base   *url.URL
	token  string
	hc     *http.Client
	stream *http.Client
}

// New returns a client of the server at server (http:// or https://).
func New(server string, o *Options) (*Client, error) {
	if o == nil {
		o = &Options{}
	}
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q: want http(s)://HOST[:PORT]: %w", server, errs.ErrInvalidArgument)
	}
	if o.CAFile != "" && o.Fingerprint != "" {
		return nil, fmt.Errorf("give --ca-file or --fingerprint, not both: %w", errs.ErrInvalidArgument)
	}
	rt := o.Transport
	if rt == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tc, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tc
		rt = tr
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	return &Client{base: u, token: o.Token, hc: &http.Client{Transport: rt, Timeout: timeout}, stream: &http.Client{Transport: rt}}, nil
}

func tlsConfig(o *Options) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case o.CAFile != "":
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates: %w", o.CAFile, errs.ErrInvalidArgument)
		}
		tc.RootCAs = pool
	case o.Fingerprint != "":
		want, err := ParseFingerprint(o.Fingerprint)
		if err != nil {
			return nil, err
		}
		// Pinning replaces chain and name checks: the certificate is
		// trusted because it is exactly the one named.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if !bytes.Equal(got[:], want) {
				return fmt.Errorf("server certificate fingerprint %s does not match the pinned %s", Fingerprint(cs.PeerCertificates[0].Raw), o.Fingerprint)
			}
			return nil
		}
	}
	return tc, nil
}

// ParseFingerprint reads a SHA-256 fingerprint: 64 hex digits, colons
// and case ignored.
func ParseFingerprint(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:"), ":", ""))
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("fingerprint %q: want the certificate's SHA-256 as 64 hex digits: %w", s, errs.ErrInvalidArgument)
	}
	return b, nil
}

// Fingerprint formats the SHA-256 of a DER certificate as AA:BB:...
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// Error is an error answer of the server. It wraps the errs code its code
// names, so errs.CodeOf works across the wire.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap maps the API's code to an errs sentinel.
func (e *Error) Unwrap() error {
	switch e.Code {
	case "not_found":
		return errs.ErrNotFound
	case "already_exists":
		return errs.ErrAlreadyExists
	case "invalid_argument":
		return errs.ErrInvalidArgument
	case "failed_precondition":
		return errs.ErrFailedPrecondition
	case "conflict":
		return errs.ErrConflict
	case "unavailable":
		return errs.ErrUnavailable
	case "permission_denied", "unauthenticated":
		return errs.ErrPermissionDenied
	case "unimplemented":
		return errs.ErrUnimplemented
	case "data_loss":
		return errs.ErrDataLoss
	}
	return nil
}

type envelope struct {
	Type      string          `json:"type"`
	Operation string          `json:"operation"`
	Metadata  json.RawMessage `json:"metadata"`
	Error     *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (c *Client) request(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	u := *c.base
	u.Path += path
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// Do sends a request and decodes the answer's metadata into out (if not
// nil).
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	req, err := c.request(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %w", method, c.base.Host, err, errs.ErrUnavailable)
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out)
}

func decodeResponse(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w: %w", err, errs.ErrUnavailable)
	}
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return &Error{Status: resp.StatusCode, Code: "internal", Message: fmt.Sprintf("server answered %s with no ferry JSON: %.200s", resp.Status, b)}
	}
	if env.Type == "error" || resp.StatusCode >= 400 {
		e := &Error{Status: resp.StatusCode, Code: "internal", Message: resp.Status}
		if env.Error != nil {
			e.Code, e.Message = env.Error.Code, env.Error.Message
		}
		return e
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = env.Metadata
			return nil
		}
		if err := json.Unmarshal(env.Metadata, out); err != nil {
			return fmt.Errorf("decode answer: %v: %w", err, errs.ErrCorrupt)
		}
	}
	return nil
}

// Event is one server-sent event.
type Event struct {
	ID   int64
	Kind string
	Data json.RawMessage
}

// Stream reads server-sent events from path, calling fn for each, until the
// server ends the stream (nil), ctx ends, or fn fails.
func (c *Client) Stream(ctx context.Context, path string, after int64, fn func(Event) error) error {
	q := url.Values{}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	req, err := c.request(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.stream.Do(req)
	if err != nil {
		return fmt.Errorf("events: %w: %w", err, errs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeResponse(resp, nil)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var ev Event
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				ev.Data = json.RawMessage(strings.Join(data, "\n"))
				if err := fn(ev); err != nil {
					return err
				}
			}
			ev, data = Event{}, nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id:"):
			ev.ID, _ = strconv.ParseInt(strings.TrimSpace(line[3:]), 10, 64)
		case strings.HasPrefix(line, "event:"):
			ev.Kind = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(line[5:], " "))
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("events: %w: %w", err, errs.ErrUnavailable)
	}
	return ctx.Err()
}
