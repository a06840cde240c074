package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
)

//go:embed migrations
var migrationFS embed.FS

// migration is one schema version.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the dialect's migrations in version order. Files are
// named NNNN_name.sql.
func migrations(dialect string) ([]migration, error) {
	dir := path.Join("migrations", dialect)
	ents, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, fmt.Errorf("state: migrations for %s: %w", dialect, err)
	}
	var out []migration
	for _, e := range ents {
		name := e.Name()
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("state: migration file %s: want NNNN_name.sql: %w", name, errs.ErrCorrupt)
		}
		b, err := fs.ReadFile(migrationFS, path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: rest, sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	return out, nil
}

// SchemaVersion is the newest schema version this build knows.
func SchemaVersion() int {
	ms, _ := migrations(SQLite)
	if len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// migrate applies pending migrations in one transaction. On PostgreSQL an
// advisory lock keeps nodes that start together from racing.
func (s *sqlStore) migrate(ctx context.Context) error {
	ms, err := migrations(s.d.name)
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.d.classify("state: migrate", err)
	}
	defer tx.Rollback()
	if s.d.name == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7205759403792793)`); err != nil {
			return s.d.classify("state: migrate: lock", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)`); err != nil {
		return s.d.classify("state: migrate", err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return s.d.classify("state: migrate", err)
	}
	newest := 0
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return s.d.classify("state: migrate", err)
		}
		applied[v] = true
		newest = max(newest, v)
	}
	rows.Close()
	if known := ms[len(ms)-1].version; newest > known {
		return fmt.Errorf("state: database schema version %d is newer than this ferry's %d: %w", newest, known, errs.ErrFailedPrecondition)
	}
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return s.d.classify(fmt.Sprintf("state: migration %04d_%s", m.version, m.name), err)
		}
		if _, err := tx.ExecContext(ctx, s.d.rebind(`INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)`), m.version, m.name, time.Now().UnixNano()); err != nil {
			return s.d.classify("state: migrate", err)
		}
		s.logger.Info("applied schema migration", "version", m.version, "name", m.name, "dialect", s.d.name)
	}
	return s.d.classify("state: migrate: commit", tx.Commit())
}
