package xapi

import (
	"context"
	"fmt"
	"regexp"

	"github.com/ferry-project/ferry/internal/errs"
)

// Calls whose shape differs between xapi versions, written by hand.

// Snapshot calls VM.snapshot(vm, new_name, ignore_vdis). Pools older than
// the datamodel's ignore_vdis parameter answer
// MESSAGE_PARAMETER_COUNT_MISMATCH; the call is then sent again without it
// when ignore is empty.
func (x VMClass) Snapshot(ctx context.Context, vm VMRef, newName string, ignore []VDIRef) (VMRef, error) {
	var r VMRef
	err := x.c.Call(ctx, "VM.snapshot", []any{wireValue(vm), newName, wireValue(ignore)}, &r)
	if HasCode(err, "MESSAGE_PARAMETER_COUNT_MISMATCH") && len(ignore) == 0 {
		err = x.c.Call(ctx, "VM.snapshot", []any{wireValue(vm), newName}, &r)
	}
	return r, err
}

// AsyncSnapshot is Snapshot as a task.
func (x VMClass) AsyncSnapshot(ctx context.Context, vm VMRef, newName string, ignore []VDIRef) (TaskRef, error) {
	var r TaskRef
	err := x.c.Call(ctx, "Async.VM.snapshot", []any{wireValue(vm), newName, wireValue(ignore)}, &r)
	if HasCode(err, "MESSAGE_PARAMETER_COUNT_MISMATCH") && len(ignore) == 0 {
		err = x.c.Call(ctx, "Async.VM.snapshot", []any{wireValue(vm), newName}, &r)
	}
	return r, err
}

// refPattern matches object references inside task results, which xapi
// writes as an XML-RPC value ("<value>OpaqueRef:…</value>", or an array of
// them for VM imports).
var refPattern = regexp.MustCompile(`OpaqueRef:[0-9A-Za-z._-]+`)

// ResultRefs returns the object references in a task's result, in order
// (xapi writes results as XML-RPC values; a JSON string or bare reference
// works too).
func ResultRefs(result string) []string {
	var out []string
	for _, m := range refPattern.FindAllString(result, -1) {
		if m != NullRef {
			out = append(out, m)
		}
	}
	return out
}

// VMByID finds a VM by UUID or reference.
func (c *Client) VMByID(ctx context.Context, id string) (VMRef, error) {
	if isRefString(id) {
		return VMRef(id), nil
	}
	return c.VM().GetByUUID(ctx, id)
}

// VDIByID finds a VDI by UUID or reference.
func (c *Client) VDIByID(ctx context.Context, id string) (VDIRef, error) {
	if isRefString(id) {
		return VDIRef(id), nil
	}
	return c.VDI().GetByUUID(ctx, id)
}

func isRefString(s string) bool {
	return len(s) > len("OpaqueRef:") && s[:len("OpaqueRef:")] == "OpaqueRef:"
}

// checkRef refuses an empty or null reference argument before any call.
func checkRef(what, ref string) error {
	if isNullRef(ref) {
		return fmt.Errorf("xapi: no %s given: %w", what, errs.ErrInvalidArgument)
	}
	return nil
}
