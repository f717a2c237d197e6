package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Run errors.
var (
	// ErrAlreadyRun means Run was called a second time on one Sim.
	ErrAlreadyRun = errors.New("sim already run")
	// ErrNoConnection means not one vehicle could connect to the broker during the run.
	ErrNoConnection = errors.New("no vehicle could connect to the broker")
)

// Stats counts what a run did. Fix counts are fixes, not messages: a batch
// of n fixes counts n. For QoS 1, sent = acked + failed once Run has
// returned. QoS 0 messages are never acked and count as failed only when
// paho reports an error.
type Stats struct {
	// Vehicles is the number of simulated vehicles.
	Vehicles int
	// VehiclesConnected counts vehicles that connected at least once.
	VehiclesConnected int
	FixesSent         uint64
	// FixMessages counts fix messages published. It equals FixesSent when Batch is 1.
	FixMessages uint64
	FixesAcked  uint64
	FixesFailed uint64
	SOSSent     uint64
	SOSAcked    uint64
	SOSFailed   uint64
	// ConnectFailures counts failed connection attempts, first connections and reconnections.
	ConnectFailures uint64
	// ConnectionsLost counts connections that dropped without the vehicle asking.
	ConnectionsLost uint64
	// FixLatency and SOSLatency measure each acknowledged message from its
	// scheduled send time to its PUBACK.
	FixLatency LatencySummary
	SOSLatency LatencySummary
	// Elapsed is the time since Run started.
	Elapsed time.Duration
}

// Sim is one simulation run. Create it with New and start it with Run. Stats
// may be called from any goroutine while it runs.
type Sim struct {
	cfg     Config
	log     *slog.Logger
	limited *limitedLog
	metrics *metrics

	started atomic.Bool
	startAt atomic.Int64 // monotonic start, as nanoseconds since runEpoch
	endAt   atomic.Int64 // 0 while running

	fixesSent, fixMessages, fixesAcked, fixesFailed atomic.Uint64
	sosSent, sosAcked, sosFailed                    atomic.Uint64
	connectFailures, connectionsLost                atomic.Uint64
	vehicles, vehiclesConnected                     atomic.Int64

	fixLatency, sosLatency latencyRecorder
}

// runEpoch anchors the monotonic times kept in atomics.
var runEpoch = time.Now()

// New returns a simulator for cfg with the documented defaults filled in.
// It does no I/O, and Run validates cfg.
func New(cfg Config) *Sim {
	cfg = cfg.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("component", "sim")
	return &Sim{
		cfg:     cfg,
		log:     log,
		limited: newLimitedLog(log, 5*time.Second),
		metrics: newMetrics(cfg.Registerer),
	}
}

// Run is New(cfg).Run(ctx).
func Run(ctx context.Context, cfg Config) (Stats, error) {
	return New(cfg).Run(ctx)
}

// Run validates the configuration, loads the trace, connects every
// vehicle and replays until ctx is done, Duration has passed or every
// vehicle reached the end of its track. It then waits for outstanding
// PUBACKs (at most PublishTimeout), publishes each vehicle's offline status
// and disconnects. The end of ctx is a normal stop, not an error. Run
// returns an error for an invalid configuration or trace, and
// ErrNoConnection when no vehicle ever connected. The Stats are valid in
// every case. Run may be called only once.
func (s *Sim) Run(ctx context.Context) (Stats, error) {
	if !s.started.CompareAndSwap(false, true) {
		return s.Stats(), ErrAlreadyRun
	}
	s.startAt.Store(int64(time.Since(runEpoch)))
	defer func() { s.endAt.Store(max(int64(time.Since(runEpoch)), 1)) }()

	if err := s.cfg.Validate(); err != nil {
		return s.Stats(), err
	}
	trace, loop, err := s.loadTrace()
	if err != nil {
		return s.Stats(), err
	}

	if s.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Duration)
		defer cancel()
	}

	seed := uint64(s.cfg.Seed)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	vehicles := s.planVehicles(trace, loop, seed)
	s.vehicles.Store(int64(len(vehicles)))
	s.log.Info("simulation starting", "broker", s.cfg.Broker, "vehicles", len(vehicles),
		"trace", trace.Name, "tracks", len(trace.Tracks), "points", trace.Points(),
		"rate", s.cfg.Rate, "speedup", s.cfg.Speedup, "loop", loop, "sos_every", s.cfg.SOSEvery,
		"batch", s.cfg.Batch, "qos", s.cfg.QoS.level())

	var wg sync.WaitGroup
	for _, v := range vehicles {
		wg.Go(func() { v.run(ctx) })
	}
	wg.Wait()

	stats := s.Stats()
	s.log.Info("simulation stopped", "elapsed", stats.Elapsed,
		"vehicles_connected", stats.VehiclesConnected, "fixes_sent", stats.FixesSent,
		"fixes_acked", stats.FixesAcked, "fixes_failed", stats.FixesFailed,
		"sos_sent", stats.SOSSent, "sos_acked", stats.SOSAcked, "sos_failed", stats.SOSFailed,
		"connect_failures", stats.ConnectFailures, "connections_lost", stats.ConnectionsLost,
		"fix_latency_p50", stats.FixLatency.P50, "fix_latency_p99", stats.FixLatency.P99,
		"fix_latency_max", stats.FixLatency.Max)
	if stats.VehiclesConnected == 0 {
		return stats, fmt.Errorf("%w at %s: %d failed attempts", ErrNoConnection, s.cfg.Broker, stats.ConnectFailures)
	}
	return stats, nil
}

