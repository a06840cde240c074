package metrics_test

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/metrics"
	"github.com/ferry-project/ferry/internal/store"
)

func TestMetrics(t *testing.T) {
	st, err := store.Open(t.Context(), store.Location{Dialect: store.SQLite, Path: filepath.Join(t.TempDir(), "f.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Update(t.Context(), func(tx store.Tx) error {
		return tx.CreateJob(t.Context(), store.Job{ID: "j1", Kind: "image.convert", State: "running", Args: json.RawMessage("{}"), Created: time.Now(), Updated: time.Now()})
	})
	m := metrics.New(metrics.Sources{Store: st, Sites: func() map[string]metrics.SiteHealth {
		return map[string]metrics.SiteHealth{"lab": {Up: true, VMs: 3}, "down": {}}
	}})
	m.ObserveRequest("GET", "/api/v1/vms", 200, 3*time.Millisecond)
	m.AddBytes("image.convert", 1<<20)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`ferry_jobs{kind="image.convert",state="running"} 1`,
		`ferry_bytes_moved_total{kind="image.convert"} 1.048576e+06`,
		`ferry_api_request_duration_seconds_bucket{code="200",method="GET",route="/api/v1/vms",le="0.005"} 1`,
		`ferry_site_up{site="lab"} 1`,
		`ferry_site_up{site="down"} 0`,
		`ferry_site_vms{site="lab"} 3`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
