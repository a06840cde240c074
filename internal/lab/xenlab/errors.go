package xenlab

import (
	"errors"
	"fmt"
	"strings"
)

// apiError is an XAPI error: a code such as HANDLE_INVALID and its string
// parameters, as xapi puts them on the wire.
type apiError struct {
	Code   string
	Params []string
}

func (e *apiError) Error() string {
	if len(e.Params) == 0 {
		return e.Code
	}
	return e.Code + ": " + strings.Join(e.Params, ", ")
}

func apiErr(code string, params ...string) *apiError {
	if params == nil {
		params = []string{}
	}
	return &apiError{Code: code, Params: params}
}

// The error codes the lab raises (xapi-consts/api_errors.ml).
const (
	errHandleInvalid       = "HANDLE_INVALID"
	errUUIDInvalid         = "UUID_INVALID"
	errSessionInvalid      = "SESSION_INVALID"
	errAuthFailed          = "SESSION_AUTHENTICATION_FAILED"
	errMethodUnknown       = "MESSAGE_METHOD_UNKNOWN"
	errParamCount          = "MESSAGE_PARAMETER_COUNT_MISMATCH"
	errFieldType           = "FIELD_TYPE_ERROR"
	errNotImplemented      = "NOT_IMPLEMENTED"
	errInternal            = "INTERNAL_ERROR"
	errBadPowerState       = "VM_BAD_POWER_STATE"
	errVMIsTemplate        = "VM_IS_TEMPLATE"
	errOperationNotAllowed = "OPERATION_NOT_ALLOWED"
	errOtherOperation      = "OTHER_OPERATION_IN_PROGRESS"
	errVDIInUse            = "VDI_IN_USE"
	errVDIIncompatibleType = "VDI_INCOMPATIBLE_TYPE"
	errVDINoCBTMetadata    = "VDI_NO_CBT_METADATA"
	errVDITooLarge         = "VDI_TOO_LARGE"
	errMapDuplicateKey     = "MAP_DUPLICATE_KEY"
	errInvalidValue        = "INVALID_VALUE"
	errTaskCancelled       = "TASK_CANCELLED"
	errEventSubscription   = "EVENT_SUBSCRIPTION_PARSE_FAILURE"
	errEventToken          = "EVENT_FROM_TOKEN_PARSE_FAILURE"
	errDeviceAlreadyExists = "DEVICE_ALREADY_EXISTS"
	errSRBackendFailureCBT = "SR_BACKEND_FAILURE_460"
	errImportError         = "IMPORT_ERROR"
	errInvalidDevice       = "INVALID_DEVICE"
	errNetworkContainsVIF  = "NETWORK_CONTAINS_VIF"
)

// asAPIError turns any error into the XAPI error reported for it:
// apiErrors as they are, anything else as INTERNAL_ERROR with its message.
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return apiErr(errInternal, err.Error())
}

func internalErr(format string, a ...any) *apiError {
	return apiErr(errInternal, fmt.Sprintf(format, a...))
}
