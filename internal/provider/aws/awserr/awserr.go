// Package awserr is the one place where errors from aws-sdk-go-v2 and from
// AWS's HTTP endpoints are classified into ferry's error codes, and where
// ferry's own retry loop for the calls it retries itself (EBS direct block
// transfers, S3 parts) lives.
//
// Classification follows AWS's documented error codes: throttling
// (RequestLimitExceeded, Throttling, SlowDown, ...), 5xx responses and
// broken connections are Unavailable, the only retryable code;
// authentication failures are PermissionDenied; validation errors are
// InvalidArgument; *.NotFound, NoSuchBucket, NoSuchKey and
// ResourceNotFoundException are NotFound; IncorrectState, *.InUse and
// ConflictException are FailedPrecondition. Nothing is retried once the
// context is done.
package awserr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/ferry-project/ferry/internal/errs"
)

// codes maps AWS error codes (EC2 Query, EBS REST-JSON, S3 REST-XML and
// STS spellings) to ferry's sentinels.
var codes = map[string]error{
	// throttling and transient server faults
	"RequestLimitExceeded":                 errs.ErrUnavailable,
	"Throttling":                           errs.ErrUnavailable,
	"ThrottlingException":                  errs.ErrUnavailable,
	"ThrottledException":                   errs.ErrUnavailable,
	"RequestThrottled":                     errs.ErrUnavailable,
	"RequestThrottledException":            errs.ErrUnavailable,
	"TooManyRequestsException":             errs.ErrUnavailable,
	"ProvisionedThroughputExceeded":        errs.ErrUnavailable,
	"SlowDown":                             errs.ErrUnavailable,
	"ServiceUnavailable":                   errs.ErrUnavailable,
	"ServiceUnavailableException":          errs.ErrUnavailable,
	"Unavailable":                          errs.ErrUnavailable,
	"InternalError":                        errs.ErrUnavailable,
	"InternalFailure":                      errs.ErrUnavailable,
	"InternalServerError":                  errs.ErrUnavailable,
	"InternalServerException":              errs.ErrUnavailable,
	"RequestTimeout":                       errs.ErrUnavailable,
	"RequestTimeoutException":              errs.ErrUnavailable,
	"InsufficientInstanceCapacity":         errs.ErrUnavailable,
	"PriorRequestNotComplete":              errs.ErrUnavailable,
	"EC2ThrottledException":                errs.ErrUnavailable,
	"BandwidthLimitExceeded":               errs.ErrUnavailable,
	"RequestTimeTooSkewed":                 errs.ErrUnavailable,
	"IDPCommunicationError":                errs.ErrUnavailable,
	"ServerInternal":                       errs.ErrUnavailable,
	"Server.InternalError":                 errs.ErrUnavailable,
	"InsufficientAddressCapacity":          errs.ErrUnavailable,
	"InsufficientReservedInstanceCapacity": errs.ErrUnavailable,

	// authentication and authorisation
	"AuthFailure":                 errs.ErrPermissionDenied,
	"InvalidClientTokenId":        errs.ErrPermissionDenied,
	"SignatureDoesNotMatch":       errs.ErrPermissionDenied,
	"UnauthorizedOperation":       errs.ErrPermissionDenied,
	"UnauthorizedAccess":          errs.ErrPermissionDenied,
	"AccessDenied":                errs.ErrPermissionDenied,
	"AccessDeniedException":       errs.ErrPermissionDenied,
	"InvalidAccessKeyId":          errs.ErrPermissionDenied,
	"ExpiredToken":                errs.ErrPermissionDenied,
	"ExpiredTokenException":       errs.ErrPermissionDenied,
	"RequestExpired":              errs.ErrPermissionDenied,
	"InvalidToken":                errs.ErrPermissionDenied,
	"MissingAuthenticationToken":  errs.ErrPermissionDenied,
	"UnrecognizedClientException": errs.ErrPermissionDenied,
	"IncompleteSignature":         errs.ErrPermissionDenied,
	"OptInRequired":               errs.ErrPermissionDenied,
	"Blocked":                     errs.ErrPermissionDenied,
	"AllAccessDisabled":           errs.ErrPermissionDenied,
	"InvalidSecurity":             errs.ErrPermissionDenied,

	// not found
	"NoSuchBucket":              errs.ErrNotFound,
	"NoSuchKey":                 errs.ErrNotFound,
	"NoSuchUpload":              errs.ErrNotFound,
	"NotFound":                  errs.ErrNotFound,
	"ResourceNotFoundException": errs.ErrNotFound,
	"InvalidAMIID.Unavailable":  errs.ErrNotFound,

	// wrong state
	"IncorrectState":                  errs.ErrFailedPrecondition,
	"IncorrectInstanceState":          errs.ErrFailedPrecondition,
	"IncorrectSpotRequestState":       errs.ErrFailedPrecondition,
	"InvalidState":                    errs.ErrFailedPrecondition,
	"InvalidSnapshot.InUse":           errs.ErrFailedPrecondition,
	"VolumeInUse":                     errs.ErrFailedPrecondition,
	"ConflictException":               errs.ErrFailedPrecondition,
	"ConcurrentSnapshotLimitExceeded": errs.ErrFailedPrecondition,
	"SnapshotLimitExceeded":           errs.ErrFailedPrecondition,
	"VolumeLimitExceeded":             errs.ErrFailedPrecondition,
	"InstanceLimitExceeded":           errs.ErrFailedPrecondition,
	"ResourceLimitExceeded":           errs.ErrFailedPrecondition,
	"ServiceQuotaExceededException":   errs.ErrFailedPrecondition,
	"ResourceCountExceeded":           errs.ErrFailedPrecondition,
	"InvalidObjectState":              errs.ErrFailedPrecondition,
	"PreconditionFailed":              errs.ErrFailedPrecondition,
	"InvalidBucketState":              errs.ErrFailedPrecondition,
	"BucketNotEmpty":                  errs.ErrFailedPrecondition,

	// already exists
	"InvalidAMIName.Duplicate":    errs.ErrAlreadyExists,
	"InvalidKeyPair.Duplicate":    errs.ErrAlreadyExists,
	"InvalidGroup.Duplicate":      errs.ErrAlreadyExists,
	"BucketAlreadyExists":         errs.ErrAlreadyExists,
	"BucketAlreadyOwnedByYou":     errs.ErrAlreadyExists,
	"IdempotentParameterMismatch": errs.ErrConflict,

	// validation
	"InvalidParameter":            errs.ErrInvalidArgument,
	"InvalidParameterValue":       errs.ErrInvalidArgument,
	"InvalidParameterCombination": errs.ErrInvalidArgument,
	"InvalidParameterException":   errs.ErrInvalidArgument,
	"MissingParameter":            errs.ErrInvalidArgument,
	"UnknownParameter":            errs.ErrInvalidArgument,
	"ValidationException":         errs.ErrInvalidArgument,
	"ValidationError":             errs.ErrInvalidArgument,
	"InvalidRequest":              errs.ErrInvalidArgument,
	"InvalidArgument":             errs.ErrInvalidArgument,
	"InvalidInput":                errs.ErrInvalidArgument,
	"InvalidFilter":               errs.ErrInvalidArgument,
	"InvalidQueryParameter":       errs.ErrInvalidArgument,
	"MalformedQueryString":        errs.ErrInvalidArgument,
	"InvalidBlockDeviceMapping":   errs.ErrInvalidArgument,
	"EntityTooSmall":              errs.ErrInvalidArgument,
	"EntityTooLarge":              errs.ErrInvalidArgument,
	"InvalidPart":                 errs.ErrInvalidArgument,
	"InvalidPartOrder":            errs.ErrInvalidArgument,
	"InvalidDigest":               errs.ErrInvalidArgument,
	"BadDigest":                   errs.ErrInvalidArgument,
	"InvalidBucketName":           errs.ErrInvalidArgument,
	"KeyTooLongError":             errs.ErrInvalidArgument,
	"MalformedXML":                errs.ErrInvalidArgument,
	"Unsupported":                 errs.ErrUnimplemented,
	"UnsupportedOperation":        errs.ErrUnimplemented,
	"InvalidAction":               errs.ErrUnimplemented,
	"UnknownAction":               errs.ErrUnimplemented,
	"NotImplemented":              errs.ErrUnimplemented,
}

