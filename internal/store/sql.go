package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
)

// sqlStore is the one Store implementation, over database/sql. On SQLite w
// is a single write connection (BEGIN IMMEDIATE) and r a pool of readers;
// on PostgreSQL both are the same pool.
type sqlStore struct {
	d      dialect
	w, r   *sql.DB
	logger *slog.Logger
}

var _ Store = (*sqlStore)(nil)

func (s *sqlStore) Dialect() string { return s.d.name }

func (s *sqlStore) Close() error {
	err := s.w.Close()
	if s.r != s.w {
		if e := s.r.Close(); err == nil {
			err = e
		}
	}
	return err
}

func (s *sqlStore) View(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, s.r, &sql.TxOptions{ReadOnly: s.d.name == Postgres}, fn)
}

// lock is the row-locking suffix of a SELECT in this transaction: none in
// read-only ones.
func (t *sqlTx) lock() string {
	if t.ro {
		return ""
	}
	return t.d.forUpdate()
}

func (s *sqlStore) Update(ctx context.Context, fn func(Tx) error) error {
	return s.run(ctx, s.w, nil, fn)
}

func (s *sqlStore) run(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return s.d.classify("state: begin", err)
	}
	t := &sqlTx{d: s.d, tx: tx, ro: opts != nil}
	if err := fn(t); err != nil {
		tx.Rollback()
		return err
	}
	return s.d.classify("state: commit", tx.Commit())
}

type sqlTx struct {
	d  dialect
	tx *sql.Tx
	ro bool
}

var _ Tx = (*sqlTx)(nil)

func (t *sqlTx) exec(ctx context.Context, what, q string, args ...any) (sql.Result, error) {
	res, err := t.tx.ExecContext(ctx, t.d.rebind(q), args...)
	return res, t.d.classify(what, err)
}

func (t *sqlTx) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, t.d.rebind(q), args...)
}

func (t *sqlTx) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, t.d.rebind(q), args...)
}

// mustAffect turns "no row changed" into NotFound.
func mustAffect(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, errs.ErrNotFound)
	}
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// nullJSON stores an empty document as NULL.
func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

func rawJSON(s sql.NullString) json.RawMessage {
	if !s.Valid || s.String == "" {
		return nil
	}
	return json.RawMessage(s.String)
}

// ---- sites

