package migrate

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/formats"
	"github.com/ferry-project/ferry/internal/job"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/store"
)

// BenchmarkMigrateXenToAWS migrates a VM with one disk (FERRY_BENCH_SIZE,
// default 4 GiB; FERRY_BENCH_FILL of it data, default 0.4) from the
// XenServer lab to the EC2 lab region, and converts the same disk (the
// VDI's VHD file in the lab's SR) to raw with the disk engine's Convert
// (what `ferry image convert` runs), on the same machine in the same
// run. It reports the MB/s of data of both, their ratio, the bytes sent
// against the data blocks and how long each step of the job took
// (bench/migrate.sh runs it). Both are measured with the set-up's writes
// flushed to disk first. FERRY_BENCH_CPUPROFILE=file profiles the whole
// process during one step of the job (FERRY_BENCH_STEP, default
// transfer), with an execution trace beside it.
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
		syscall.Sync() // the set-up's writes reach the disk before either is measured

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
		syscall.Sync()

		m := manager(b, b.TempDir(), s, true)
		b.StartTimer()
		_, j := submit(b, m, s, Request{Source: "dc1", VM: "bench-1", Target: "aws1"})
		steps := watchSteps(b, m, j.ID, cmp.Or(os.Getenv("FERRY_BENCH_STEP"), "transfer"), os.Getenv("FERRY_BENCH_CPUPROFILE"))
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
		b.Logf("steps: %s", steps)
	}
}

// watchSteps follows job id until it ends and returns how long each step
// took (as seen by polling its progress). With file set, it writes a CPU
// profile and an execution trace (file.trace) of the whole process
// (ferry and both labs) while the job runs the named step.
func watchSteps(b *testing.B, m *job.Manager, id, step, file string) string {
	var out strings.Builder
	cur, since := "", time.Now()
	profiling := false
	stop := func() {
		if profiling {
			pprof.StopCPUProfile()
			trace.Stop()
			profiling = false
		}
	}
	defer stop()
	for {
		j, err := m.Get(b.Context(), id)
		if err != nil {
			b.Fatal(err)
		}
		now := ""
		if j.Progress != nil && j.Progress.Step < len(j.Steps) && !store.JobTerminal(j.State) {
			now = j.Steps[j.Progress.Step]
		}
		if now != cur {
			if cur != "" {
				fmt.Fprintf(&out, "%s %.2f s; ", cur, time.Since(since).Seconds())
			}
			if cur == step {
				stop()
			}
			if now == step && file != "" {
				startProfile(b, file)
				profiling = true
			}
			cur, since = now, time.Now()
		}
		if store.JobTerminal(j.State) {
			return strings.TrimSuffix(out.String(), "; ")
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a timing assumption
	}
}

func startProfile(b *testing.B, file string) {
	pf, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	tf, err := os.Create(file + ".trace")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pf.Close(); tf.Close() })
	if err := pprof.StartCPUProfile(pf); err != nil {
		b.Fatal(err)
	}
	if err := trace.Start(tf); err != nil {
		b.Fatal(err)
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
