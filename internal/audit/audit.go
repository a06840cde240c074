// Package audit keeps the control plane's append-only, hash-chained log of
// every mutating request: who, what, on which object, when, and how it
// ended.
//
// Each row's hash is SHA-256 over the previous row's hash (hex) followed by
// the row's canonical JSON (see [Canonical]); the first row's previous hash
// is "". The chain head (last sequence number and hash) is kept beside the
// rows. [Verify] recomputes the chain and names the first row that was
// edited, inserted or removed. The chain has no secret: it proves that rows
// were not changed by anyone who did not also recompute every later hash
// and the head; ship the head's hash elsewhere to anchor it.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

// Entry is one audit record.
type Entry struct {
	Seq      int64           `json:"seq"`
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`
	Action   string          `json:"action"`
	Target   string          `json:"target"`
	Outcome  string          `json:"outcome"`
	Detail   json.RawMessage `json:"detail,omitempty"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// canonicalRow fixes the field order and formats of the hashed document.
type canonicalRow struct {
	Seq     int64           `json:"seq"`
	Time    string          `json:"time"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Target  string          `json:"target"`
	Outcome string          `json:"outcome"`
	Detail  json.RawMessage `json:"detail"`
}

// Canonical is the JSON document a row's hash covers: the fields seq,
// time (RFC 3339 UTC, nanoseconds), actor, action, target, outcome and
// detail (compacted JSON, null when empty), in that order.
func Canonical(e Entry) []byte {
	detail := json.RawMessage("null")
	if len(e.Detail) > 0 {
		var b bytes.Buffer
		if json.Compact(&b, e.Detail) == nil {
			detail = b.Bytes()
		} else {
			q, _ := json.Marshal(string(e.Detail))
			detail = q
		}
	}
	b, _ := json.Marshal(canonicalRow{Seq: e.Seq, Time: e.Time.UTC().Format(time.RFC3339Nano), Actor: e.Actor, Action: e.Action,
		Target: e.Target, Outcome: e.Outcome, Detail: detail})
	return b
}

// HashOf is hex(SHA-256(prev || Canonical(e))).
func HashOf(prev string, e Entry) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write(Canonical(e))
	return hex.EncodeToString(h.Sum(nil))
}

// Append adds e at the end of the chain inside tx, filling Seq, PrevHash
// and Hash (and Time when zero). The head row is locked, so concurrent
// appends from several nodes serialise.
func Append(ctx context.Context, tx store.Tx, e Entry) (Entry, error) {
	seq, prev, err := tx.AuditHead(ctx)
	if err != nil {
		return e, err
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	// Round-trip exactly through the store's nanosecond times.
	e.Time = time.Unix(0, e.Time.UnixNano()).UTC()
	e.Seq, e.PrevHash = seq+1, prev
	if len(e.Detail) > 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, e.Detail); err != nil {
			return e, fmt.Errorf("audit detail: %v: %w", err, errs.ErrInvalidArgument)
		}
		e.Detail = b.Bytes()
	}
	e.Hash = HashOf(prev, e)
	return e, tx.AppendAudit(ctx, store.AuditRow{Seq: e.Seq, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target,
		Outcome: e.Outcome, Detail: e.Detail, PrevHash: e.PrevHash, Hash: e.Hash})
}

// Record appends e in its own transaction.
func Record(ctx context.Context, st store.Store, e Entry) (Entry, error) {
	err := st.Update(ctx, func(tx store.Tx) error {
		var err error
		e, err = Append(ctx, tx, e)
		return err
	})
	return e, err
}

func fromRow(r store.AuditRow) Entry {
	e := Entry{Seq: r.Seq, Time: r.Time, Actor: r.Actor, Action: r.Action, Target: r.Target, Outcome: r.Outcome, PrevHash: r.PrevHash, Hash: r.Hash}
	if string(r.Detail) != "null" {
		e.Detail = r.Detail
	}
	return e
}

// List returns up to limit entries after seq after.
func List(ctx context.Context, st store.Store, after int64, limit int) ([]Entry, error) {
	var out []Entry
	err := st.View(ctx, func(tx store.Tx) error {
		return tx.Audit(ctx, after, limit, func(r store.AuditRow) error {
			out = append(out, fromRow(r))
			return nil
		})
	})
	return out, err
}

// Report is what Verify found.
type Report struct {
	OK   bool  `json:"ok"`
	Rows int64 `json:"rows"`
	// HeadSeq and HeadHash are the recorded chain head.
	HeadSeq  int64  `json:"head_seq"`
	HeadHash string `json:"head_hash"`
	// FirstBad is the sequence number of the first row that does not fit
	// the chain (for a removed row: the missing number), 0 when OK.
	FirstBad int64  `json:"first_bad,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// Verify recomputes the whole chain.
func Verify(ctx context.Context, st store.Store) (Report, error) {
	var rep Report
	var headSeq int64
	var headHash string
	if err := st.View(ctx, func(tx store.Tx) error {
		var err error
		headSeq, headHash, err = tx.AuditHead(ctx)
		return err
	}); err != nil {
		return rep, err
	}
	rep.HeadSeq, rep.HeadHash = headSeq, headHash
	bad := func(seq int64, format string, args ...any) (Report, error) {
		rep.FirstBad, rep.Problem = seq, fmt.Sprintf(format, args...)
		return rep, nil
	}
	var last int64
	prev := ""
	const page = 2000
	for {
		var rows []store.AuditRow
		if err := st.View(ctx, func(tx store.Tx) error {
			return tx.Audit(ctx, last, page, func(r store.AuditRow) error { rows = append(rows, r); return nil })
		}); err != nil {
			return rep, err
		}
		for _, r := range rows {
			e := fromRow(r)
			switch {
			case e.Seq != last+1:
				return bad(last+1, "row %d is missing (next row is %d): removed", last+1, e.Seq)
			case e.Seq > headSeq:
				return bad(e.Seq, "row %d is beyond the chain head %d: inserted", e.Seq, headSeq)
			case e.PrevHash != prev:
				return bad(e.Seq, "row %d does not follow row %d (previous hash %.12s…, want %.12s…): inserted, or an earlier row was replaced", e.Seq, last, e.PrevHash, prev)
			case HashOf(prev, e) != e.Hash:
				return bad(e.Seq, "row %d does not match its hash: edited", e.Seq)
			}
			prev, last = e.Hash, e.Seq
			rep.Rows++
		}
		if len(rows) < page {
			break
		}
	}
	if last != headSeq || prev != headHash {
		return bad(last+1, "the log ends at row %d but the chain head is row %d (%.12s…): rows at the end were removed or the head was changed", last, headSeq, headHash)
	}
	rep.OK = true
	return rep, nil
}
