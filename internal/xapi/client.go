package xapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

// Options configure a Client. The zero value of each field is a sensible
// default, except that credentials are needed to log in.
type Options struct {
	User     string
	Password Secret
	// CAFile is a PEM file of CA certificates to verify the pool's
	// certificate against, instead of the system roots.
	CAFile string
	// CAPEM holds the same certificates in memory, instead of CAFile.
	CAPEM []byte
	// Fingerprint pins the pool's certificate: the SHA-256 digest of the
	// leaf certificate (see ParseFingerprint), or several separated by
	// commas (one per pool member, for redirects). The chain and host name
	// are then not checked.
	Fingerprint string
	// Insecure skips certificate verification. Only when asked for.
	Insecure bool
	// Originator names the client to xapi (session.login_with_password's
	// originator); default "ferry".
	Originator string
	// Version is the API version string sent at login; default "1.0".
	Version string
	// Logger receives debug logs of calls (method and duration, never
	// parameters) and warnings; nil discards.
	Logger *slog.Logger
	// Transport, when set, replaces the HTTP transport (tests). Its TLS
	// configuration is the caller's business.
	Transport http.RoundTripper
	// PollInterval is how often WaitTask polls a task when the server
	// cannot stream task events; default 1s.
	PollInterval time.Duration
}

// Client is a connection to one pool. It is safe for concurrent use.
type Client struct {
	opts   Options
	log    *slog.Logger
	http   *http.Client
	tr     http.RoundTripper
	dialer *net.Dialer
	tlsCfg *tls.Config // nil for http

	mu      sync.Mutex
	base    *url.URL // scheme://host[:port] of the host spoken to (the master after HOST_IS_SLAVE)
	session Secret
	gen     uint64 // incremented at each login

	loginMu sync.Mutex
	nextID  atomic.Int64
}

// New returns a client for the pool at rawURL (https://host[:port] or
// http://host[:port]; a path is ignored). It does no I/O; see Dial and
// Login.
func New(rawURL string, o *Options) (*Client, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	u, err := url.Parse(strings.TrimSpace(rawURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("xapi url %q: want http(s)://host[:port]: %w", redactURL(rawURL), errs.ErrInvalidArgument)
	}
	if u.User != nil {
		return nil, fmt.Errorf("xapi url %s: credentials in the URL are not accepted; pass them as options: %w", u.Host, errs.ErrInvalidArgument)
	}
	base := &url.URL{Scheme: u.Scheme, Host: u.Host}
	if opts.Originator == "" {
		opts.Originator = "ferry"
	}
	if opts.Version == "" {
		opts.Version = "1.0"
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: log, base: base, dialer: &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}}
	tcfg, err := tlsConfig(u, &opts)
	if err != nil {
		return nil, err
	}
	c.tlsCfg = tcfg
	if opts.Transport != nil {
		c.tr = opts.Transport
	} else {
		c.tr = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           c.dialer.DialContext,
			TLSClientConfig:       tcfg,
			TLSHandshakeTimeout:   30 * time.Second,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: 3 * time.Second,
		}
	}
	c.http = &http.Client{
		Transport: c.tr,
		// Redirects are followed by hand: xapi answers 302 for a transfer
		// another host must serve, and a PUT must be sent there again as
		// a PUT with its body.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// Dial returns a client logged in to the pool at rawURL.
func Dial(ctx context.Context, rawURL string, o *Options) (*Client, error) {
	c, err := New(rawURL, o)
	if err != nil {
		return nil, err
	}
	if err := c.Login(ctx); err != nil {
		c.closeIdle()
		return nil, err
	}
	return c, nil
}

// Addr returns the host[:port] the client speaks to (the master after a
// HOST_IS_SLAVE redirect).
func (c *Client) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Host
}

// URL returns scheme://host[:port] of the host the client speaks to.
func (c *Client) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.String()
}

func (c *Client) baseURL() *url.URL {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := *c.base
	return &u
}

func (c *Client) currentSession() (Secret, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session, c.gen
}

// SessionRef returns the session reference, for the HTTP handlers'
// session_id parameter. Keep it secret.
func (c *Client) SessionRef() Secret {
	s, _ := c.currentSession()
	return s
}

// Login opens a session with the configured credentials, following
// HOST_IS_SLAVE to the master. A session already open is replaced (and
// not logged out).
func (c *Client) Login(ctx context.Context) error {
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	return c.loginLocked(ctx)
}

func (c *Client) loginLocked(ctx context.Context) error {
	for range 3 {
		var ref string
		err := c.do(ctx, "session.login_with_password",
			[]any{c.opts.User, c.opts.Password.Reveal(), c.opts.Version, c.opts.Originator}, &ref)
		if master, ok := slaveRedirect(err); ok {
			c.moveTo(master)
			continue
		}
		if err != nil {
			return err
		}
		if ref == "" {
			return fmt.Errorf("xapi session.login_with_password: empty session reference: %w", errs.ErrCorrupt)
		}
		c.mu.Lock()
		c.session = Secret(ref)
		c.gen++
		c.mu.Unlock()
		c.log.Debug("xapi login", "host", c.Addr(), "user", c.opts.User)
		return nil
	}
	return fmt.Errorf("xapi session.login_with_password: too many HOST_IS_SLAVE redirects: %w", errs.ErrUnavailable)
}