// loadTrace returns the trace to replay and whether it loops.
func (s *Sim) loadTrace() (*Trace, bool, error) {
	switch {
	case s.cfg.Source != nil:
		if s.cfg.Source.Points() == 0 {
			return nil, false, fmt.Errorf("%w: %s", ErrEmptyTrace, s.cfg.Source.Name)
		}
		return s.relocate(s.cfg.Source), s.cfg.Loop || s.cfg.Source.Format == FormatSynthetic, nil
	case s.cfg.Trace != "":
		tr, err := LoadTrace(s.cfg.Trace)
		if err != nil {
			return nil, false, err
		}
		return s.relocate(tr), s.cfg.Loop, nil
	default:
		return Synthetic(DefaultSyntheticRoutes), true, nil
	}
}

// relocate applies Config.RelocateTo to a replayed trace.
func (s *Sim) relocate(tr *Trace) *Trace {
	if s.cfg.RelocateTo == nil || tr.Format == FormatSynthetic {
		return tr
	}
	return tr.RelocatedTo(*s.cfg.RelocateTo)
}

// planVehicles maps vehicles onto tracks round-robin: vehicle i replays
// track i mod n. Vehicles sharing a track start at evenly spaced points
// of it, so they are not all in one place.
func (s *Sim) planVehicles(trace *Trace, loop bool, seed uint64) []*vehicle {
	tracks := len(trace.Tracks)
	sharing := (s.cfg.Vehicles + tracks - 1) / tracks
	vehicles := make([]*vehicle, s.cfg.Vehicles)
	for i := range vehicles {
		track := &trace.Tracks[i%tracks]
		start := (i / tracks) * len(track.Points) / sharing
		vehicles[i] = newVehicle(s, vehicleID(s.cfg.VehiclePrefix, i+1), track, start, loop,
			rand.New(rand.NewPCG(seed, uint64(i))))
	}
	return vehicles
}

// Stats returns the counts so far. It is safe for concurrent use, also
// while Run is running.
func (s *Sim) Stats() Stats {
	st := Stats{
		Vehicles:          int(s.vehicles.Load()),
		VehiclesConnected: int(s.vehiclesConnected.Load()),
		FixesSent:         s.fixesSent.Load(),
		FixMessages:       s.fixMessages.Load(),
		FixesAcked:        s.fixesAcked.Load(),
		FixesFailed:       s.fixesFailed.Load(),
		SOSSent:           s.sosSent.Load(),
		SOSAcked:          s.sosAcked.Load(),
		SOSFailed:         s.sosFailed.Load(),
		ConnectFailures:   s.connectFailures.Load(),
		ConnectionsLost:   s.connectionsLost.Load(),
		FixLatency:        s.fixLatency.summary(),
		SOSLatency:        s.sosLatency.summary(),
	}
	if s.started.Load() {
		end := s.endAt.Load()
		if end == 0 {
			end = int64(time.Since(runEpoch))
		}
		st.Elapsed = time.Duration(end - s.startAt.Load())
	}
	return st
}

// limitedLog logs a repeating event at most once per interval per key and
// reports how many were left out.
type limitedLog struct {
	log      *slog.Logger
	interval time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	left map[string]int
}

func newLimitedLog(log *slog.Logger, interval time.Duration) *limitedLog {
	return &limitedLog{log: log, interval: interval, last: map[string]time.Time{}, left: map[string]int{}}
}

// warn logs msg at warning level unless the same key was logged within the interval.
func (l *limitedLog) warn(key, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if last, ok := l.last[key]; ok && now.Sub(last) < l.interval {
		l.left[key]++
		l.mu.Unlock()
		return
	}
	left := l.left[key]
	l.last[key], l.left[key] = now, 0
	l.mu.Unlock()

	if left > 0 {
		args = append(args, "similar_left_out", left)
	}
	l.log.Warn(msg, args...)
}

// recordAck counts a message whose PUBACK arrived after latency.
func (s *Sim) recordAck(m pendingMsg, latency time.Duration) {
	qos1 := true
	switch m.kind {
	case kindFix:
		qos1 = s.cfg.QoS.level() == 1
		if qos1 {
			s.fixesAcked.Add(uint64(m.fixes))
			s.fixLatency.record(latency)
		}
	case kindSOS:
		s.sosAcked.Add(1)
		s.sosLatency.record(latency)
	}
	if qos1 {
		s.metrics.acked.WithLabelValues(m.kind).Inc()
		s.metrics.latency.WithLabelValues(m.kind).Observe(latency.Seconds())
	}
}

// recordFailure counts a message that got no PUBACK.
func (s *Sim) recordFailure(m pendingMsg, reason string) {
	switch m.kind {
	case kindFix:
		s.fixesFailed.Add(uint64(m.fixes))
	case kindSOS:
		s.sosFailed.Add(1)
	}
	s.metrics.failed.WithLabelValues(m.kind, reason).Inc()
}