func (t *sqlTx) CreateSite(ctx context.Context, s Site) error {
	cfg, _ := json.Marshal(s.Config)
	_, err := t.exec(ctx, fmt.Sprintf("state: create site %q", s.Name),
		`INSERT INTO sites (name, kind, endpoint, config, credentials, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		string(s.Name), s.Kind, s.Endpoint, string(cfg), s.Credentials, nanos(s.Created), nanos(s.Updated))
	return err
}

func (t *sqlTx) UpdateSite(ctx context.Context, s Site) error {
	what := fmt.Sprintf("state: update site %q", s.Name)
	cfg, _ := json.Marshal(s.Config)
	res, err := t.exec(ctx, what,
		`UPDATE sites SET kind = ?, endpoint = ?, config = ?, credentials = ?, updated = ? WHERE name = ?`,
		s.Kind, s.Endpoint, string(cfg), s.Credentials, nanos(s.Updated), string(s.Name))
	if err != nil {
		return err
	}
	return mustAffect(res, what)
}

const siteCols = `name, kind, endpoint, config, credentials, created, updated`

func scanSite(sc interface{ Scan(...any) error }) (Site, error) {
	var s Site
	var name, cfg string
	var created, updated int64
	if err := sc.Scan(&name, &s.Kind, &s.Endpoint, &cfg, &s.Credentials, &created, &updated); err != nil {
		return s, err
	}
	s.Name = core.SiteName(name)
	s.Created, s.Updated = fromNanos(created), fromNanos(updated)
	if cfg != "" && cfg != "null" {
		if err := json.Unmarshal([]byte(cfg), &s.Config); err != nil {
			return s, fmt.Errorf("site %q config: %v: %w", name, err, errs.ErrCorrupt)
		}
	}
	return s, nil
}

func (t *sqlTx) Site(ctx context.Context, name core.SiteName) (Site, error) {
	s, err := scanSite(t.queryRow(ctx, `SELECT `+siteCols+` FROM sites WHERE name = ?`, string(name)))
	return s, t.d.classify(fmt.Sprintf("site %q", name), err)
}

func (t *sqlTx) Sites(ctx context.Context) ([]Site, error) {
	rows, err := t.query(ctx, `SELECT `+siteCols+` FROM sites ORDER BY name`)
	if err != nil {
		return nil, t.d.classify("state: list sites", err)
	}
	defer rows.Close()
	var out []Site
	for rows.Next() {
		s, err := scanSite(rows)
		if err != nil {
			return nil, t.d.classify("state: list sites", err)
		}
		out = append(out, s)
	}
	return out, t.d.classify("state: list sites", rows.Err())
}

func (t *sqlTx) DeleteSite(ctx context.Context, name core.SiteName) error {
	what := fmt.Sprintf("site %q", name)
	if err := t.bumpInventory(ctx); err != nil {
		return err
	}
	if _, err := t.exec(ctx, what, `DELETE FROM inventory WHERE site = ?`, string(name)); err != nil {
		return err
	}
	res, err := t.exec(ctx, what, `DELETE FROM sites WHERE name = ?`, string(name))
	if err != nil {
		return err
	}
	return mustAffect(res, what)
}

// ---- inventory

func (t *sqlTx) bumpInventory(ctx context.Context) error {
	_, err := t.exec(ctx, "state: inventory generation", `UPDATE inventory_gen SET gen = gen + 1 WHERE id = 1`)
	return err
}

func (t *sqlTx) InventoryGen(ctx context.Context) (int64, error) {
	var gen int64
	err := t.queryRow(ctx, `SELECT gen FROM inventory_gen WHERE id = 1`).Scan(&gen)
	return gen, t.d.classify("state: inventory generation", err)
}

func (t *sqlTx) ReplaceInventory(ctx context.Context, site core.SiteName, recs []InventoryRecord) error {
	what := fmt.Sprintf("state: inventory of %q", site)
	if err := t.bumpInventory(ctx); err != nil {
		return err
	}
	if _, err := t.exec(ctx, what, `DELETE FROM inventory WHERE site = ?`, string(site)); err != nil {
		return err
	}
	// Multi-row inserts: far fewer round trips than one row at a time.
	const batch = 100
	for len(recs) > 0 {
		n := min(batch, len(recs))
		var b strings.Builder
		b.WriteString(`INSERT INTO inventory (site, vm_id, name, power, record, updated) VALUES `)
		args := make([]any, 0, n*6)
		for i, r := range recs[:n] {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?, ?, ?)")
			args = append(args, string(site), string(r.VMID), r.Name, string(r.Power), string(r.Record), nanos(r.Updated))
		}
		if _, err := t.exec(ctx, what, b.String(), args...); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

func (t *sqlTx) PutInventory(ctx context.Context, r InventoryRecord) error {
	what := fmt.Sprintf("state: inventory %s/%s", r.Site, r.VMID)
	if err := t.bumpInventory(ctx); err != nil {
		return err
	}
	res, err := t.exec(ctx, what, `UPDATE inventory SET name = ?, power = ?, record = ?, updated = ? WHERE site = ? AND vm_id = ?`,
		r.Name, string(r.Power), string(r.Record), nanos(r.Updated), string(r.Site), string(r.VMID))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	_, err = t.exec(ctx, what, `INSERT INTO inventory (site, vm_id, name, power, record, updated) VALUES (?, ?, ?, ?, ?, ?)`,
		string(r.Site), string(r.VMID), r.Name, string(r.Power), string(r.Record), nanos(r.Updated))
	return err
}

func (t *sqlTx) DeleteInventory(ctx context.Context, site core.SiteName, id core.VMID) error {
	what := fmt.Sprintf("state: inventory %s/%s", site, id)
	if err := t.bumpInventory(ctx); err != nil {
		return err
	}
	res, err := t.exec(ctx, what, `DELETE FROM inventory WHERE site = ? AND vm_id = ?`, string(site), string(id))
	if err != nil {
		return err
	}
	return mustAffect(res, what)
}

func (t *sqlTx) Inventory(ctx context.Context, f InventoryFilter, fn func(InventoryRecord) error) error {
	q := `SELECT site, vm_id, name, power, record, updated FROM inventory`
	var where []string
	var args []any
	if f.Site != "" {
		where, args = append(where, "site = ?"), append(args, string(f.Site))
	}
	if f.Power != "" {
		where, args = append(where, "power = ?"), append(args, string(f.Power))
	}
	if f.VMID != "" {
		where, args = append(where, "vm_id = ?"), append(args, string(f.VMID))
	}
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY site, name, vm_id"
	rows, err := t.query(ctx, q, args...)
	if err != nil {
		return t.d.classify("state: inventory", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r InventoryRecord
		var site, id, power string
		var rec []byte
		var updated int64
		if err := rows.Scan(&site, &id, &r.Name, &power, &rec, &updated); err != nil {
			return t.d.classify("state: inventory", err)
		}
		r.Site, r.VMID, r.Power, r.Record, r.Updated = core.SiteName(site), core.VMID(id), core.PowerState(power), rec, fromNanos(updated)
		if err := fn(r); err != nil {
			return err
		}
	}
	return t.d.classify("state: inventory", rows.Err())
}

// ---- jobs

const jobCols = `id, kind, state, generation, river_id, args, checkpoint, progress, result, error, error_code, attempt, cancel_requested, lease_owner, lease_expires, created_by, created, updated`

func scanJob(sc interface{ Scan(...any) error }) (Job, error) {
	var j Job
	var riverID sql.NullInt64
	var args string
	var cp, prog, res sql.NullString
	var cancel, lease, created, updated int64
	err := sc.Scan(&j.ID, &j.Kind, &j.State, &j.Generation, &riverID, &args, &cp, &prog, &res, &j.Error, &j.ErrorCode,
		&j.Attempt, &cancel, &j.LeaseOwner, &lease, &j.CreatedBy, &created, &updated)
	if err != nil {
		return j, err
	}
	j.RiverID = riverID.Int64
	j.Args = json.RawMessage(args)
	j.Checkpoint, j.Progress, j.Result = rawJSON(cp), rawJSON(prog), rawJSON(res)
	j.CancelRequested = cancel != 0
	j.LeaseExpires, j.Created, j.Updated = fromNanos(lease), fromNanos(created), fromNanos(updated)
	return j, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func nullInt(n int64) any {
	if n == 0 {
		return nil
	}
	return n
}

func (t *sqlTx) CreateJob(ctx context.Context, j Job) error {
	if len(j.Args) == 0 {
		j.Args = json.RawMessage("null")
	}
	_, err := t.exec(ctx, fmt.Sprintf("state: create job %s", j.ID),
		`INSERT INTO jobs (`+jobCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.Kind, j.State, j.Generation, nullInt(j.RiverID), string(j.Args), nullJSON(j.Checkpoint), nullJSON(j.Progress), nullJSON(j.Result),
		j.Error, j.ErrorCode, j.Attempt, boolInt(j.CancelRequested), j.LeaseOwner, nanos(j.LeaseExpires), j.CreatedBy, nanos(j.Created), nanos(j.Updated))
	return err
}

func (t *sqlTx) Job(ctx context.Context, id string) (Job, error) {
	j, err := scanJob(t.queryRow(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = ?`, id))
	return j, t.d.classify(fmt.Sprintf("job %s", id), err)
}

