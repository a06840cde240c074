package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/ferry-project/ferry/internal/errs"
)

// Dialects.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// Location says where the state lives: an SQLite file or a PostgreSQL URL.
type Location struct {
	Dialect string
	// Path is the SQLite database file.
	Path string
	// URL is the PostgreSQL connection URL. It may hold a password: print
	// it with Redacted.
	URL string
}

// ParseLocation returns the SQLite file ferry.db in dataDir when database
// is empty, and the PostgreSQL database it names otherwise
// (postgres:// or postgresql://).
func ParseLocation(dataDir, database string) (Location, error) {
	if database == "" {
		if dataDir == "" {
			return Location{}, fmt.Errorf("state: no data directory and no --database: %w", errs.ErrInvalidArgument)
		}
		return Location{Dialect: SQLite, Path: filepath.Join(dataDir, "ferry.db")}, nil
	}
	switch {
	case strings.HasPrefix(database, "postgres://"), strings.HasPrefix(database, "postgresql://"):
		return Location{Dialect: Postgres, URL: database}, nil
	case strings.HasPrefix(database, "sqlite://"):
		return Location{Dialect: SQLite, Path: strings.TrimPrefix(database, "sqlite://")}, nil
	}
	return Location{}, fmt.Errorf("state: database %q: want postgres://... or sqlite://PATH: %w", redactURL(database), errs.ErrInvalidArgument)
}

// Redacted names the location without any password.
func (l Location) Redacted() string {
	if l.Dialect == SQLite {
		return l.Path
	}
	return redactURL(l.URL)
}

func (l Location) String() string { return l.Redacted() }

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// SQLiteDSN is the modernc.org/sqlite data source name ferry uses for path:
// WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE when immediate.
func SQLiteDSN(path string, immediate bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(15000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	if immediate {
		q.Set("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

// Options tune Open.
type Options struct {
	Logger *slog.Logger
	// ReadConns is the number of SQLite read connections (default 4).
	ReadConns int
}

// Open opens (creating if needed) the database at loc and applies pending
// migrations.
func Open(ctx context.Context, loc Location, o *Options) (Store, error) {
	if o == nil {
		o = &Options{}
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var s *sqlStore
	switch loc.Dialect {
	case SQLite:
		if err := os.MkdirAll(filepath.Dir(loc.Path), 0o700); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		w, err := sql.Open("sqlite", SQLiteDSN(loc.Path, true))
		if err != nil {
			return nil, fmt.Errorf("state: open %s: %w", loc.Path, err)
		}
		w.SetMaxOpenConns(1)
		r, err := sql.Open("sqlite", SQLiteDSN(loc.Path, false))
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("state: open %s: %w", loc.Path, err)
		}
		r.SetMaxOpenConns(max(o.ReadConns, 4))
		r.SetMaxIdleConns(max(o.ReadConns, 4))
		r.SetConnMaxIdleTime(time.Minute)
		s = &sqlStore{d: dialect{name: SQLite}, w: w, r: r, logger: logger}
	case Postgres:
		db, err := sql.Open("pgx", loc.URL)
		if err != nil {
			return nil, fmt.Errorf("state: open %s: %w", loc.Redacted(), err)
		}
		db.SetMaxOpenConns(16)
		db.SetMaxIdleConns(4)
		s = &sqlStore{d: dialect{name: Postgres}, w: db, r: db, logger: logger}
	default:
		return nil, fmt.Errorf("state: unknown dialect %q: %w", loc.Dialect, errs.ErrInvalidArgument)
	}
	if err := s.w.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("state: connect to %s: %w: %w", loc.Redacted(), err, errs.ErrUnavailable)
	}
	if loc.Dialect == SQLite {
		// Keep the database and its WAL private: it holds sealed
		// credentials and token hashes.
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Chmod(loc.Path+suffix, 0o600)
		}
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// dialect holds what differs between SQLite and PostgreSQL; queries are
// written once with "?" placeholders.
type dialect struct{ name string }

// rebind rewrites "?" placeholders as $1, $2, ... for PostgreSQL. Queries
// hold no "?" inside string literals.
func (d dialect) rebind(q string) string {
	if d.name != Postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// forUpdate is the row-locking suffix of a SELECT.
func (d dialect) forUpdate() string {
	if d.name == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// classify wraps a database error in an errs code: the one place that knows
// each driver's error types.
func (d dialect) classify(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, errs.ErrNotFound)
	}
	if errs.CodeOf(err) != errs.Unknown {
		return fmt.Errorf("%s: %w", what, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CONSTRAINT:
			if se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
				return fmt.Errorf("%s: %w", what, errs.ErrAlreadyExists)
			}
			return fmt.Errorf("%s: %v: %w", what, err, errs.ErrInvalidArgument)
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%s: %v: %w", what, err, errs.ErrUnavailable)
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%s: %v: %w", what, err, errs.ErrDataLoss)
		}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505":
			return fmt.Errorf("%s: %w", what, errs.ErrAlreadyExists)
		case strings.HasPrefix(pe.Code, "23"):
			return fmt.Errorf("%s: %v: %w", what, err, errs.ErrInvalidArgument)
		case pe.Code == "40001", pe.Code == "40P01", strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "57P"):
			return fmt.Errorf("%s: %v: %w", what, err, errs.ErrUnavailable)
		}
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %v: %w", what, err, errs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, err)
}
