package api_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/auth"
)

// BenchmarkInventory serves GET /api/v1/vms over HTTP with 10,000 VMs in
// the inventory (10 fake sites of 1,000, half of them priced as EC2). The
// target is well under 100 ms per request.
func BenchmarkInventory(b *testing.B) {
	e := newEnv(b)
	e.addFakeSites(5, 1000, "")
	e.addFakeSites(0, 0, "")
	for i := 5; i < 10; i++ {
		name := "cloud" + string(rune('0'+i))
		e.want(201, "POST", "/api/v1/sites", auth.Admin, map[string]any{"name": name, "kind": "fake", "endpoint": "fake://" + name + "?vms=1000&region=eu-west-1&seed=" + string(rune('0'+i))})
		e.want(200, "POST", "/api/v1/sites/"+name+"/refresh", auth.Operator, nil)
	}
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/vms", nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens[auth.Viewer])
	get := func() int64 {
		res, err := e.srv.Client().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			b.Fatalf("status %d", res.StatusCode)
		}
		return n
	}
	size := get()
	b.SetBytes(size)
	b.ResetTimer()
	var worst time.Duration
	for b.Loop() {
		start := time.Now()
		get()
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}
