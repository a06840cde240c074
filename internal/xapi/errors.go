package xapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// Error is a failure reported by xapi: an error code such as HANDLE_INVALID
// and its parameters, as the datamodel documents them per message. It
// wraps the internal/errs code that CodeOf gives, so errs.CodeOf and
// errors.Is work on it.
type Error struct {
	// Code is xapi's error name (HANDLE_INVALID, VM_BAD_POWER_STATE, ...).
	Code string
	// Params are the error's parameters, in order. Parameters that carry
	// a secret (the session of SESSION_INVALID, a password) are redacted.
	Params []string
	// Method is the call that failed ("VM.start"), or the HTTP handler
	// ("PUT /import_raw_vdi").
	Method string
	// RPCCode is the JSON-RPC 2.0 error code (xapi sends a non-zero
	// number), 0 for JSON-RPC 1.0 errors.
	RPCCode int64
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("xapi ")
	if e.Method != "" {
		b.WriteString(e.Method)
		b.WriteString(": ")
	}
	b.WriteString(e.Code)
	if len(e.Params) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(e.Params, ", "))
		b.WriteString(")")
	}
	if c := CodeOf(e.Code); c != errs.Unknown {
		b.WriteString(": ")
		b.WriteString(c.String())
	}
	return b.String()
}

// Unwrap returns the errs sentinel of the code (nil for codes ferry does
// not classify), or context.Canceled for TASK_CANCELLED.
func (e *Error) Unwrap() error {
	if e.Code == "TASK_CANCELLED" {
		return context.Canceled
	}
	return sentinel(CodeOf(e.Code))
}

// Is makes errors.Is(err, &Error{Code: "X"}) match on the code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Params == nil
}

// HasCode reports whether err is an *Error with the given xapi code.
func HasCode(err error, code string) bool {
	var xe *Error
	return errors.As(err, &xe) && xe.Code == code
}

func sentinel(c errs.Code) error {
	switch c {
	case errs.NotFound:
		return errs.ErrNotFound
	case errs.AlreadyExists:
		return errs.ErrAlreadyExists
	case errs.InvalidArgument:
		return errs.ErrInvalidArgument
	case errs.FailedPrecondition:
		return errs.ErrFailedPrecondition
	case errs.Conflict:
		return errs.ErrConflict
	case errs.Unavailable:
		return errs.ErrUnavailable
	case errs.PermissionDenied:
		return errs.ErrPermissionDenied
	case errs.Unimplemented:
		return errs.ErrUnimplemented
	case errs.Corrupt:
		return errs.ErrCorrupt
	case errs.DataLoss:
		return errs.ErrDataLoss
	}
	return nil
}

