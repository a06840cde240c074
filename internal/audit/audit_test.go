package audit_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/ferry-project/ferry/internal/audit"
	"github.com/ferry-project/ferry/internal/store"
	"github.com/ferry-project/ferry/internal/store/storetest"
)

func fill(t *testing.T, st store.Store, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if _, err := audit.Record(t.Context(), st, audit.Entry{Actor: "admin (t-1)", Action: "POST /api/v1/sites", Target: fmt.Sprintf("site-%d", i),
			Outcome: "201", Detail: json.RawMessage(fmt.Sprintf(`{ "i": %d }`, i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// tamper is a direct change to the database, behind the store's back.
type tamper struct {
	name     string
	sql      []string
	firstBad int64
	problem  string
}

var tampers = []tamper{
	{"none", nil, 0, ""},
	{"edited actor", []string{`UPDATE audit SET actor = 'mallory' WHERE seq = 4`}, 4, "edited"},
	{"edited detail", []string{`UPDATE audit SET detail = '{"i":99}' WHERE seq = 7`}, 7, "edited"},
	{"edited and rehashed", []string{`UPDATE audit SET outcome = '500', hash = 'abc' WHERE seq = 5`}, 5, "edited"},
	{"deleted middle", []string{`DELETE FROM audit WHERE seq = 3`}, 3, "removed"},
	{"deleted last", []string{`DELETE FROM audit WHERE seq = 10`}, 10, "removed"},
	{"inserted at end", []string{`INSERT INTO audit (seq, time, actor, action, target, outcome, detail, prev_hash, hash)
		SELECT 11, time, 'mallory', action, target, outcome, detail, hash, 'feed' FROM audit WHERE seq = 10`}, 11, "inserted"},
	{"inserted in the middle", []string{
		`UPDATE audit SET seq = seq + 100 WHERE seq >= 6`,
		`UPDATE audit SET seq = seq - 99 WHERE seq >= 106`,
		`INSERT INTO audit (seq, time, actor, action, target, outcome, detail, prev_hash, hash)
		SELECT 6, time, 'mallory', action, target, outcome, detail, hash, 'feed' FROM audit WHERE seq = 5`}, 6, "edited"},
}

func run(t *testing.T, open func(t *testing.T) (store.Store, *sql.DB), rebind func(string) string) {
	for _, tt := range tampers {
		t.Run(tt.name, func(t *testing.T) {
			st, db := open(t)
			fill(t, st, 10)
			for _, q := range tt.sql {
				if _, err := db.ExecContext(t.Context(), rebind(q)); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := audit.Verify(t.Context(), st)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK != (tt.firstBad == 0) || rep.FirstBad != tt.firstBad || !strings.Contains(rep.Problem, tt.problem) {
				t.Errorf("report = %+v, want first bad %d (%s)", rep, tt.firstBad, tt.problem)
			}
			if tt.firstBad == 0 && rep.Rows != 10 {
				t.Errorf("rows = %d", rep.Rows)
			}
		})
	}
}

func TestVerifySQLite(t *testing.T) {
	run(t, func(t *testing.T) (store.Store, *sql.DB) {
		p := filepath.Join(t.TempDir(), "ferry.db")
		st, err := store.Open(t.Context(), store.Location{Dialect: store.SQLite, Path: p}, nil)
		if err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("sqlite", store.SQLiteDSN(p, true))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close(); st.Close() })
		return st, db
	}, func(s string) string { return s })
}

func TestVerifyPostgres(t *testing.T) {
	url := storetest.Postgres(t)
	run(t, func(t *testing.T) (store.Store, *sql.DB) {
		u := storetest.NewDatabase(t, url)
		st, err := store.Open(t.Context(), store.Location{Dialect: store.Postgres, URL: u}, nil)
		if err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("pgx", u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close(); st.Close() })
		return st, db
	}, func(s string) string { return s })
}

func TestCanonical(t *testing.T) {
	a := audit.Entry{Seq: 1, Actor: "x", Detail: json.RawMessage(`{ "a" : 1 }`)}
	b := a
	b.Detail = json.RawMessage(`{"a":1}`)
	if string(audit.Canonical(a)) != string(audit.Canonical(b)) {
		t.Errorf("whitespace changes the canonical form: %s vs %s", audit.Canonical(a), audit.Canonical(b))
	}
	if audit.HashOf("", a) == audit.HashOf("x", a) {
		t.Error("hash ignores the previous hash")
	}
}
