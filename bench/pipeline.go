package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/hub"
)

// pipeline is the whole tower of a scenario, in this process: a hub on a
// fresh PostgreSQL database and one agent forwarding to it.
type pipeline struct {
	env   *runEnv
	dbURL string
	pool  *pgxpool.Pool
	hub   *hub.Hub
	agent *agent.Agent
}

// startPipeline creates the database, starts the hub and an agent, and
// waits until the agent's uplink is connected.
func startPipeline(ctx context.Context, env *runEnv, agentID string) (*pipeline, error) {
	p := &pipeline{env: env}
	var err error
	if p.dbURL, err = env.newDatabase(ctx); err != nil {
		return nil, err
	}
	if p.hub, err = env.startHub(ctx, p.dbURL, "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if p.pool, err = env.openPool(ctx, p.dbURL); err != nil {
		return nil, err
	}
	if p.agent, err = env.startAgent(ctx, agentID, p.hub.AgentMQTTAddr().String(), nil); err != nil {
		return nil, err
	}
	if err := waitUplink(ctx, p.agent, 30*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// waitUplink waits until the agent's uplink is connected to the hub.
func waitUplink(ctx context.Context, a *agent.Agent, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for a.UplinkState() != uplink.StateConnected {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent uplink did not connect to the hub within %s", timeout)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// agentURL returns the MQTT URL vehicles connect to.
func (p *pipeline) agentURL() string { return "tcp://" + p.agent.MQTTAddr().String() }

// BacklogSample is one reading of the agent's spool backlog and the
// hub's stored fixes.
type BacklogSample struct {
	// AtSeconds is the time since sampling started.
	AtSeconds float64 `json:"at_s"`
	// Backlog is the fixes in the agent's spool waiting for the hub.
	Backlog int64 `json:"backlog"`
	// Committed is the fixes the hub has stored.
	Committed int64 `json:"committed"`
}

// sampler reads the backlog and the stored fixes at a fixed interval.
type sampler struct {
	start   time.Time
	mu      sync.Mutex
	samples []BacklogSample
	err     error
	cancel  context.CancelFunc
	done    chan struct{}
}

// startSampler samples p every interval until stop.
func (p *pipeline) startSampler(ctx context.Context, interval time.Duration) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{start: time.Now(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if _, err := p.sample(ctx, s); err != nil && ctx.Err() == nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// sample takes one reading and appends it to s.
func (p *pipeline) sample(ctx context.Context, s *sampler) (BacklogSample, error) {
	backlog, err := gpsBacklog(ctx, p.agent)
	if err != nil {
		return BacklogSample{}, err
	}
	committed, err := hubCommittedFixes(ctx, p.hub)
	if err != nil {
		return BacklogSample{}, err
	}
	b := BacklogSample{AtSeconds: time.Since(s.start).Seconds(), Backlog: backlog, Committed: committed}
	s.mu.Lock()
	s.samples = append(s.samples, b)
	s.mu.Unlock()
	return b, nil
}

// stop ends sampling and returns the samples and the error that ended it early, if any.
func (s *sampler) stop() ([]BacklogSample, error) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, s.err
}

// backlogSlope fits a line through the samples taken from fromSeconds to
// toSeconds and returns its slope in fixes per second, and the number of
// samples used.
func backlogSlope(samples []BacklogSample, fromSeconds, toSeconds float64) (float64, int) {
	var n, sx, sy, sxx, sxy float64
	for _, s := range samples {
		if s.AtSeconds < fromSeconds || s.AtSeconds > toSeconds {
			continue
		}
		x, y := s.AtSeconds, float64(s.Backlog)
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	if n < 2 || n*sxx-sx*sx == 0 {
		return 0, int(n)
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx), int(n)
}

// waitDrained waits until the hub has stored want fixes and the agent's
// backlog is empty, and returns when that happened. It polls only the
// agent's /metrics until the backlog is empty, to load the hub no more
// than the sampler does, and records the readings that include the hub in s.
func (p *pipeline) waitDrained(ctx context.Context, s *sampler, want int64, timeout time.Duration, poll time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		backlog, err := gpsBacklog(ctx, p.agent)
		if err != nil {
			return time.Time{}, err
		}
		expired := time.Now().After(deadline)
		if backlog > 0 && !expired {
			if err := sleepCtx(ctx, poll); err != nil {
				return time.Time{}, err
			}
			continue
		}
		b, err := p.sample(ctx, s)
		if err != nil {
			return time.Time{}, err
		}
		if b.Backlog == 0 && b.Committed >= want {
			return time.Now(), nil
		}
		if expired {
			return time.Time{}, fmt.Errorf("hub stored %d of %d fixes and %d wait in the agent's spool after %s",
				b.Committed, want, b.Backlog, timeout)
		}
		if err := sleepCtx(ctx, poll); err != nil {
			return time.Time{}, err
		}
	}
}
