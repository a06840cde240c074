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

// Table is a price table.
type Table struct {
	Version       int                           `json:"version"`
	Currency      string                        `json:"currency"`
	HoursPerMonth float64                       `json:"hours_per_month"`
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