// sentinelOf returns the sentinel an AWS error code means, or nil.
func sentinelOf(code string) error {
	if s, ok := codes[code]; ok {
		return s
	}
	switch {
	case strings.HasSuffix(code, ".NotFound"), strings.HasSuffix(code, "NotFoundException"),
		strings.HasSuffix(code, "NotFound"):
		return errs.ErrNotFound
	case strings.HasSuffix(code, ".Malformed"), strings.HasSuffix(code, ".Invalid"),
		strings.HasPrefix(code, "InvalidParameter"):
		return errs.ErrInvalidArgument
	case strings.HasSuffix(code, ".InUse"), strings.HasSuffix(code, ".IncorrectState"):
		return errs.ErrFailedPrecondition
	case strings.HasSuffix(code, ".Duplicate"):
		return errs.ErrAlreadyExists
	}
	return nil
}

// sentinelOfStatus classifies an HTTP status when the body named no code.
func sentinelOfStatus(status int) error {
	switch {
	case status == 401, status == 403:
		return errs.ErrPermissionDenied
	case status == 404:
		return errs.ErrNotFound
	case status == 409, status == 412:
		return errs.ErrFailedPrecondition
	case status == 429:
		return errs.ErrUnavailable
	case status == 501:
		return errs.ErrUnimplemented
	case status >= 500:
		return errs.ErrUnavailable
	case status >= 400:
		return errs.ErrInvalidArgument
	}
	return nil
}