// relogin logs in again unless another goroutine already replaced the
// session of generation gen.
func (c *Client) relogin(ctx context.Context, gen uint64) error {
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	if _, g := c.currentSession(); g != gen {
		return nil
	}
	c.log.Info("xapi session expired; logging in again", "host", c.Addr())
	return c.loginLocked(ctx)
}

// slaveRedirect reports the master address of a HOST_IS_SLAVE error.
func slaveRedirect(err error) (string, bool) {
	var xe *Error
	if errors.As(err, &xe) && xe.Code == "HOST_IS_SLAVE" && len(xe.Params) > 0 && xe.Params[0] != "" {
		return xe.Params[0], true
	}
	return "", false
}

// moveTo points the client at the pool master named by HOST_IS_SLAVE,
// keeping the scheme and, unless the address carries one, the port.
func (c *Client) moveTo(master string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	host := master
	if h, p, err := net.SplitHostPort(master); err == nil {
		host = net.JoinHostPort(h, p)
	} else if port := c.base.Port(); port != "" {
		host = net.JoinHostPort(strings.Trim(master, "[]"), port)
	} else if strings.Contains(master, ":") && !strings.HasPrefix(master, "[") {
		host = "[" + master + "]" // a bare IPv6 address
	}
	c.log.Info("xapi host is a pool member; moving to the master", "from", c.base.Host, "to", host)
	c.base = &url.URL{Scheme: c.base.Scheme, Host: host}
}

// Close logs out and releases idle connections.
func (c *Client) Close() error {
	defer c.closeIdle()
	sess, _ := c.currentSession()
	if sess == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.do(ctx, "session.logout", []any{sess.Reveal()}, nil)
	c.mu.Lock()
	c.session = ""
	c.gen++
	c.mu.Unlock()
	if err != nil && !HasCode(err, "SESSION_INVALID") {
		return err
	}
	return nil
}

func (c *Client) closeIdle() {
	if t, ok := c.tr.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// Call calls method with the session prepended to params and decodes the
// result into result (a pointer; nil discards it). A SESSION_INVALID
// failure logs in again and retries once; HOST_IS_SLAVE moves to the
// master and retries.
func (c *Client) Call(ctx context.Context, method string, params []any, result any) error {
	if method == "session.login_with_password" {
		return fmt.Errorf("xapi %s: use Login: %w", method, errs.ErrInvalidArgument)
	}
	relogged := false
	for hops := 0; ; hops++ {
		sess, gen := c.currentSession()
		full := make([]any, 0, len(params)+1)
		full = append(full, sess.Reveal())
		full = append(full, params...)
		err := c.do(ctx, method, full, result)
		if err == nil {
			return nil
		}
		if HasCode(err, "SESSION_INVALID") && !relogged && c.opts.User != "" && sess != "" {
			relogged = true
			if lerr := c.relogin(ctx, gen); lerr != nil {
				return fmt.Errorf("xapi %s: session expired and logging in again failed: %w", method, lerr)
			}
			continue
		}
		if master, ok := slaveRedirect(err); ok && hops < 2 {
			c.moveTo(master)
			if sess != "" && c.opts.User != "" {
				if lerr := c.relogin(ctx, gen); lerr != nil {
					return lerr
				}
			}
			continue
		}
		return err
	}
}

// request is a JSON-RPC request.
type request struct {
	JSONRPC string `json:"jsonrpc"`
	Method  string `json:"method"`
	Params  []any  `json:"params"`
	ID      int64  `json:"id"`
}

// do sends one JSON-RPC call, with params exactly as given, and decodes
// the result.
func (c *Client) do(ctx context.Context, method string, params []any, result any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("xapi %s: %w", method, err)
	}
	wire := make([]any, len(params))
	for i, p := range params {
		wire[i] = wireValue(p)
	}
	body, err := json.Marshal(request{JSONRPC: "2.0", Method: method, Params: wire, ID: c.nextID.Add(1)})
	if err != nil {
		return fmt.Errorf("xapi %s: encode parameters: %v: %w", method, err, errs.ErrInvalidArgument)
	}
	u := c.baseURL()
	u.Path = "/jsonrpc"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("xapi %s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "ferry")
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return transportError(ctx, "xapi "+method+": post to "+u.Host, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return transportError(ctx, "xapi "+method+": read response from "+u.Host, err)
	}
	c.log.Debug("xapi call", "method", method, "host", u.Host, "status", resp.StatusCode, "bytes", len(raw), "duration", time.Since(start))
	if len(raw) > maxResponse {
		return fmt.Errorf("xapi %s: response over %d bytes: %w", method, maxResponse, errs.ErrCorrupt)
	}
	return c.decodeResponse(method, resp.StatusCode, raw, params, result)
}

// decodeResponse turns an HTTP response into the call's result or error.
func (c *Client) decodeResponse(method string, status int, raw []byte, params []any, result any) error {
	tree, perr := parseJSON(raw)
	obj, isObj := tree.(map[string]any)
	if status != http.StatusOK && (perr != nil || !isObj || obj["error"] == nil) {
		return httpStatusError("xapi "+method, status, raw)
	}
	if perr != nil {
		return fmt.Errorf("xapi %s: malformed response: %v: %w", method, perr, errs.ErrCorrupt)
	}
	if !isObj {
		return fmt.Errorf("xapi %s: response is %s, not an object: %w", method, describe(tree), errs.ErrCorrupt)
	}
	if e, ok := obj["error"]; ok && e != nil {
		xe := decodeError(e)
		xe.Method = method
		c.redactParams(xe, params)
		return xe
	}
	res, ok := obj["result"]
	if !ok {
		return fmt.Errorf("xapi %s: response has neither result nor error: %w", method, errs.ErrCorrupt)
	}
	if result == nil {
		return nil
	}
	if err := decode(res, result); err != nil {
		return fmt.Errorf("xapi %s: result: %w", method, err)
	}
	return nil
}

func httpStatusError(what string, status int, body []byte) error {
	snippet := strings.TrimSpace(string(body))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "…"
	}
	msg := fmt.Sprintf("%s: HTTP %d %s", what, status, http.StatusText(status))
	if snippet != "" && !strings.Contains(snippet, "OpaqueRef:") {
		msg += ": " + snippet
	}
	switch {
	case status >= 500:
		return fmt.Errorf("%s: %w", msg, errs.ErrUnavailable)
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return fmt.Errorf("%s: %w", msg, errs.ErrPermissionDenied)
	case status == http.StatusNotFound:
		return fmt.Errorf("%s: %w", msg, errs.ErrNotFound)
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return fmt.Errorf("%s: %w", msg, errs.ErrUnavailable)
	case status >= 400:
		return fmt.Errorf("%s: %w", msg, errs.ErrInvalidArgument)
	}
	return errors.New(msg)
}

