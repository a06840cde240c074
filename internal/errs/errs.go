// Package errs holds ferry's small set of error codes.
//
// Errors are plain Go errors wrapped with fmt.Errorf and %w around one of the
// sentinel values below, for example
//
//	fmt.Errorf("qcow2 %s: L2 table at %#x beyond end of file: %w", name, off, errs.ErrCorrupt)
//
// The API maps codes to HTTP statuses and the CLI maps them to exit codes with
// [CodeOf]; nothing else inspects error text.
package errs

import (
	"context"
	"errors"
)

// Code classifies an error for callers that must decide what to do with it:
// retry, show to a user, map to an HTTP status or an exit code.
type Code int

// The codes. Unknown is what [CodeOf] returns for an error that wraps none of
// the sentinels.
const (
	Unknown Code = iota
	NotFound
	AlreadyExists
	InvalidArgument
	FailedPrecondition
	Conflict
	Unavailable // transient: the only code that may be retried
	PermissionDenied
	Unimplemented
	Corrupt // stored data does not follow its format
	DataLoss
	Canceled
)

var names = [...]string{
	Unknown:            "unknown",
	NotFound:           "not found",
	AlreadyExists:      "already exists",
	InvalidArgument:    "invalid argument",
	FailedPrecondition: "failed precondition",
	Conflict:           "conflict",
	Unavailable:        "unavailable",
	PermissionDenied:   "permission denied",
	Unimplemented:      "not supported",
	Corrupt:            "corrupt image",
	DataLoss:           "data loss",
	Canceled:           "canceled",
}

func (c Code) String() string {
	if c < 0 || int(c) >= len(names) {
		return "unknown"
	}
	return names[c]
}

type codeError struct{ code Code }

func (e *codeError) Error() string { return e.code.String() }

// Sentinels to wrap with %w.
var (
	ErrNotFound           error = &codeError{NotFound}
	ErrAlreadyExists      error = &codeError{AlreadyExists}
	ErrInvalidArgument    error = &codeError{InvalidArgument}
	ErrFailedPrecondition error = &codeError{FailedPrecondition}
	ErrConflict           error = &codeError{Conflict}
	ErrUnavailable        error = &codeError{Unavailable}
	ErrPermissionDenied   error = &codeError{PermissionDenied}
	ErrUnimplemented      error = &codeError{Unimplemented}
	ErrCorrupt            error = &codeError{Corrupt}
	ErrDataLoss           error = &codeError{DataLoss}
)

// CodeOf returns the code of the first sentinel that err wraps. Context
// cancellation and deadline errors report Canceled.
func CodeOf(err error) Code {
	if err == nil {
		return Unknown
	}
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.code
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Canceled
	}
	return Unknown
}

// Is reports whether err carries code c.
func Is(err error, c Code) bool { return err != nil && CodeOf(err) == c }
