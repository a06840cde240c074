// Package storetest is the conformance suite every store.Store backend
// must pass, and a helper that starts a private PostgreSQL server.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/store"
)

// Run runs the suite; open returns a new, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Sites", testSites},
		{"Inventory", testInventory},
		{"Jobs", testJobs},
		{"Events", testEvents},
		{"Tokens", testTokens},
		{"Audit", testAudit},
		{"Rollback", testRollback},
		{"ConcurrentUpdates", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			tt.fn(t, s)
		})
	}
}

func update(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(t.Context(), fn); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, c errs.Code) {
	t.Helper()
	if errs.CodeOf(err) != c {
		t.Fatalf("error %v: code %v, want %v", err, errs.CodeOf(err), c)
	}
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)

func testSites(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := store.Site{Name: "a", Kind: "xen", Endpoint: "https://x", Config: map[string]string{"user": "root"}, Credentials: []byte{0, 1, 2, 255}, Created: t0, Updated: t0}
	update(t, s, func(tx store.Tx) error { return tx.CreateSite(ctx, a) })
	err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateSite(ctx, a) })
	wantCode(t, err, errs.AlreadyExists)
	update(t, s, func(tx store.Tx) error {
		return tx.CreateSite(ctx, store.Site{Name: "b", Kind: "aws", Created: t0, Updated: t0})
	})
	s.View(ctx, func(tx store.Tx) error {
		got, err := tx.Site(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if got.Kind != "xen" || got.Endpoint != "https://x" || got.Config["user"] != "root" || string(got.Credentials) != string(a.Credentials) || !got.Created.Equal(t0) {
			t.Errorf("site = %+v", got)
		}
		_, err = tx.Site(ctx, "zzz")
		wantCode(t, err, errs.NotFound)
		all, err := tx.Sites(ctx)
		if err != nil || len(all) != 2 || all[0].Name != "a" || all[1].Name != "b" {
			t.Errorf("sites = %+v, %v", all, err)
		}
		return nil
	})
	a.Endpoint, a.Updated = "https://y", t0.Add(time.Hour)
	update(t, s, func(tx store.Tx) error { return tx.UpdateSite(ctx, a) })
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.UpdateSite(ctx, store.Site{Name: "nope"}) }), errs.NotFound)
	update(t, s, func(tx store.Tx) error {
		return tx.ReplaceInventory(ctx, "a", []store.InventoryRecord{{Site: "a", VMID: "1", Name: "x", Power: "running", Record: json.RawMessage(`{}`)}})
	})
	update(t, s, func(tx store.Tx) error { return tx.DeleteSite(ctx, "a") })
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.DeleteSite(ctx, "a") }), errs.NotFound)
	n := 0
	s.View(ctx, func(tx store.Tx) error {
		return tx.Inventory(ctx, store.InventoryFilter{Site: "a"}, func(store.InventoryRecord) error { n++; return nil })
	})
	if n != 0 {
		t.Errorf("inventory of a deleted site: %d rows", n)
	}
}