func (t *sqlTx) LockJob(ctx context.Context, id string) (Job, error) {
	j, err := scanJob(t.queryRow(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = ?`+t.lock(), id))
	return j, t.d.classify(fmt.Sprintf("job %s", id), err)
}

func (t *sqlTx) PutJob(ctx context.Context, j Job) error {
	what := fmt.Sprintf("state: update job %s", j.ID)
	res, err := t.exec(ctx, what,
		`UPDATE jobs SET state = ?, generation = ?, river_id = ?, args = ?, checkpoint = ?, progress = ?, result = ?, error = ?, error_code = ?,
		 attempt = ?, cancel_requested = ?, lease_owner = ?, lease_expires = ?, updated = ? WHERE id = ?`,
		j.State, j.Generation, nullInt(j.RiverID), string(j.Args), nullJSON(j.Checkpoint), nullJSON(j.Progress), nullJSON(j.Result), j.Error, j.ErrorCode,
		j.Attempt, boolInt(j.CancelRequested), j.LeaseOwner, nanos(j.LeaseExpires), nanos(j.Updated), j.ID)
	if err != nil {
		return err
	}
	return mustAffect(res, what)
}

func (t *sqlTx) Jobs(ctx context.Context, f JobFilter) ([]Job, error) {
	q := `SELECT ` + jobCols + ` FROM jobs`
	var where []string
	var args []any
	if len(f.States) > 0 {
		where = append(where, "state IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(f.States)), ", ")+")")
		for _, s := range f.States {
			args = append(args, s)
		}
	}
	if f.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, f.Kind)
	}
	if !f.LeaseBefore.IsZero() {
		where, args = append(where, "lease_expires < ?"), append(args, nanos(f.LeaseBefore))
	}
	if !f.UpdatedBefore.IsZero() {
		where, args = append(where, "updated < ?"), append(args, nanos(f.UpdatedBefore))
	}
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created DESC, id DESC"
	if f.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.Limit)
	}
	rows, err := t.query(ctx, q, args...)
	if err != nil {
		return nil, t.d.classify("state: list jobs", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, t.d.classify("state: list jobs", err)
		}
		out = append(out, j)
	}
	return out, t.d.classify("state: list jobs", rows.Err())
}

func (t *sqlTx) JobCounts(ctx context.Context) ([]JobCount, error) {
	rows, err := t.query(ctx, `SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind, state`)
	if err != nil {
		return nil, t.d.classify("state: count jobs", err)
	}
	defer rows.Close()
	var out []JobCount
	for rows.Next() {
		var c JobCount
		if err := rows.Scan(&c.Kind, &c.State, &c.N); err != nil {
			return nil, t.d.classify("state: count jobs", err)
		}
		out = append(out, c)
	}
	return out, t.d.classify("state: count jobs", rows.Err())
}

// ---- events

func (t *sqlTx) AppendEvent(ctx context.Context, e Event) (int64, error) {
	payload := string(e.Payload)
	if payload == "" {
		payload = "null"
	}
	var seq int64
	err := t.queryRow(ctx, `INSERT INTO events (job_id, time, kind, payload) VALUES (?, ?, ?, ?) RETURNING seq`,
		e.JobID, nanos(e.Time), e.Kind, payload).Scan(&seq)
	return seq, t.d.classify(fmt.Sprintf("state: event for job %s", e.JobID), err)
}

func (t *sqlTx) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	q := `SELECT seq, job_id, time, kind, payload FROM events WHERE seq > ?`
	args := []any{f.After}
	if f.JobID != "" {
		q, args = q+" AND job_id = ?", append(args, f.JobID)
	}
	q += " ORDER BY seq"
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	q += fmt.Sprintf(" LIMIT %d", limit)
	rows, err := t.query(ctx, q, args...)
	if err != nil {
		return nil, t.d.classify("state: events", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var tm int64
		var payload string
		if err := rows.Scan(&e.Seq, &e.JobID, &tm, &e.Kind, &payload); err != nil {
			return nil, t.d.classify("state: events", err)
		}
		e.Time = fromNanos(tm)
		if payload != "null" {
			e.Payload = json.RawMessage(payload)
		}
		out = append(out, e)
	}
	return out, t.d.classify("state: events", rows.Err())
}

func (t *sqlTx) LastEventSeq(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	err := t.queryRow(ctx, `SELECT MAX(seq) FROM events`).Scan(&seq)
	return seq.Int64, t.d.classify("state: events", err)
}

// ---- tokens

func (t *sqlTx) CreateToken(ctx context.Context, tk Token) error {
	_, err := t.exec(ctx, fmt.Sprintf("state: create token %q", tk.Name),
		`INSERT INTO tokens (id, name, role, hash, created, revoked) VALUES (?, ?, ?, ?, ?, ?)`,
		tk.ID, tk.Name, tk.Role, tk.Hash, nanos(tk.Created), nanos(tk.Revoked))
	return err
}

func scanToken(sc interface{ Scan(...any) error }) (Token, error) {
	var tk Token
	var created, revoked int64
	err := sc.Scan(&tk.ID, &tk.Name, &tk.Role, &tk.Hash, &created, &revoked)
	tk.Created, tk.Revoked = fromNanos(created), fromNanos(revoked)
	return tk, err
}

func (t *sqlTx) TokenByHash(ctx context.Context, hash string) (Token, error) {
	tk, err := scanToken(t.queryRow(ctx, `SELECT id, name, role, hash, created, revoked FROM tokens WHERE hash = ?`, hash))
	return tk, t.d.classify("token", err)
}

func (t *sqlTx) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := t.query(ctx, `SELECT id, name, role, hash, created, revoked FROM tokens ORDER BY created, id`)
	if err != nil {
		return nil, t.d.classify("state: list tokens", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		tk, err := scanToken(rows)
		if err != nil {
			return nil, t.d.classify("state: list tokens", err)
		}
		out = append(out, tk)
	}
	return out, t.d.classify("state: list tokens", rows.Err())
}

func (t *sqlTx) RevokeToken(ctx context.Context, id string, at time.Time) error {
	what := fmt.Sprintf("token %s", id)
	res, err := t.exec(ctx, what, `UPDATE tokens SET revoked = ? WHERE id = ? AND revoked = 0`, nanos(at), id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var revoked int64
		if err := t.queryRow(ctx, `SELECT revoked FROM tokens WHERE id = ?`, id).Scan(&revoked); err != nil {
			return t.d.classify(what, err)
		}
		return fmt.Errorf("%s: already revoked: %w", what, errs.ErrFailedPrecondition)
	}
	return nil
}

// ---- audit

func (t *sqlTx) AuditHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := t.queryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+t.lock()).Scan(&seq, &hash)
	return seq, hash, t.d.classify("state: audit head", err)
}

func (t *sqlTx) AppendAudit(ctx context.Context, a AuditRow) error {
	what := fmt.Sprintf("state: audit row %d", a.Seq)
	detail := string(a.Detail)
	if detail == "" {
		detail = "null"
	}
	if _, err := t.exec(ctx, what, `INSERT INTO audit (seq, time, actor, action, target, outcome, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.Seq, nanos(a.Time), a.Actor, a.Action, a.Target, a.Outcome, detail, a.PrevHash, a.Hash); err != nil {
		return err
	}
	_, err := t.exec(ctx, what, `UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1`, a.Seq, a.Hash)
	return err
}

func (t *sqlTx) Audit(ctx context.Context, after int64, limit int, fn func(AuditRow) error) error {
	q := `SELECT seq, time, actor, action, target, outcome, detail, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq`
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	rows, err := t.query(ctx, q, after)
	if err != nil {
		return t.d.classify("state: audit", err)
	}
	defer rows.Close()
	for rows.Next() {
		var a AuditRow
		var tm int64
		var detail string
		if err := rows.Scan(&a.Seq, &tm, &a.Actor, &a.Action, &a.Target, &a.Outcome, &detail, &a.PrevHash, &a.Hash); err != nil {
			return t.d.classify("state: audit", err)
		}
		a.Time = fromNanos(tm)
		a.Detail = json.RawMessage(detail)
		if err := fn(a); err != nil {
			return err
		}
	}
	return t.d.classify("state: audit", rows.Err())
}
