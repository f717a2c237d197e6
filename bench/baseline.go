package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xpress-ops/tower/hub/store/postgres"
)

// BaselineConfig configures the baseline scenario: the naive writer of
// simple trackers, one INSERT per fix in its own transaction, against the
// hub's PostgreSQL schema.
type BaselineConfig struct {
	// Workers is the number of concurrent writers, each with its own connection.
	Workers int
	// Duration is how long the writers insert.
	Duration time.Duration
	// Vehicles is the number of distinct vehicle ids the fixes belong to.
	Vehicles int
}

// DefaultBaselineConfig returns the baseline scenario's defaults: one
// writer, like a simple tracker's ingest loop and like BenchmarkCommitNaive
// in hub/store/postgres. More workers share PostgreSQL's WAL flushes
// (group commit), so the rate grows with them.
func DefaultBaselineConfig() BaselineConfig {
	return BaselineConfig{Workers: 1, Duration: 10 * time.Second, Vehicles: 1000}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *BaselineConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Workers, "workers", c.Workers, "concurrent writers, one connection each")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long to insert")
	fs.IntVar(&c.Vehicles, "vehicles", c.Vehicles, "distinct vehicle ids of the fixes")
}

func (c BaselineConfig) validate() error {
	var errs []error
	if c.Workers < 1 || c.Workers > 1000 {
		errs = append(errs, fmt.Errorf("invalid --workers %d: use 1 to 1000", c.Workers))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("invalid --duration %s: use a positive duration", c.Duration))
	}
	if c.Vehicles < 1 {
		errs = append(errs, fmt.Errorf("invalid --vehicles %d: use at least 1", c.Vehicles))
	}
	return errors.Join(errs...)
}

// BaselineResult is the outcome of the baseline scenario.
type BaselineResult struct {
	Config         BaselineConfig `json:"config"`
	Inserted       int64          `json:"inserted"`
	Failed         int64          `json:"failed"`
	RowsInTable    int64          `json:"rows_in_table"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	FixesPerSec    float64        `json:"fixes_per_s"`
	// Latency is each INSERT's round trip, commit included.
	Latency    Latency `json:"insert_latency"`
	FirstError string  `json:"first_error,omitempty"`
}

// Print writes the figures.
func (r *BaselineResult) Print(w io.Writer) {
	fmt.Fprintf(w, "one INSERT per fix, %d %s: %s fixes/s (%d inserted in %.2fs, %d failed, %d rows in table)\n",
		r.Config.Workers, plural(r.Config.Workers, "worker", "workers"), fmtRate(r.FixesPerSec), r.Inserted, r.ElapsedSeconds, r.Failed, r.RowsInTable)
	fmt.Fprintf(w, "INSERT latency: %s\n", r.Latency)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first failure: %s\n", r.FirstError)
	}
}

// Targets returns none: the baseline is the reference for the e2e target.
func (r *BaselineResult) Targets() []Target { return nil }

// RunBaseline runs the baseline scenario on a fresh database.
func RunBaseline(ctx context.Context, cfg BaselineConfig, opts Options) (*BaselineResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()
	return runBaseline(ctx, env, cfg)
}

// runBaseline creates a database with the hub's schema, lets the workers
// insert for the configured duration, and counts the rows afterwards.
func runBaseline(ctx context.Context, env *runEnv, cfg BaselineConfig) (*BaselineResult, error) {
	dbURL, err := env.newDatabase(ctx)
	if err != nil {
		return nil, err
	}
	// The store's Open applies the migrations and creates the daily
	// partitions, so the naive writer fills the same table as the hub.
	st := postgres.New(postgres.Config{URL: dbURL, Logger: env.compLog, MaxConns: int32(cfg.Workers)})
	if err := st.Open(ctx); err != nil {
		return nil, fmt.Errorf("open PostgreSQL store: %w", err)
	}
	defer st.Close()
	pool := st.Pool()

	ids := make([]string, cfg.Vehicles)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-base-%06d", i+1)
	}
	rec := NewRecorder()
	var inserted, failed atomic.Int64
	var errOnce sync.Once
	var firstErr string
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	env.log.Info("baseline inserting", "workers", cfg.Workers, "duration", cfg.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Go(func() {
			for i := int64(w); runCtx.Err() == nil; i += int64(cfg.Workers) {
				now := time.Now()
				step := float64(i%10_000) * 0.00001
				speed := 32.5
				t0 := time.Now()
				_, err := pool.Exec(runCtx, `
					INSERT INTO fixes (vehicle_id, agent_id, region, ts, received_at, lat, lon, speed_kmh, historical)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
					ids[i%int64(len(ids))], "bench-base", "NCR-Manila", now, now, 14.55+step, 120.98+step, &speed, false)
				if err != nil {
					if runCtx.Err() != nil {
						// The insert the deadline interrupted may or may
						// not have committed; the row count settles it.
						return
					}
					failed.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
					continue
				}
				rec.Record(time.Since(t0))
				inserted.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := &BaselineResult{
		Config:         cfg,
		Inserted:       inserted.Load(),
		Failed:         failed.Load(),
		ElapsedSeconds: elapsed.Seconds(),
		Latency:        rec.Summary(),
		FirstError:     firstErr,
	}
	res.FixesPerSec = float64(res.Inserted) / res.ElapsedSeconds
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.RowsInTable, err = countRows(ctx, pool, "fixes"); err != nil {
		return res, err
	}
	env.log.Info("baseline done", "fixes_per_s", res.FixesPerSec, "inserted", res.Inserted, "rows", res.RowsInTable)
	return res, nil
}
