package pricing_test

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/pricing"
)

func TestMonthly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(p, []byte(`{"onprem":{"vcpu_month":10,"gb_ram_month":1,"gb_disk_month":0},"sites":{"cheap":{"vcpu_month":1}},"ec2":{"ap-south-1":{"t3.micro":0.01}}}`), 0o644)
	over, err := pricing.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	disk := []core.Disk{{Size: 100 << 30}}
	tests := []struct {
		name   string
		t      *pricing.Table
		vm     core.VM
		region string
		cost   float64
		ok     bool
	}{
		{"ec2", pricing.Default(), core.VM{InstanceTyp: "m5.large", Disks: disk}, "us-east-1", 0.096*730 + 8, true},
		{"ec2 unknown type", pricing.Default(), core.VM{InstanceTyp: "x9.huge"}, "us-east-1", 0, false},
		{"ec2 unknown region", pricing.Default(), core.VM{InstanceTyp: "m5.large"}, "mars-1", 0, false},
		{"onprem", pricing.Default(), core.VM{CPUs: 2, MemoryBytes: 4 << 30, Disks: disk}, "", 2*12 + 4*3 + 5, true},
		{"override", over, core.VM{CPUs: 2, MemoryBytes: 4 << 30, Disks: disk}, "", 24, true},
		{"per site", over, core.VM{Site: "cheap", CPUs: 2, MemoryBytes: 4 << 30}, "", 2, true},
		{"added region", over, core.VM{InstanceTyp: "t3.micro"}, "ap-south-1", 7.3, true},
		{"kept region", over, core.VM{InstanceTyp: "t3.micro"}, "us-east-1", 7.59, true},
	}
	for _, tt := range tests {
		cost, ok := tt.t.Monthly(tt.vm, tt.region)
		if ok != tt.ok || cost != tt.cost {
			t.Errorf("%s: %v %v, want %v %v", tt.name, cost, ok, tt.cost, tt.ok)
		}
	}
	if _, err := pricing.Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestFit(t *testing.T) {
	tab := pricing.Default()
	tests := []struct {
		name    string
		region  string
		cpus    int
		mem     int64
		want    string
		wantErr error
	}{
		{"tiny VM gets the cheapest", "us-east-1", 1, 256 << 20, "t3.micro", nil},
		{"2 vCPU 4 GiB", "us-east-1", 2, 4 << 30, "t3.medium", nil},
		{"4 vCPU 8 GiB", "us-east-1", 4, 8 << 30, "t3.xlarge", nil},
		{"8 vCPU 16 GiB: c5 is cheaper than m5", "us-east-1", 8, 16 << 30, "c5.2xlarge", nil},
		{"8 vCPU 64 GiB", "eu-west-1", 8, 64 << 30, "r5.2xlarge", nil},
		{"too large", "us-east-1", 128, 1 << 40, "", errs.ErrFailedPrecondition},
		{"unknown region", "mars-north-1", 1, 1 << 30, "", errs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := tab.Fit(tc.region, tc.cpus, tc.mem)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Fit = %+v, %v; want %v", o, err, tc.wantErr)
				}
				return
			}
			if err != nil || o.Type != tc.want {
				t.Fatalf("Fit = %+v, %v; want %s", o, err, tc.want)
			}
			if o.VCPUs < tc.cpus || o.MemoryMiB<<20 < tc.mem || o.Monthly <= 0 || o.Monthly != math.Round(o.Hourly*tab.HoursPerMonth*100)/100 {
				t.Fatalf("offer %+v does not fit or is mispriced", o)
			}
		})
	}
}
