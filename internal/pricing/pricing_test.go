package pricing_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-project/ferry/internal/core"
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
