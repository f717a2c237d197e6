//go:build unix

package spool_test

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkSpool_AppendPaced appends single fixes from 500 callers at
// 4,000 appends per second in all, as vehicles publish, and reports the
// records per commit and the process CPU time per append. It compares
// the default group commit, which waits for more requests under load
// (see Config.CommitInterval), with committing whatever is waiting at once.
func BenchmarkSpool_AppendPaced(b *testing.B) {
	for _, bc := range []struct {
		name     string
		interval time.Duration
	}{
		{"paced", 0},
		{"at_once", -1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const callers, rate = 500, 4000
			reg := prometheus.NewRegistry()
			s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db"), Registerer: reg, CommitInterval: bc.interval})
			if err := s.Open(); err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			commitsBefore := counter(b, reg, "xpress_agent_spool_commits_total")
			cpuBefore := processCPU(b)

			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for range callers {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						// Append i is due at i/rate seconds.
						time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
						if err := s.Append(context.Background(), []protocol.Record{gpsFix(int(i % 1000000))}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()

			commits := counter(b, reg, "xpress_agent_spool_commits_total") - commitsBefore
			b.ReportMetric(float64(b.N)/commits, "records/commit")
			b.ReportMetric(float64((processCPU(b)-cpuBefore).Microseconds())/float64(b.N), "cpu-µs/append")
		})
	}
}

// counter returns the value of the unlabelled counter name in reg.
func counter(b *testing.B, reg *prometheus.Registry, name string) float64 {
	b.Helper()
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	b.Fatalf("counter %s not found", name)
	return 0
}

// processCPU returns the user and system CPU time this process used.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
