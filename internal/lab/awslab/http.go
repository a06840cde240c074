package awslab

import (
	"errors"
	"net/http"
	"strings"
	"time"
)

// serveHTTP authenticates a request and hands it to its service: the one
// named in the SigV4 credential scope, or, for a request that carries no
// usable signature, the one its shape suggests (so that the refusal comes
// in that service's error format).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := newUUID()
	a, has, perr := requestAuth(r)
	service := ""
	if has && perr == nil {
		service = a.Credential.Service
	}
	if service != "ec2" && service != "ebs" && service != "s3" {
		service = guessService(r)
	}
	fail := func(err error) {
		switch service {
		case "ec2":
			s.ec2Fail(w, reqID, ec2AuthError(err))
		case "ebs":
			s.ebsFail(w, reqID, err)
		default:
			s.s3Fail(w, r, reqID, err)
		}
	}
	switch {
	case !has:
		if auth := r.Header.Get("Authorization"); auth != "" || r.URL.Query().Has("AWSAccessKeyId") {
			fail(authErr(authUnsupported, "only AWS4-HMAC-SHA256 signatures are accepted"))
			return
		}
		fail(authErr(authMissing, "the request is not signed"))
		return
	case perr != nil:
		kind := authMalformed
		if strings.HasPrefix(r.Header.Get("Authorization"), "AWS ") || strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-ECDSA") {
			kind = authUnsupported
		}
		fail(authErr(kind, "%v", perr))
		return
	case a.Credential.Service != service:
		fail(authErr(authMalformed, "the credential scope names service %q, which this endpoint does not serve", a.Credential.Service))
		return
	}
	v, err := s.verify(r, a, time.Now())
	if err != nil {
		var ae *authError
		if !errors.As(err, &ae) {
			err = authErr(authMalformed, "%v", err)
		}
		s.log.Info("request refused", "service", service, "method", r.Method, "path", r.URL.Path, "err", err)
		fail(err)
		return
	}
	switch service {
	case "ec2":
		s.serveEC2(w, r, reqID)
	case "ebs":
		s.serveEBS(w, r, reqID)
	default:
		s.serveS3(w, r, v, reqID)
	}
}

// guessService tells, from its shape alone, which service an unsigned
// request was meant for.
func guessService(r *http.Request) string {
	switch {
	case r.URL.Query().Has("Action"),
		r.Method == http.MethodPost && r.URL.Path == "/" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded"):
		return "ec2"
	case r.URL.Path == "/snapshots" || strings.HasPrefix(r.URL.Path, "/snapshots/"):
		return "ebs"
	}
	return "s3"
}
