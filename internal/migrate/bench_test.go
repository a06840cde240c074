package migrate

import (
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/store"
)

// BenchmarkMigrateXenToAWS migrates a VM with one disk (FERRY_BENCH_SIZE,
// default 4 GiB; FERRY_BENCH_FILL of it data, default 0.4) from the
// XenServer lab to the EC2 lab region, and converts the same disk (the
// VDI's VHD file in the lab's SR) to raw with the disk engine's Convert
// (what `ferry image convert` runs), on the same machine in the same run. It reports the MB/s of data
// of both, their ratio, and the bytes sent against the data blocks
// (bench/migrate.sh runs it).
func BenchmarkMigrateXenToAWS(b *testing.B) {
	size := int64(4 << 30)
	if v, err := strconv.ParseInt(os.Getenv("FERRY_BENCH_SIZE"), 10, 64); err == nil && v > 0 {
		size = v
	}
	fill := 0.4
	if v, err := strconv.ParseFloat(os.Getenv("FERRY_BENCH_FILL"), 64); err == nil && v > 0 {
		fill = v
	}
	for range b.N {
		b.StopTimer()
		l := newLabs(b)
		s, err := openSites(b.Context(), l.xenURL, l.awsURL, 0) // the provider's defaults, as in production
		if err != nil {
			b.Fatal(err)
		}
		src := pattern("bench", size, fill)
		id := addVM(b, s, "bench-1", src)
		var vm core.VM
		s["dc1"].ListVMs(b.Context(), provider.Filter{IDs: []core.VMID{id}}, func(v core.VM) error { vm = v; return nil })
		vhd := findVHD(b, l.xenDir, string(vm.Disks[0].ID))

		// the peer: ferry image convert of the same disk, VHD → raw
		reg := formats.Registry()
		out := filepath.Join(b.TempDir(), "out.raw")
		start := time.Now()
		in, err := reg.Open(b.Context(), vhd, nil)
		if err != nil {
			b.Fatal(err)
		}
		w, err := reg.Create(b.Context(), out, "raw", in.Size(), nil)
		if err != nil {
			b.Fatal(err)
		}
		cst, err := disk.Convert(b.Context(), w, in, nil)
		if err == nil {
			err = w.Commit(b.Context())
		}
		w.Close()
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
		convSecs := time.Since(start).Seconds()
		os.Remove(out)

		m := manager(b, b.TempDir(), s, true)
		if f := os.Getenv("FERRY_BENCH_CPUPROFILE"); f != "" {
			// The migration alone, not the set-up.
			out, err := os.Create(f)
			if err != nil {
				b.Fatal(err)
			}
			pprof.StartCPUProfile(out)
			defer func() { pprof.StopCPUProfile(); out.Close() }()
		}
		b.StartTimer()
		_, j := submit(b, m, s, Request{Source: "dc1", VM: "bench-1", Target: "aws1"})
		j = waitJob(b, m, j.ID, store.JobSucceeded, store.JobFailed, store.JobCanceled)
		b.StopTimer()
		if j.State != store.JobSucceeded {
			b.Fatalf("migration %s: %s", j.State, j.Error)
		}
		var r Result
		if err := jsonUnmarshal(j.Result, &r); err != nil || !r.Verified {
			b.Fatalf("result %s: %v", j.Result, err)
		}
		// Both rates count the same bytes: the disk's data, in the 512
		// KiB blocks that hold some.
		data := cst.Read
		blocks := nonZeroBlocks(b, src)
		convMBs := float64(blocks*BlockSize) / 1e6 / convSecs
		migMBs := float64(blocks*BlockSize) / 1e6 / r.TransferSecs
		b.ReportMetric(convMBs, "convert-MB/s")
		b.ReportMetric(migMBs, "transfer-MB/s")
		b.ReportMetric(migMBs/convMBs, "transfer/convert")
		b.ReportMetric(float64(blocks*BlockSize)/1e6/r.Seconds, "job-MB/s")
		b.ReportMetric(float64(r.BytesSent), "bytes-sent")
		b.ReportMetric(float64(blocks*BlockSize), "data-block-bytes")
		b.Logf("disk %d bytes, %d bytes read by convert, %d non-zero 512 KiB blocks; convert VHD→raw %.2f s (%.0f MB/s); migration transfer %.2f s (%.0f MB/s), verify+rest %.2f s, job %.2f s; sent %d bytes (data blocks: %d bytes)",
			size, data, blocks, convSecs, convMBs, r.TransferSecs, migMBs, r.Seconds-r.TransferSecs, r.Seconds, r.BytesSent, blocks*BlockSize)
	}
}

func findVHD(b testing.TB, dir, uuid string) string {
	var found string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && filepath.Base(p) == uuid+".vhd" {
			found = p
		}
		return nil
	})
	if found == "" {
		b.Fatalf("no VHD file for VDI %s under %s", uuid, dir)
	}
	return found
}
