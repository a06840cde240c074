// Package xapi is ferry's client for XAPI, the management API of XenServer
// and XCP-ng pools.
//
// It speaks JSON-RPC 2.0 over HTTP(S) (POST /jsonrpc) as the xen-api wire
// protocol documents it, and moves disk data over the same host's HTTP
// handlers (/export_raw_vdi, /import_raw_vdi, /export, /import). Nothing in
// it depends on ferry's lab server: it is written against xapi's documented
// behaviour and checked against the official SDK's recorded transcripts.
//
// # Calls
//
// [Client.Call] sends one call and decodes its result into a Go value.
// The session reference is prepended to the parameters of every call but
// session.login_with_password. Typed wrappers for the classes ferry uses
// are generated from the datamodel (records.gen.go, calls.gen.go): for
// example c.VM().GetAllRecords(ctx) or c.VDI().AsyncSnapshot(ctx, vdi, nil).
//
// Responses decode leniently, because real pools and the SDK's transcripts
// vary: unknown fields are ignored, missing fields stay zero, a field of an
// unexpected type is left zero, ints and floats may come as strings, floats
// as Infinity/NaN (bare or quoted), and datetimes in every form xapi has
// used (20240101T00:00:00Z, with or without Z, ISO-8601 with dashes, or
// seconds since the epoch).
//
// # Errors
//
// A failed call returns an [*Error] holding xapi's error code and
// parameters; it wraps the matching internal/errs code (HANDLE_INVALID is
// NotFound, SESSION_AUTHENTICATION_FAILED PermissionDenied, and so on, see
// [CodeOf]). Connection failures and HTTP 5xx are errs.ErrUnavailable.
//
// # Sessions
//
// [Dial] logs in with session.login_with_password (originator "ferry").
// A call that fails with SESSION_INVALID logs in again and is retried once;
// a host that answers HOST_IS_SLAVE is left for the pool master it names,
// keeping the scheme and port. Passwords and session references are held as
// [Secret] values and never appear in logs or error strings (transfer URLs
// carry the session in their query, so errors name transfers by path only).
//
// # TLS
//
// Options choose how a pool's certificate is checked: against a CA file,
// against pinned SHA-256 fingerprints of the leaf certificate (what xe and
// XenCenter show), or not at all when Insecure is set explicitly.
package xapi

//go:generate go run ./gen -in ../../../shared/xapi/xenapi.json -out .
