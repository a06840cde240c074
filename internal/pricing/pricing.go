// Package pricing estimates what a VM costs per month: EC2 on-demand list
// prices by region and instance type (plus EBS storage) for cloud VMs, and
// configurable per-vCPU, per-GiB-of-RAM and per-GiB-of-disk monthly rates
// for on-prem sites. The built-in table (prices.json) is small and
// approximate; a file given to [Load] overrides any part of it.
package pricing

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
)

//go:embed prices.json
var builtin []byte

// OnPrem are monthly rates for VMs on a site the installation owns.
type OnPrem struct {
	VCPUMonth   float64 `json:"vcpu_month"`
	GBRAMMonth  float64 `json:"gb_ram_month"`
	GBDiskMonth float64 `json:"gb_disk_month"`
}

// Shape is an instance type's size.
type Shape struct {
	VCPUs     int   `json:"vcpus"`
	MemoryMiB int64 `json:"memory_mib"`
}

// Table is a price table.
type Table struct {
	Version       int     `json:"version"`
	Currency      string  `json:"currency"`
	HoursPerMonth float64 `json:"hours_per_month"`
	// InstanceTypes are the shapes of the instance types the table prices.
	InstanceTypes map[string]Shape              `json:"instance_types"`
	EC2           map[string]map[string]float64 `json:"ec2"`          // region -> instance type -> USD/hour
	EBSGBMonth    map[string]float64            `json:"ebs_gb_month"` // region -> USD per GiB-month
	OnPrem        OnPrem                        `json:"onprem"`
	// Sites overrides the on-prem rates per site name.
	Sites map[string]OnPrem `json:"sites"`
}

// Default returns the built-in table.
func Default() *Table {
	var t Table
	if err := json.Unmarshal(builtin, &t); err != nil {
		panic("pricing: built-in table: " + err.Error())
	}
	return &t
}

// Load returns the built-in table with the file at path merged over it
// (path "" returns the built-in table).
func Load(path string) (*Table, error) {
	t := Default()
	if path == "" {
		return t, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("prices: %w", err)
	}
	var o Table
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("prices %s: %v: %w", path, err, errs.ErrInvalidArgument)
	}
	if o.Currency != "" {
		t.Currency = o.Currency
	}
	if o.HoursPerMonth > 0 {
		t.HoursPerMonth = o.HoursPerMonth
	}
	for region, types := range o.EC2 {
		if t.EC2[region] == nil {
			t.EC2[region] = map[string]float64{}
		}
		for it, p := range types {
			t.EC2[region][it] = p
		}
	}
	for it, sh := range o.InstanceTypes {
		if t.InstanceTypes == nil {
			t.InstanceTypes = map[string]Shape{}
		}
		t.InstanceTypes[it] = sh
	}
	for region, p := range o.EBSGBMonth {
		t.EBSGBMonth[region] = p
	}
	if o.OnPrem != (OnPrem{}) {
		t.OnPrem = o.OnPrem
	}
	if t.Sites == nil {
		t.Sites = map[string]OnPrem{}
	}
	for s, p := range o.Sites {
		t.Sites[s] = p
	}
	return t, nil
}

const gib = 1 << 30

// Monthly estimates vm's monthly cost. region is the site's region (EC2);
// ok is false when the table cannot price it (an instance type or region it
// does not list).
func (t *Table) Monthly(vm core.VM, region string) (cost float64, ok bool) {
	var disk int64
	for _, d := range vm.Disks {
		disk += d.Size
	}
	if vm.InstanceTyp != "" {
		hourly, ok := t.EC2[region][vm.InstanceTyp]
		if !ok {
			return 0, false
		}
		cost = hourly*t.HoursPerMonth + float64(disk)/gib*t.EBSGBMonth[region]
		return round(cost), true
	}
	r := t.OnPrem
	if s, ok := t.Sites[string(vm.Site)]; ok {
		r = s
	}
	cost = float64(vm.CPUs)*r.VCPUMonth + float64(vm.MemoryBytes)/gib*r.GBRAMMonth + float64(disk)/gib*r.GBDiskMonth
	return round(cost), true
}

func round(c float64) float64 { return math.Round(c*100) / 100 }

// Offer is an instance type placed in a region, with its price.
type Offer struct {
	Type      string  `json:"instance_type"`
	VCPUs     int     `json:"vcpus"`
	MemoryMiB int64   `json:"memory_mib"`
	Hourly    float64 `json:"hourly"`
	Monthly   float64 `json:"monthly"` // the instance alone, HoursPerMonth hours
	Currency  string  `json:"currency"`
}

// Offer returns the shape and price of instance type it in region; ok is
// false when the table lacks either.
func (t *Table) Offer(region, it string) (Offer, bool) {
	sh, okShape := t.InstanceTypes[it]
	hourly, okPrice := t.EC2[region][it]
	if !okShape || !okPrice {
		return Offer{Type: it, VCPUs: sh.VCPUs, MemoryMiB: sh.MemoryMiB, Hourly: hourly, Currency: t.Currency}, false
	}
	return Offer{Type: it, VCPUs: sh.VCPUs, MemoryMiB: sh.MemoryMiB, Hourly: hourly,
		Monthly: round(hourly * t.HoursPerMonth), Currency: t.Currency}, true
}

// Fit returns the cheapest instance type priced in region with at least
// cpus vCPUs and memBytes of memory (ties go to the smaller, then to the
// name). It fails with NotFound when the region is not in the table and
// with FailedPrecondition when no listed type is large enough.
func (t *Table) Fit(region string, cpus int, memBytes int64) (Offer, error) {
	prices, ok := t.EC2[region]
	if !ok {
		return Offer{}, fmt.Errorf("price table: region %q not listed (add it with --prices): %w", region, errs.ErrNotFound)
	}
	var best Offer
	found := false
	for it := range prices {
		o, ok := t.Offer(region, it)
		if !ok || o.VCPUs < cpus || o.MemoryMiB<<20 < memBytes {
			continue
		}
		better := !found || o.Hourly < best.Hourly ||
			(o.Hourly == best.Hourly && (o.VCPUs < best.VCPUs || (o.VCPUs == best.VCPUs && (o.MemoryMiB < best.MemoryMiB || (o.MemoryMiB == best.MemoryMiB && o.Type < best.Type)))))
		if better {
			best, found = o, true
		}
	}
	if !found {
		return Offer{}, fmt.Errorf("price table: no instance type in %s has %d vCPUs and %d MiB of memory: %w", region, cpus, memBytes>>20, errs.ErrFailedPrecondition)
	}
	return best, nil
}
