package xapi

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// ParseFingerprint parses a SHA-256 certificate fingerprint written as 64
// hex digits, with or without colons or spaces between bytes, in either
// case, optionally prefixed "sha256:" or "SHA256 Fingerprint=" (openssl's
// form).
func ParseFingerprint(s string) ([32]byte, error) {
	var fp [32]byte
	t := strings.TrimSpace(s)
	if _, rest, ok := strings.Cut(t, "="); ok && strings.Contains(strings.ToLower(t), "fingerprint") {
		t = rest
	}
	t = strings.TrimPrefix(strings.TrimPrefix(t, "sha256:"), "SHA256:")
	t = strings.NewReplacer(":", "", " ", "", "-", "").Replace(t)
	b, err := hex.DecodeString(t)
	if err != nil || len(b) != len(fp) {
		return fp, fmt.Errorf("certificate fingerprint %q: want a SHA-256 digest (64 hex digits): %w", s, errs.ErrInvalidArgument)
	}
	copy(fp[:], b)
	return fp, nil
}

// Fingerprint returns the SHA-256 fingerprint of a DER certificate in
// upper-case hex with colons, as xe and openssl print it.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// errPinMismatch is returned from the handshake when no pinned
// fingerprint matches.
type pinError struct{ got string }

func (e *pinError) Error() string {
	return "server certificate fingerprint " + e.got + " matches none of the pinned fingerprints"
}

// tlsConfig builds the TLS configuration for u from the options: pinned
// fingerprints replace chain verification, a CA file replaces the system
// roots, Insecure skips verification. Plain http needs none.
func tlsConfig(u *url.URL, o *Options) (*tls.Config, error) {
	if u.Scheme != "https" {
		if o.CAFile != "" || len(o.CAPEM) > 0 || o.Fingerprint != "" {
			return nil, fmt.Errorf("xapi %s: a CA file or fingerprint needs an https URL: %w", u.Host, errs.ErrInvalidArgument)
		}
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	n := 0
	if o.Insecure {
		n++
	}
	if o.CAFile != "" || len(o.CAPEM) > 0 {
		n++
	}
	if o.Fingerprint != "" {
		n++
	}
	if n > 1 {
		return nil, fmt.Errorf("xapi %s: choose one of CA file, fingerprint and insecure: %w", u.Host, errs.ErrInvalidArgument)
	}
	switch {
	case o.Fingerprint != "":
		var pins [][32]byte
		for _, f := range strings.Split(o.Fingerprint, ",") {
			if strings.TrimSpace(f) == "" {
				continue
			}
			p, err := ParseFingerprint(f)
			if err != nil {
				return nil, err
			}
			pins = append(pins, p)
		}
		// The pin is the trust decision: the chain and host name are not
		// checked (xapi's certificates are self-signed for the host's
		// address), the leaf certificate's digest is.
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return &pinError{got: "(none)"}
			}
			sum := sha256.Sum256(raw[0])
			for _, p := range pins {
				if p == sum {
					return nil
				}
			}
			return &pinError{got: Fingerprint(raw[0])}
		}
	case len(o.CAPEM) > 0:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(o.CAPEM) {
			return nil, fmt.Errorf("xapi %s: the CA certificates given hold no PEM certificate: %w", u.Host, errs.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	case o.CAFile != "":
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			code := errs.ErrInvalidArgument
			if os.IsNotExist(err) {
				code = errs.ErrNotFound
			}
			return nil, fmt.Errorf("xapi CA file %s: %v: %w", o.CAFile, err, code)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("xapi CA file %s: no PEM certificate in it: %w", o.CAFile, errs.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	case o.Insecure:
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

// isCertError reports whether err is a refused server certificate.
func isCertError(err error) bool {
	var pe *pinError
	var ce *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &pe) || errors.As(err, &ce) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// innerError strips *url.Error, whose message holds the request URL (and
// with it the session of a transfer), keeping the cause.
func innerError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
