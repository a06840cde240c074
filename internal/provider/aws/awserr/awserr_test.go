package awserr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/ferry-project/ferry/internal/errs"
)

// sdkErr builds an error shaped as aws-sdk-go-v2 returns it.
func sdkErr(op string, status int, code, msg string) error {
	var inner error = &smithy.GenericAPIError{Code: code, Message: msg}
	if code == "" {
		inner = errors.New("http response error")
	}
	return &smithy.OperationError{ServiceID: "EC2", OperationName: op, Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: inner},
		RequestID:     "req-1",
	}}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		want      errs.Code
		retryable bool
	}{
		{"nil", nil, errs.Unknown, false},
		{"throttle ec2", sdkErr("RunInstances", 503, "RequestLimitExceeded", "slow"), errs.Unavailable, true},
		{"throttle sts", sdkErr("GetCallerIdentity", 400, "Throttling", "Rate exceeded"), errs.Unavailable, true},
		{"slowdown s3", sdkErr("UploadPart", 503, "SlowDown", "Please reduce your request rate."), errs.Unavailable, true},
		{"ebs throttled", sdkErr("PutSnapshotBlock", 400, "RequestThrottledException", "x"), errs.Unavailable, true},
		{"internal error", sdkErr("DescribeInstances", 500, "InternalError", "oops"), errs.Unavailable, true},
		{"bare 503", sdkErr("GetObject", 503, "", ""), errs.Unavailable, true},
		{"bare 502", sdkErr("GetObject", 502, "", ""), errs.Unavailable, true},
		{"auth failure", sdkErr("DescribeInstances", 401, "AuthFailure", "AWS was not able to validate the provided access credentials"), errs.PermissionDenied, false},
		{"bad key id", sdkErr("GetCallerIdentity", 403, "InvalidClientTokenId", "x"), errs.PermissionDenied, false},
		{"signature", sdkErr("PutObject", 403, "SignatureDoesNotMatch", "x"), errs.PermissionDenied, false},
		{"ebs access denied", sdkErr("StartSnapshot", 403, "AccessDeniedException", "x"), errs.PermissionDenied, false},
		{"unauthorized", sdkErr("RunInstances", 403, "UnauthorizedOperation", "x"), errs.PermissionDenied, false},
		{"bare 403", sdkErr("HeadObject", 403, "", ""), errs.PermissionDenied, false},
		{"instance not found", sdkErr("DescribeInstances", 400, "InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist"), errs.NotFound, false},
		{"ami not found", sdkErr("RunInstances", 400, "InvalidAMIID.NotFound", "x"), errs.NotFound, false},
		{"snapshot not found", sdkErr("DeleteSnapshot", 400, "InvalidSnapshot.NotFound", "x"), errs.NotFound, false},
		{"no such bucket", sdkErr("CreateMultipartUpload", 404, "NoSuchBucket", "x"), errs.NotFound, false},
		{"ebs not found", sdkErr("ListSnapshotBlocks", 404, "ResourceNotFoundException", "x"), errs.NotFound, false},
		{"bare 404", sdkErr("HeadObject", 404, "", ""), errs.NotFound, false},
		{"import task not found", sdkErr("DescribeImportSnapshotTasks", 400, "InvalidConversionTaskId.NotFound", "x"), errs.NotFound, false},
		{"incorrect state", sdkErr("StopInstances", 400, "IncorrectInstanceState", "x"), errs.FailedPrecondition, false},
		{"incorrect state plain", sdkErr("DeleteSnapshot", 400, "IncorrectState", "x"), errs.FailedPrecondition, false},
		{"snapshot in use", sdkErr("DeleteSnapshot", 400, "InvalidSnapshot.InUse", "x"), errs.FailedPrecondition, false},
		{"ebs conflict", sdkErr("StartSnapshot", 409, "ConflictException", "x"), errs.FailedPrecondition, false},
		{"validation", sdkErr("PutSnapshotBlock", 400, "ValidationException", "x"), errs.InvalidArgument, false},
		{"param", sdkErr("RunInstances", 400, "InvalidParameterValue", "x"), errs.InvalidArgument, false},
		{"malformed", sdkErr("RunInstances", 400, "InvalidAMIID.Malformed", "x"), errs.InvalidArgument, false},
		{"entity too small", sdkErr("CompleteMultipartUpload", 400, "EntityTooSmall", "x"), errs.InvalidArgument, false},
		{"duplicate", sdkErr("RegisterImage", 400, "InvalidAMIName.Duplicate", "x"), errs.AlreadyExists, false},
		{"unknown action", sdkErr("ImportImage", 400, "UnknownAction", "x"), errs.Unimplemented, false},
		{"unknown code 400", sdkErr("X", 400, "Weird.Code", "x"), errs.InvalidArgument, false},
		{"conn reset", &smithy.OperationError{OperationName: "GetObject", Err: fmt.Errorf("read: %w", syscall.ECONNRESET)}, errs.Unavailable, true},
		{"conn refused", &smithy.OperationError{OperationName: "GetObject", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}, errs.Unavailable, true},
		{"cut short", fmt.Errorf("body: %w", io.ErrUnexpectedEOF), errs.Unavailable, true},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), errs.Canceled, false},
		{"canceled transport", &smithy.OperationError{OperationName: "GetObject", Err: fmt.Errorf("%w; %w", context.Canceled, syscall.ECONNRESET)}, errs.Canceled, false},
		{"already classified", fmt.Errorf("x: %w", errs.ErrNotFound), errs.NotFound, false},
		{"plain", errors.New("something"), errs.Unknown, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err)
			if c := errs.CodeOf(got); c != tt.want {
				t.Fatalf("CodeOf(Classify(%v)) = %v, want %v", tt.err, c, tt.want)
			}
			if r := Retryable(tt.err); r != tt.retryable {
				t.Fatalf("Retryable = %v, want %v", r, tt.retryable)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	err := Classify(sdkErr("DescribeInstances", 400, "InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist"))
	want := "DescribeInstances: InvalidInstanceID.NotFound: The instance ID 'i-1' does not exist: not found"
	if err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != "InvalidInstanceID.NotFound" {
		t.Fatalf("errors.As: %+v", ae)
	}
	var api smithy.APIError
	if !errors.As(err, &api) {
		t.Fatal("SDK error lost")
	}
	if Classify(err) != err {
		t.Fatal("classifying twice wraps twice")
	}
}