// codes classifies xapi's error names. Names not listed fall back on
// their suffix (…_NOT_FOUND, …_ALREADY_EXISTS, …) and then to Unknown.
var codes = map[string]errs.Code{
	// Credentials and rights.
	"SESSION_AUTHENTICATION_FAILED": errs.PermissionDenied,
	"SESSION_INVALID":               errs.PermissionDenied, // only seen when logging in again failed
	"SESSION_NOT_REGISTERED":        errs.PermissionDenied,
	"RBAC_PERMISSION_DENIED":        errs.PermissionDenied,
	"PERMISSION_DENIED":             errs.PermissionDenied,
	"USER_IS_NOT_LOCAL_SUPERUSER":   errs.PermissionDenied,
	"AUTH_IS_DISABLED":              errs.PermissionDenied,
	"HOST_IS_SLAVE":                 errs.Unavailable, // followed by the client; seen only if that failed
	// Unknown objects.
	"HANDLE_INVALID":         errs.NotFound,
	"UUID_INVALID":           errs.NotFound,
	"OBJECT_NOLONGER_EXISTS": errs.NotFound,
	"VDI_MISSING":            errs.NotFound,
	"VDI_NO_CBT_METADATA":    errs.NotFound,
	"DEFAULT_SR_NOT_FOUND":   errs.NotFound,
	"SR_NOT_FOUND":           errs.NotFound,
	"VM_NOT_FOUND":           errs.NotFound,
	// Bad requests.
	"MESSAGE_PARAMETER_COUNT_MISMATCH":   errs.InvalidArgument,
	"FIELD_TYPE_ERROR":                   errs.InvalidArgument,
	"INVALID_VALUE":                      errs.InvalidArgument,
	"VALUE_NOT_SUPPORTED":                errs.InvalidArgument,
	"MAP_DUPLICATE_KEY":                  errs.InvalidArgument,
	"INVALID_DEVICE":                     errs.InvalidArgument,
	"MAC_INVALID":                        errs.InvalidArgument,
	"VDI_TOO_LARGE":                      errs.InvalidArgument,
	"VDI_TOO_SMALL":                      errs.InvalidArgument,
	"VDI_INCOMPATIBLE_TYPE":              errs.InvalidArgument,
	"MEMORY_CONSTRAINT_VIOLATION":        errs.InvalidArgument,
	"MEMORY_CONSTRAINT_VIOLATION_ORDER":  errs.InvalidArgument,
	"MEMORY_CONSTRAINT_VIOLATION_MAXPIN": errs.InvalidArgument,
	"VCPU_CONSTRAINT_VIOLATION":          errs.InvalidArgument,
	"VM_HVM_REQUIRED":                    errs.InvalidArgument,
	"IMPORT_ERROR":                       errs.InvalidArgument,
	"IMPORT_INCOMPATIBLE_VERSION":        errs.InvalidArgument,
	// Not here.
	"MESSAGE_METHOD_UNKNOWN":                       errs.Unimplemented,
	"MESSAGE_DEPRECATED":                           errs.Unimplemented,
	"MESSAGE_REMOVED":                              errs.Unimplemented,
	"SR_OPERATION_NOT_SUPPORTED":                   errs.Unimplemented,
	"VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED":       errs.Unimplemented,
	"NOT_IMPLEMENTED":                              errs.Unimplemented,
	"IMPORT_ERROR_CANNOT_HANDLE_CHUNKED":           errs.Unimplemented,
	"VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION": errs.FailedPrecondition,
	// Wrong state.
	"VM_BAD_POWER_STATE":          errs.FailedPrecondition,
	"VM_IS_TEMPLATE":              errs.FailedPrecondition,
	"VM_IS_SNAPSHOT":              errs.FailedPrecondition,
	"VM_MISSING_PV_DRIVERS":       errs.FailedPrecondition,
	"VM_LACKS_FEATURE":            errs.FailedPrecondition,
	"VM_LACKS_FEATURE_SHUTDOWN":   errs.FailedPrecondition,
	"VM_REQUIRES_SR":              errs.FailedPrecondition,
	"VM_NO_EMPTY_CD_VBD":          errs.FailedPrecondition,
	"OPERATION_NOT_ALLOWED":       errs.FailedPrecondition,
	"OPERATION_BLOCKED":           errs.FailedPrecondition,
	"VDI_IN_USE":                  errs.FailedPrecondition,
	"VDI_IS_A_PHYSICAL_DEVICE":    errs.FailedPrecondition,
	"VDI_CBT_ENABLED":             errs.FailedPrecondition,
	"VDI_NOT_AVAILABLE":           errs.FailedPrecondition,
	"SR_FULL":                     errs.FailedPrecondition,
	"SR_NOT_ATTACHED":             errs.FailedPrecondition,
	"SR_HAS_NO_PBDS":              errs.FailedPrecondition,
	"HOST_NOT_ENOUGH_FREE_MEMORY": errs.FailedPrecondition,
	"LICENCE_RESTRICTION":         errs.FailedPrecondition,
	"FEATURE_RESTRICTED":          errs.FailedPrecondition,
	"VBD_NOT_EMPTY":               errs.FailedPrecondition,
	"VBD_IS_EMPTY":                errs.FailedPrecondition,
	"DEVICE_ALREADY_ATTACHED":     errs.FailedPrecondition,
	"DEVICE_ALREADY_DETACHED":     errs.FailedPrecondition,
	"DEVICE_ALREADY_EXISTS":       errs.AlreadyExists,
	"OTHER_OPERATION_IN_PROGRESS": errs.Conflict,
	// Transient.
	"HOST_OFFLINE":                   errs.Unavailable,
	"HOST_STILL_BOOTING":             errs.Unavailable,
	"HOST_NOT_LIVE":                  errs.Unavailable,
	"HOST_HAS_NO_MANAGEMENT_IP":      errs.Unavailable,
	"HOST_CANNOT_ATTACH_NETWORK":     errs.Unavailable,
	"HOST_UNKNOWN_TO_MASTER":         errs.Unavailable,
	"TOO_BUSY":                       errs.Unavailable,
	"TOO_MANY_PENDING_TASKS":         errs.Unavailable,
	"EVENTS_LOST":                    errs.Unavailable,
	"EVENT_FROM_TOKEN_PARSE_FAILURE": errs.InvalidArgument,
	"VDI_IO_ERROR":                   errs.Unavailable,
}

// CodeOf classifies an xapi error name.
func CodeOf(code string) errs.Code {
	if c, ok := codes[code]; ok {
		return c
	}
	switch {
	case strings.HasSuffix(code, "_NOT_FOUND"), strings.HasSuffix(code, "_DOES_NOT_EXIST"), strings.HasSuffix(code, "_MISSING"):
		return errs.NotFound
	case strings.HasSuffix(code, "_ALREADY_EXISTS"), strings.HasSuffix(code, "_EXISTS"):
		return errs.AlreadyExists
	case strings.HasSuffix(code, "_NOT_SUPPORTED"), strings.HasSuffix(code, "_UNSUPPORTED"):
		return errs.Unimplemented
	case strings.HasSuffix(code, "_IN_PROGRESS"):
		return errs.Conflict
	case strings.HasSuffix(code, "_BAD_POWER_STATE"), strings.HasSuffix(code, "_IN_USE"):
		return errs.FailedPrecondition
	case strings.HasSuffix(code, "_INVALID"):
		return errs.InvalidArgument
	}
	return errs.Unknown
}

// transportError wraps a failure to reach the server (or a broken
// connection) as Unavailable, naming what was being done. Context errors
// are passed through wrapped, so that callers see Canceled.
func transportError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if isCertError(err) {
		return fmt.Errorf("%s: %v: %w", what, innerError(err), errs.ErrPermissionDenied)
	}
	inner := innerError(err)
	if c := errs.CodeOf(inner); c != errs.Unknown && c != errs.Canceled {
		// The request body (ferry's own reader) failed: keep its code.
		return fmt.Errorf("%s: %w", what, inner)
	}
	return fmt.Errorf("%s: %v: %w", what, inner, errs.ErrUnavailable)
}