func testInventory(t *testing.T, s store.Store) {
	ctx := t.Context()
	var recs []store.InventoryRecord
	for i := range 250 {
		p := core.Running
		if i%3 == 0 {
			p = core.Halted
		}
		vm := core.VM{Site: "s1", ID: core.VMID(fmt.Sprintf("vm-%03d", i)), Name: fmt.Sprintf("n%03d", 249-i), PowerState: p, CPUs: 2}
		b, _ := json.Marshal(vm)
		recs = append(recs, store.InventoryRecord{Site: "s1", VMID: vm.ID, Name: vm.Name, Power: p, Record: b, Updated: t0})
	}
	gen := func() int64 {
		var g int64
		if err := s.View(ctx, func(tx store.Tx) error { var err error; g, err = tx.InventoryGen(ctx); return err }); err != nil {
			t.Fatal(err)
		}
		return g
	}
	g0 := gen()
	update(t, s, func(tx store.Tx) error { return tx.ReplaceInventory(ctx, "s1", recs) })
	g1 := gen()
	update(t, s, func(tx store.Tx) error { return tx.ReplaceInventory(ctx, "s1", recs[:200]) })
	if g1 == g0 || gen() == g1 {
		t.Errorf("inventory generation did not change: %d %d %d", g0, g1, gen())
	}
	update(t, s, func(tx store.Tx) error {
		return tx.ReplaceInventory(ctx, "s0", []store.InventoryRecord{{Site: "s0", VMID: "z", Name: "zz", Power: core.Halted, Record: json.RawMessage(`{"id":"z"}`)}})
	})
	count := func(f store.InventoryFilter) (int, []store.InventoryRecord) {
		var got []store.InventoryRecord
		if err := s.View(ctx, func(tx store.Tx) error {
			return tx.Inventory(ctx, f, func(r store.InventoryRecord) error { got = append(got, r); return nil })
		}); err != nil {
			t.Fatal(err)
		}
		return len(got), got
	}
	for _, tt := range []struct {
		f    store.InventoryFilter
		want int
	}{
		{store.InventoryFilter{}, 201},
		{store.InventoryFilter{Site: "s1"}, 200},
		{store.InventoryFilter{Site: "s1", Power: core.Halted}, 67},
		{store.InventoryFilter{Power: core.Halted}, 68},
		{store.InventoryFilter{Site: "s1", VMID: "vm-007"}, 1},
	} {
		if n, _ := count(tt.f); n != tt.want {
			t.Errorf("inventory %+v: %d rows, want %d", tt.f, n, tt.want)
		}
	}
	_, all := count(store.InventoryFilter{})
	if all[0].Site != "s0" || all[1].Name > all[2].Name {
		t.Errorf("inventory not ordered by site, name: %v %v %v", all[0].Site, all[1].Name, all[2].Name)
	}
	var vm core.VM
	if err := json.Unmarshal(all[1].Record, &vm); err != nil || vm.CPUs != 2 {
		t.Errorf("record %s: %v", all[1].Record, err)
	}
	update(t, s, func(tx store.Tx) error {
		return tx.PutInventory(ctx, store.InventoryRecord{Site: "s1", VMID: "vm-007", Name: "renamed", Power: core.Paused, Record: json.RawMessage(`{}`)})
	})
	update(t, s, func(tx store.Tx) error {
		return tx.PutInventory(ctx, store.InventoryRecord{Site: "s1", VMID: "new", Name: "new", Power: core.Paused, Record: json.RawMessage(`{}`)})
	})
	if n, _ := count(store.InventoryFilter{Power: core.Paused}); n != 2 {
		t.Errorf("paused after put: %d", n)
	}
	g2 := gen()
	update(t, s, func(tx store.Tx) error { return tx.DeleteInventory(ctx, "s1", "new") })
	if gen() == g2 {
		t.Error("delete did not change the inventory generation")
	}
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.DeleteInventory(ctx, "s1", "new") }), errs.NotFound)
}

