// Package store is the control plane's state: sites, the VM inventory, job
// bookkeeping, job events, API tokens and the audit log.
//
// A [Store] is used through transactions only, as in containerd's metadata
// store: View runs fn in a read-only transaction, Update in a read-write one
// that commits when fn returns nil and rolls back otherwise. Tx methods must
// not be used after fn returns, and a Tx is not safe for concurrent use.
//
// Two backends share one schema and one set of queries (portable SQL with
// "?" placeholders, rewritten for PostgreSQL in one place, [dialect.rebind]):
//
//   - SQLite (modernc.org/sqlite, pure Go) in the data directory: the
//     default for one node. WAL journal, a busy timeout, and write
//     transactions that take the write lock when they begin (BEGIN
//     IMMEDIATE), so that two writers never deadlock on a lock upgrade.
//   - PostgreSQL (pgx) given by a postgres:// URL: for several nodes
//     (ferry serve plus ferry worker processes).
//
// The schema is versioned: migrations are embedded .sql files, one per
// dialect (migrations/<dialect>/NNNN_name.sql), applied in order and
// recorded in schema_migrations.
//
// Errors wrap internal/errs codes: NotFound for a missing row,
// AlreadyExists for a duplicate key, Unavailable for a database that cannot
// be reached or is busy.
package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/ferry-project/ferry/internal/core"
)

// Store holds the control plane's state.
type Store interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed when fn
	// returns nil.
	Update(ctx context.Context, fn func(Tx) error) error
	// Dialect is "sqlite" or "postgres".
	Dialect() string
	// Close releases the database.
	Close() error
}

// Tx is one transaction. Methods that read a single row return an error
// wrapping errs.ErrNotFound when it is missing.
type Tx interface {
	// Sites.
	CreateSite(ctx context.Context, s Site) error
	UpdateSite(ctx context.Context, s Site) error
	Site(ctx context.Context, name core.SiteName) (Site, error)
	Sites(ctx context.Context) ([]Site, error)
	// DeleteSite removes the site and its inventory.
	DeleteSite(ctx context.Context, name core.SiteName) error

	// Inventory.
	// ReplaceInventory makes recs the whole inventory of site.
	ReplaceInventory(ctx context.Context, site core.SiteName, recs []InventoryRecord) error
	PutInventory(ctx context.Context, rec InventoryRecord) error
	DeleteInventory(ctx context.Context, site core.SiteName, id core.VMID) error
	// Inventory calls fn for each record matching f, ordered by site and
	// name, on the caller's goroutine.
	Inventory(ctx context.Context, f InventoryFilter, fn func(InventoryRecord) error) error
	// InventoryGen is a number that changes whenever the inventory does
	// (any site, any node): a cache of the inventory is good while it
	// stays the same.
	InventoryGen(ctx context.Context) (int64, error)

	// Jobs.
	CreateJob(ctx context.Context, j Job) error
	Job(ctx context.Context, id string) (Job, error)
	// LockJob reads a job and locks its row until the transaction ends
	// (SELECT ... FOR UPDATE on PostgreSQL; SQLite write transactions
	// are serialised already). Use it before PutJob.
	LockJob(ctx context.Context, id string) (Job, error)
	// PutJob writes every mutable column of j.
	PutJob(ctx context.Context, j Job) error
	Jobs(ctx context.Context, f JobFilter) ([]Job, error)
	// JobCounts counts jobs by kind and state.
	JobCounts(ctx context.Context) ([]JobCount, error)

	// Events.
	// AppendEvent stores e and returns its sequence number.
	AppendEvent(ctx context.Context, e Event) (int64, error)
	Events(ctx context.Context, f EventFilter) ([]Event, error)
	// LastEventSeq is the newest event's sequence number (0 when none).
	LastEventSeq(ctx context.Context) (int64, error)

	// Tokens.
	CreateToken(ctx context.Context, t Token) error
	TokenByHash(ctx context.Context, hash string) (Token, error)
	Tokens(ctx context.Context) ([]Token, error)
	// RevokeToken marks the token revoked at the given time.
	RevokeToken(ctx context.Context, id string, at time.Time) error

	// Audit log (the hash chain itself is internal/audit's business).
	// AuditHead reads and locks the chain head: the last sequence number
	// and hash.
	AuditHead(ctx context.Context) (seq int64, hash string, err error)
	// AppendAudit inserts a and moves the head to it.
	AppendAudit(ctx context.Context, a AuditRow) error
	// Audit calls fn for each row with seq > after, in order.
	Audit(ctx context.Context, after int64, limit int, fn func(AuditRow) error) error
}

// Site is a registered site. Credentials are sealed (encrypted) by the
// caller; the store never sees them in clear.
type Site struct {
	Name        core.SiteName     `json:"name"`
	Kind        string            `json:"kind"`
	Endpoint    string            `json:"endpoint"`
	Config      map[string]string `json:"config,omitempty"`
	Credentials []byte            `json:"-"`
	Created     time.Time         `json:"created"`
	Updated     time.Time         `json:"updated"`
}

// InventoryRecord is one VM as last seen on its site.
type InventoryRecord struct {
	Site    core.SiteName
	VMID    core.VMID
	Name    string
	Power   core.PowerState
	Record  json.RawMessage // core.VM as JSON
	Updated time.Time
}

// InventoryFilter narrows Inventory; zero values match everything.
type InventoryFilter struct {
	Site  core.SiteName
	Power core.PowerState
	VMID  core.VMID
}

// Job states.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobCanceling = "canceling"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
	JobCanceled  = "canceled"
)

// JobTerminal reports whether state is final.
func JobTerminal(state string) bool {
	return state == JobSucceeded || state == JobFailed || state == JobCanceled
}

// Job is ferry's bookkeeping for one durable job (River keeps its own
// queue rows; this is what users see and what resumes work).
type Job struct {
	ID         string
	Kind       string
	State      string
	Generation int64 // bumped whenever the job is handed to a new queue entry
	RiverID    int64 // 0 when not (yet) queued
	Args       json.RawMessage
	Checkpoint json.RawMessage // nil before the first step
	Progress   json.RawMessage
	Result     json.RawMessage
	Error      string
	ErrorCode  string
	Attempt    int64
	// CancelRequested asks the worker running the job to stop and undo.
	CancelRequested bool
	LeaseOwner      string
	LeaseExpires    time.Time
	CreatedBy       string
	Created         time.Time
	Updated         time.Time
}

// JobFilter narrows Jobs; zero values match everything. Jobs come newest
// first.
type JobFilter struct {
	States []string
	Kind   string
	// LeaseBefore keeps jobs whose lease expired before this time.
	LeaseBefore time.Time
	// UpdatedBefore keeps jobs last updated before this time.
	UpdatedBefore time.Time
	Limit         int
}

// JobCount is the number of jobs of one kind in one state.
type JobCount struct {
	Kind  string
	State string
	N     int64
}

// Event is one thing that happened to a job.
type Event struct {
	Seq     int64           `json:"seq"`
	JobID   string          `json:"job_id"`
	Time    time.Time       `json:"time"`
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// EventFilter narrows Events; events come in sequence order.
type EventFilter struct {
	JobID string
	After int64
	Limit int
}

// Token is an API token. Only its SHA-256 hash is stored.
type Token struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Hash    string    `json:"-"`
	Created time.Time `json:"created"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// AuditRow is one row of the audit log.
type AuditRow struct {
	Seq      int64
	Time     time.Time
	Actor    string
	Action   string
	Target   string
	Outcome  string
	Detail   json.RawMessage
	PrevHash string
	Hash     string
}
