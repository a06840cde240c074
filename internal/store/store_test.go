package store_test

import (
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/store"
	"github.com/ferry-project/ferry/internal/store/storetest"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(t.Context(), store.Location{Dialect: store.SQLite, Path: filepath.Join(t.TempDir(), "ferry.db")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestPostgres(t *testing.T) {
	url := storetest.Postgres(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(t.Context(), store.Location{Dialect: store.Postgres, URL: storetest.NewDatabase(t, url)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestMigrateTwice(t *testing.T) {
	loc := store.Location{Dialect: store.SQLite, Path: filepath.Join(t.TempDir(), "ferry.db")}
	for range 2 {
		s, err := store.Open(t.Context(), loc, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if store.SchemaVersion() < 1 {
		t.Fatal("no schema version")
	}
}

func TestParseLocation(t *testing.T) {
	tests := []struct {
		dir, db  string
		dialect  string
		redacted string
		bad      bool
	}{
		{dir: "/d", dialect: store.SQLite, redacted: "/d/ferry.db"},
		{db: "postgres://u:secret@h/db", dialect: store.Postgres, redacted: "postgres://u:xxxxx@h/db"},
		{db: "sqlite:///x/y.db", dialect: store.SQLite, redacted: "/x/y.db"},
		{db: "mysql://h", bad: true},
		{bad: true},
	}
	for _, tt := range tests {
		loc, err := store.ParseLocation(tt.dir, tt.db)
		if (err != nil) != tt.bad {
			t.Errorf("%q %q: error %v", tt.dir, tt.db, err)
			continue
		}
		if !tt.bad && (loc.Dialect != tt.dialect || loc.Redacted() != tt.redacted) {
			t.Errorf("%q %q: %+v %q", tt.dir, tt.db, loc, loc.Redacted())
		}
	}
}