func testJobs(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 5 {
		j := store.Job{ID: fmt.Sprintf("j%d", i), Kind: "k", State: store.JobQueued, Generation: 1, Args: json.RawMessage(`{"a":1}`),
			CreatedBy: "tester", Created: t0.Add(time.Duration(i) * time.Second), Updated: t0}
		if i == 4 {
			j.Kind = "other"
		}
		update(t, s, func(tx store.Tx) error { return tx.CreateJob(ctx, j) })
	}
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.CreateJob(ctx, store.Job{ID: "j1", Kind: "k", State: "queued"}) }), errs.AlreadyExists)
	update(t, s, func(tx store.Tx) error {
		j, err := tx.LockJob(ctx, "j2")
		if err != nil {
			return err
		}
		j.State, j.RiverID, j.Checkpoint, j.Progress = store.JobRunning, 42, json.RawMessage(`{"next":1}`), json.RawMessage(`{"done":5}`)
		j.LeaseOwner, j.LeaseExpires, j.CancelRequested, j.Attempt, j.Updated = "me", t0.Add(time.Minute), true, 3, t0.Add(time.Second)
		return tx.PutJob(ctx, j)
	})
	s.View(ctx, func(tx store.Tx) error {
		j, err := tx.Job(ctx, "j2")
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.JobRunning || j.RiverID != 42 || string(j.Checkpoint) != `{"next":1}` || j.LeaseOwner != "me" ||
			!j.LeaseExpires.Equal(t0.Add(time.Minute)) || !j.CancelRequested || j.Attempt != 3 || string(j.Args) != `{"a":1}` || j.CreatedBy != "tester" || j.Result != nil {
			t.Errorf("job = %+v", j)
		}
		_, err = tx.Job(ctx, "nope")
		wantCode(t, err, errs.NotFound)
		for _, tt := range []struct {
			f    store.JobFilter
			want []string
		}{
			{store.JobFilter{}, []string{"j4", "j3", "j2", "j1", "j0"}},
			{store.JobFilter{Limit: 2}, []string{"j4", "j3"}},
			{store.JobFilter{Kind: "k", States: []string{store.JobQueued}}, []string{"j3", "j1", "j0"}},
			{store.JobFilter{States: []string{store.JobRunning, store.JobFailed}}, []string{"j2"}},
			{store.JobFilter{States: []string{store.JobRunning}, LeaseBefore: t0.Add(2 * time.Minute)}, []string{"j2"}},
			{store.JobFilter{States: []string{store.JobRunning}, LeaseBefore: t0}, nil},
			{store.JobFilter{UpdatedBefore: t0.Add(time.Millisecond)}, []string{"j4", "j3", "j1", "j0"}},
		} {
			js, err := tx.Jobs(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, j := range js {
				ids = append(ids, j.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.want) {
				t.Errorf("jobs %+v = %v, want %v", tt.f, ids, tt.want)
			}
		}
		counts, err := tx.JobCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(counts) != "[{k queued 3} {k running 1} {other queued 1}]" {
			t.Errorf("counts = %v", counts)
		}
		return nil
	})
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.PutJob(ctx, store.Job{ID: "nope", Args: json.RawMessage("1")}) }), errs.NotFound)
}

func testEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	var seqs []int64
	for i := range 6 {
		job := "a"
		if i%2 == 1 {
			job = "b"
		}
		update(t, s, func(tx store.Tx) error {
			seq, err := tx.AppendEvent(ctx, store.Event{JobID: job, Time: t0, Kind: "progress", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
			seqs = append(seqs, seq)
			return err
		})
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequence not increasing: %v", seqs)
		}
	}
	s.View(ctx, func(tx store.Tx) error {
		for _, tt := range []struct {
			f    store.EventFilter
			want int
		}{
			{store.EventFilter{}, 6},
			{store.EventFilter{JobID: "a"}, 3},
			{store.EventFilter{After: seqs[2]}, 3},
			{store.EventFilter{JobID: "b", After: seqs[2]}, 2},
			{store.EventFilter{Limit: 4}, 4},
		} {
			evs, err := tx.Events(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != tt.want {
				t.Errorf("events %+v: %d, want %d", tt.f, len(evs), tt.want)
			}
		}
		if last, err := tx.LastEventSeq(ctx); err != nil || last != seqs[5] {
			t.Errorf("last event seq = %d, %v; want %d", last, err, seqs[5])
		}
		evs, _ := tx.Events(ctx, store.EventFilter{JobID: "b"})
		if string(evs[0].Payload) != `{"i":1}` || evs[0].Kind != "progress" || !evs[0].Time.Equal(t0) {
			t.Errorf("event = %+v", evs[0])
		}
		return nil
	})
}

func testTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	update(t, s, func(tx store.Tx) error {
		return tx.CreateToken(ctx, store.Token{ID: "t1", Name: "admin", Role: "admin", Hash: "h1", Created: t0})
	})
	update(t, s, func(tx store.Tx) error {
		return tx.CreateToken(ctx, store.Token{ID: "t2", Name: "ci", Role: "viewer", Hash: "h2", Created: t0.Add(time.Second)})
	})
	wantCode(t, s.Update(ctx, func(tx store.Tx) error {
		return tx.CreateToken(ctx, store.Token{ID: "t3", Name: "dup", Role: "viewer", Hash: "h2", Created: t0})
	}), errs.AlreadyExists)
	update(t, s, func(tx store.Tx) error { return tx.RevokeToken(ctx, "t2", t0.Add(time.Hour)) })
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, "t2", t0) }), errs.FailedPrecondition)
	wantCode(t, s.Update(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, "zz", t0) }), errs.NotFound)
	s.View(ctx, func(tx store.Tx) error {
		tk, err := tx.TokenByHash(ctx, "h2")
		if err != nil || tk.ID != "t2" || tk.Role != "viewer" || !tk.Revoked.Equal(t0.Add(time.Hour)) {
			t.Errorf("token = %+v, %v", tk, err)
		}
		_, err = tx.TokenByHash(ctx, "nope")
		wantCode(t, err, errs.NotFound)
		all, err := tx.Tokens(ctx)
		if err != nil || len(all) != 2 || all[0].ID != "t1" || !all[0].Revoked.IsZero() {
			t.Errorf("tokens = %+v, %v", all, err)
		}
		return nil
	})
}