func TestBackoffDo(t *testing.T) {
	throttle := sdkErr("PutSnapshotBlock", 503, "RequestLimitExceeded", "slow")
	denied := sdkErr("PutSnapshotBlock", 403, "AuthFailure", "no")
	tests := []struct {
		name      string
		errs      []error // returned by successive calls; nil after the list
		attempts  int
		wantCalls int
		want      errs.Code
	}{
		{"success", nil, 5, 1, errs.Unknown},
		{"throttled then ok", []error{throttle, throttle}, 5, 3, errs.Unknown},
		{"gives up", []error{throttle, throttle, throttle, throttle}, 3, 3, errs.Unavailable},
		{"auth not retried", []error{denied, nil}, 5, 1, errs.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := Backoff{Attempts: tt.attempts, Base: time.Second, Max: 10 * time.Second}
				calls := 0
				start := time.Now()
				err := b.Do(t.Context(), func(context.Context) error {
					calls++
					if calls <= len(tt.errs) {
						return tt.errs[calls-1]
					}
					return nil
				})
				if calls != tt.wantCalls {
					t.Fatalf("%d calls, want %d", calls, tt.wantCalls)
				}
				if tt.want == errs.Unknown && err != nil || tt.want != errs.Unknown && errs.CodeOf(err) != tt.want {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				// full jitter: the waits are at most 1 s, 2 s, 4 s, ...
				var ceil time.Duration
				for n := 1; n < calls; n++ {
					ceil += min(time.Second<<(n-1), 10*time.Second)
				}
				if el := time.Since(start); el > ceil {
					t.Fatalf("waited %v, more than %v", el, ceil)
				}
			})
		})
	}
}

func TestBackoffStopsOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		b := Backoff{Attempts: 100, Base: time.Hour, Max: time.Hour}
		calls := 0
		go func() {
			time.Sleep(time.Minute) // fake time inside the bubble
			cancel()
		}()
		err := b.Do(ctx, func(context.Context) error {
			calls++
			return sdkErr("X", 503, "SlowDown", "")
		})
		if !errors.Is(err, context.Canceled) || calls > 2 {
			t.Fatalf("err = %v after %d calls", err, calls)
		}
	})
}

func TestDelayBounds(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	for n := 1; n < 40; n++ {
		ceil := min(b.Base<<min(n-1, 20), b.Max)
		for range 50 {
			if d := b.Delay(n); d <= 0 || d > ceil {
				t.Fatalf("Delay(%d) = %v, ceiling %v", n, d, ceil)
			}
		}
	}
}

func TestPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 0
		start := time.Now()
		err := Poll(t.Context(), time.Second, 4*time.Second, func(context.Context) (bool, error) {
			n++
			return n == 5, nil
		})
		if err != nil || n != 5 {
			t.Fatalf("err %v after %d", err, n)
		}
		if el := time.Since(start); el != (1+2+4+4)*time.Second {
			t.Fatalf("polled for %v", el)
		}
	})
}