// Error is a classified AWS error: the code and message AWS sent, the
// sentinel they mean, and the SDK's error underneath.
type Error struct {
	// Op is the API operation ("DescribeInstances"), when known.
	Op string
	// Code is AWS's error code ("InvalidInstanceID.NotFound"), or "" for
	// transport faults.
	Code string
	// Message is AWS's message, or the transport fault.
	Message string
	// Status is the HTTP status, 0 if no response came.
	Status int
	kind   error
	err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	switch {
	case e.Code != "" && e.Message != "":
		fmt.Fprintf(&b, "%s: %s", e.Code, e.Message)
	case e.Code != "":
		b.WriteString(e.Code)
	case e.Message != "":
		b.WriteString(e.Message)
	case e.Status != 0:
		fmt.Fprintf(&b, "HTTP %d", e.Status)
	}
	if e.kind != nil {
		b.WriteString(": ")
		b.WriteString(e.kind.Error())
	}
	return b.String()
}

// Unwrap gives both the sentinel (for errs.CodeOf) and the SDK's error
// (for errors.As on SDK types).
func (e *Error) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// Classify wraps err with the sentinel of internal/errs that its AWS error
// code, HTTP status or transport fault means. It returns nil for nil, and
// context errors and errors already classified unchanged.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var ae *Error
	if errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errs.CodeOf(err) != errs.Unknown {
		return err
	}
	e := &Error{err: err}
	var oe *smithy.OperationError
	if errors.As(err, &oe) {
		e.Op = oe.OperationName
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		e.Status = re.HTTPStatusCode()
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		e.Code, e.Message = api.ErrorCode(), api.ErrorMessage()
		e.kind = sentinelOf(e.Code)
		if e.kind == nil && e.Status != 0 {
			e.kind = sentinelOfStatus(e.Status)
		}
		if e.kind == nil && api.ErrorFault() == smithy.FaultServer {
			e.kind = errs.ErrUnavailable
		}
		return e
	}
	if e.Status != 0 {
		e.kind = sentinelOfStatus(e.Status)
		e.Message = fmt.Sprintf("HTTP %d", e.Status)
		return e
	}
	if isTransport(err) {
		e.kind = errs.ErrUnavailable
		e.Message = transportMessage(err)
		return e
	}
	if strings.Contains(err.Error(), "retry quota exceeded") {
		e.kind = errs.ErrUnavailable
		e.Message = "retry quota exceeded"
		return e
	}
	e.Message = err.Error()
	return e
}

// isTransport reports whether err is a broken or refused connection, a
// response cut short, or a network timeout.
func isTransport(err error) bool {
	var ne net.Error
	var ue *url.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return true
	case errors.As(err, &oe), errors.As(err, &ue):
		return true
	case errors.As(err, &ne):
		return true
	}
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe") ||
		strings.Contains(s, "use of closed network connection") || strings.Contains(s, "connection refused")
}

func transportMessage(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// Retryable reports whether err is worth another attempt: it is classified
// Unavailable and is no context error.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return errs.CodeOf(Classify(err)) == errs.Unavailable
}

// CodeOf is errs.CodeOf of Classify(err): the code an AWS error means.
func CodeOf(err error) errs.Code { return errs.CodeOf(Classify(err)) }

// APICode returns AWS's error code in err, or "".
func APICode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}