func testAudit(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 3 {
		update(t, s, func(tx store.Tx) error {
			seq, hash, err := tx.AuditHead(ctx)
			if err != nil {
				return err
			}
			if seq != int64(i) {
				t.Errorf("head seq %d, want %d", seq, i)
			}
			return tx.AppendAudit(ctx, store.AuditRow{Seq: seq + 1, Time: t0, Actor: "a", Action: "x", Target: "y", Outcome: "ok",
				Detail: json.RawMessage(`{"k":"v"}`), PrevHash: hash, Hash: fmt.Sprintf("h%d", seq+1)})
		})
	}
	wantCode(t, s.Update(ctx, func(tx store.Tx) error {
		return tx.AppendAudit(ctx, store.AuditRow{Seq: 2, Time: t0, Hash: "dup"})
	}), errs.AlreadyExists)
	var rows []store.AuditRow
	s.View(ctx, func(tx store.Tx) error {
		seq, hash, err := tx.AuditHead(ctx)
		if err != nil || seq != 3 || hash != "h3" {
			t.Errorf("head = %d %q %v", seq, hash, err)
		}
		return tx.Audit(ctx, 1, 0, func(r store.AuditRow) error { rows = append(rows, r); return nil })
	})
	if len(rows) != 2 || rows[0].Seq != 2 || rows[0].PrevHash != "h1" || string(rows[0].Detail) != `{"k":"v"}` || !rows[0].Time.Equal(t0) {
		t.Errorf("audit rows = %+v", rows)
	}
}

func testRollback(t *testing.T, s store.Store) {
	ctx := t.Context()
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateSite(ctx, store.Site{Name: "gone", Kind: "fake"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update error %v, want boom", err)
	}
	err = s.View(ctx, func(tx store.Tx) error { _, err := tx.Site(ctx, "gone"); return err })
	wantCode(t, err, errs.NotFound)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Update(cctx, func(tx store.Tx) error { return nil }); errs.CodeOf(err) != errs.Canceled {
		t.Errorf("Update with a cancelled context: %v", err)
	}
}

// testConcurrent runs many read-modify-write transactions on one row at
// once: LockJob must serialise them so that no increment is lost.
func testConcurrent(t *testing.T, s store.Store) {
	ctx := t.Context()
	update(t, s, func(tx store.Tx) error {
		return tx.CreateJob(ctx, store.Job{ID: "c", Kind: "k", State: store.JobQueued, Args: json.RawMessage(`0`), Created: t0, Updated: t0})
	})
	const n = 40
	errc := make(chan error, n)
	for range n {
		go func() {
			errc <- s.Update(ctx, func(tx store.Tx) error {
				j, err := tx.LockJob(ctx, "c")
				if err != nil {
					return err
				}
				j.Attempt++
				return tx.PutJob(ctx, j)
			})
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	s.View(ctx, func(tx store.Tx) error {
		j, _ := tx.Job(ctx, "c")
		if j.Attempt != n {
			t.Errorf("attempt = %d after %d concurrent increments", j.Attempt, n)
		}
		return nil
	})
}