// decodeError reads both error shapes: v1 ["CODE", "param", ...] and v2
// {"code": n, "message": "CODE", "data": [...] or a single value}. Anything
// else still becomes an *Error, with what could be made of it.
func decodeError(e any) *Error {
	xe := &Error{}
	switch x := e.(type) {
	case []any:
		if len(x) > 0 {
			xe.Code = scalarString(x[0])
			for _, p := range x[1:] {
				xe.Params = append(xe.Params, scalarString(p))
			}
		}
	case map[string]any:
		if n, err := toInt(x["code"]); err == nil {
			xe.RPCCode = n
		}
		switch m := x["message"].(type) {
		case string:
			xe.Code = m
		case []any: // some servers put the v1 array here
			if len(m) > 0 {
				xe.Code = scalarString(m[0])
				for _, p := range m[1:] {
					xe.Params = append(xe.Params, scalarString(p))
				}
			}
		default:
			if m != nil {
				xe.Code = scalarString(m)
			} else if s, ok := x["code"].(string); ok {
				xe.Code = s
			}
		}
		switch d := x["data"].(type) {
		case nil:
		case []any:
			for _, p := range d {
				xe.Params = append(xe.Params, scalarString(p))
			}
		default:
			xe.Params = append(xe.Params, scalarString(d))
		}
	default:
		xe.Code = scalarString(x)
	}
	if xe.Code == "" {
		xe.Code = "UNKNOWN_ERROR"
	}
	return xe
}

func scalarString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// redactParams hides error parameters that repeat a secret: the session
// (SESSION_INVALID names it) and the password.
func (c *Client) redactParams(xe *Error, params []any) {
	secrets := []string{c.opts.Password.Reveal()}
	if s, _ := c.currentSession(); s != "" {
		secrets = append(secrets, s.Reveal())
	}
	if xe.Code == "SESSION_INVALID" || xe.Code == "SESSION_NOT_REGISTERED" {
		for i := range xe.Params {
			xe.Params[i] = redacted
		}
		return
	}
	if len(params) > 0 {
		if s, ok := params[0].(string); ok && strings.HasPrefix(s, "OpaqueRef:") {
			secrets = append(secrets, s)
		}
	}
	for i, p := range xe.Params {
		for _, s := range secrets {
			if s != "" && strings.Contains(p, s) {
				xe.Params[i] = redacted
			}
		}
	}
}

// redactURL drops the query (which may hold session_id) and user info.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if i := strings.IndexAny(s, "?@"); i >= 0 {
			return s[:i]
		}
		return s
	}
	u.RawQuery, u.User, u.Fragment = "", nil, ""
	return u.String()
}

// HTTPClient returns the client's HTTP client (its TLS settings; redirects
// are not followed), for handlers the client does not wrap.
func (c *Client) HTTPClient() *http.Client { return c.http }
