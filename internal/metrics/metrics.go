// Package metrics exposes the control plane's Prometheus metrics on a
// registry of its own (never the process-wide default):
//
//	ferry_jobs{kind,state}                          jobs in the store, by kind and state
//	ferry_bytes_moved_total{kind}                   bytes reported by jobs' progress on this node
//	ferry_api_request_duration_seconds{method,route,code}  API latency histogram, by route pattern
//	ferry_site_up{site}                             1 when the site's last inventory refresh worked
//	ferry_site_vms{site}                            VMs found by the last refresh
//
// plus the Go runtime and process collectors.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-project/ferry/internal/store"
)

// SiteHealth is one site's state for the gauges.
type SiteHealth struct {
	Up  bool
	VMs int
}

// Sources are where the collected-at-scrape metrics come from; nil fields
// are skipped.
type Sources struct {
	Store store.Store
	Sites func() map[string]SiteHealth
}

// Metrics holds the collectors.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// New registers every collector on a new registry.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ferry_api_request_duration_seconds",
		Help:    "API request latency by method, route pattern and status code.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"method", "route", "code"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_bytes_moved_total",
		Help: "Bytes of work reported by jobs running on this node, by job kind.",
	}, []string{"kind"})
	m.reg.MustRegister(m.requests, m.bytes, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src.Store != nil {
		m.reg.MustRegister(&jobsCollector{st: src.Store})
	}
	if src.Sites != nil {
		m.reg.MustRegister(&sitesCollector{f: src.Sites})
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the metrics' registry (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveRequest records one API request.
func (m *Metrics) ObserveRequest(method, route string, code int, d time.Duration) {
	m.requests.WithLabelValues(method, route, strconv.Itoa(code)).Observe(d.Seconds())
}

// AddBytes records progress bytes of a job kind.
func (m *Metrics) AddBytes(kind string, n int64) {
	if n > 0 {
		m.bytes.WithLabelValues(kind).Add(float64(n))
	}
}

var jobsDesc = prometheus.NewDesc("ferry_jobs", "Jobs in the store by kind and state.", []string{"kind", "state"}, nil)

type jobsCollector struct{ st store.Store }

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var counts []store.JobCount
	if err := c.st.View(ctx, func(tx store.Tx) error {
		var err error
		counts, err = tx.JobCounts(ctx)
		return err
	}); err != nil {
		ch <- prometheus.NewInvalidMetric(jobsDesc, err)
		return
	}
	for _, jc := range counts {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(jc.N), jc.Kind, jc.State)
	}
}

var (
	siteUpDesc  = prometheus.NewDesc("ferry_site_up", "1 when the site's last inventory refresh succeeded.", []string{"site"}, nil)
	siteVMsDesc = prometheus.NewDesc("ferry_site_vms", "VMs found by the site's last inventory refresh.", []string{"site"}, nil)
)

type sitesCollector struct{ f func() map[string]SiteHealth }

func (c *sitesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- siteUpDesc; ch <- siteVMsDesc }

func (c *sitesCollector) Collect(ch chan<- prometheus.Metric) {
	for name, h := range c.f() {
		up := 0.0
		if h.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(siteUpDesc, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(siteVMsDesc, prometheus.GaugeValue, float64(h.VMs), name)
	}
}
