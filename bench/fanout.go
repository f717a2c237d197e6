package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// FanoutConfig configures the fanout scenario: Clients operator
// WebSockets on one hub, then one incident.
type FanoutConfig struct {
	Clients int
	// SourceAddrs is the number of loopback source addresses
	// (127.0.0.1, 127.0.0.2, ...) the clients are spread over. Zero
	// means one per 20,000 clients, below the 28,232 ephemeral ports
	// Linux gives each address by default.
	SourceAddrs int
	// DialParallel bounds the WebSocket handshakes in flight.
	DialParallel int
	// Settle is the pause between the last connection and the memory reading.
	Settle time.Duration
	// Timeout bounds the wait for every client to receive the incident.
	Timeout time.Duration
}

// DefaultFanoutConfig returns the fanout scenario's defaults.
func DefaultFanoutConfig() FanoutConfig {
	return FanoutConfig{Clients: 50_000, DialParallel: 100, Settle: 5 * time.Second, Timeout: 60 * time.Second}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *FanoutConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Clients, "clients", c.Clients, "operator WebSockets")
	fs.IntVar(&c.SourceAddrs, "source-addrs", c.SourceAddrs, "loopback source addresses 127.0.0.1, 127.0.0.2, ... to spread the clients over (0: one per 20,000 clients)")
	fs.IntVar(&c.DialParallel, "dial-parallel", c.DialParallel, "WebSocket handshakes in flight at once")
	fs.DurationVar(&c.Settle, "settle", c.Settle, "pause after the last connection before reading the hub's memory")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "how long to wait for every client to receive the incident")
}

func (c FanoutConfig) validate() error {
	var errs []error
	if c.Clients < 1 {
		errs = append(errs, fmt.Errorf("invalid --clients %d: use at least 1", c.Clients))
	}
	if c.SourceAddrs < 0 || c.SourceAddrs > 254 {
		errs = append(errs, fmt.Errorf("invalid --source-addrs %d: use 0 to 254", c.SourceAddrs))
	}
	if c.DialParallel < 1 {
		errs = append(errs, fmt.Errorf("invalid --dial-parallel %d: use at least 1", c.DialParallel))
	}
	if c.Settle < 0 || c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid --settle %s or --timeout %s: use 0 or more and a positive duration", c.Settle, c.Timeout))
	}
	return errors.Join(errs...)
}

// HubMemory is a reading of the hub subprocess's memory from its /metrics.
type HubMemory struct {
	RSSBytes        float64 `json:"rss_bytes"`
	HeapInuseBytes  float64 `json:"heap_inuse_bytes"`
	StackInuseBytes float64 `json:"stack_inuse_bytes"`
	Goroutines      float64 `json:"goroutines"`
}

// FanoutResult is the outcome of the fanout scenario.
type FanoutResult struct {
	Config      FanoutConfig `json:"config"`
	SourceAddrs int          `json:"source_addrs"`
	// Connected is the clients connected; HubClients the hub's own count.
	Connected      int     `json:"connected"`
	HubClients     float64 `json:"hub_clients"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// Before and After are the hub's memory before the first client and
	// after the last, Settle later.
	Before HubMemory `json:"before"`
	After  HubMemory `json:"after"`
	// RSSPerClient and HeapStackPerClient are the growth divided by the clients.
	RSSPerClient       float64 `json:"rss_bytes_per_client"`
	HeapStackPerClient float64 `json:"heap_stack_bytes_per_client"`
	// Delivery runs from the SOS's scheduled send time to the incident.opened
	// frame, one sample per client.
	Delivery Latency `json:"delivery"`
	Received int     `json:"received"`
	Missing  int     `json:"missing"`
	// Closed counts clients whose stream ended before the incident.
	Closed     int    `json:"closed"`
	FirstError string `json:"first_error,omitempty"`
}

// Print writes the figures.
func (r *FanoutResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%d operator WebSockets from %d source %s connected in %.2fs; the hub counts %.0f\n",
		r.Connected, r.SourceAddrs, plural(r.SourceAddrs, "address", "addresses"), r.ConnectSeconds, r.HubClients)
	fmt.Fprintf(w, "hub memory: RSS %.1f → %.1f MB, heap+stack %.1f → %.1f MB, goroutines %.0f → %.0f\n",
		r.Before.RSSBytes/1e6, r.After.RSSBytes/1e6,
		(r.Before.HeapInuseBytes+r.Before.StackInuseBytes)/1e6, (r.After.HeapInuseBytes+r.After.StackInuseBytes)/1e6,
		r.Before.Goroutines, r.After.Goroutines)
	fmt.Fprintf(w, "per connection: RSS %.1f KB, heap+stack %.1f KB\n", r.RSSPerClient/1000, r.HeapStackPerClient/1000)
	fmt.Fprintf(w, "incident delivery over clients: %s; %d received, %d missing, %d streams closed\n",
		r.Delivery, r.Received, r.Missing, r.Closed)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first failure: %s\n", r.FirstError)
	}
}

// Targets compares the memory and the delivery time with the targets.
func (r *FanoutResult) Targets() []Target {
	note := ""
	small := r.Config.Clients < 50_000
	if small {
		note = fmt.Sprintf("%d clients, fewer than the target's 50,000; the figures are still given", r.Config.Clients)
	}
	complete := r.Missing == 0 && r.Connected == r.Config.Clients
	return []Target{
		{Name: "fanout memory", Goal: "≤ 30 KB (30,000 bytes) of hub RSS per WebSocket",
			Measured: fmt.Sprintf("%.1f KB RSS, %.1f KB heap+stack", r.RSSPerClient/1000, r.HeapStackPerClient/1000),
			Met:      !small && complete && r.RSSPerClient <= 30_000, NotAtSize: small, Note: note},
		{Name: "fanout delivery", Goal: "incident reaches every WebSocket with p99 ≤ 100 ms",
			Measured: fmt.Sprintf("p50 %s, p99 %s, max %s", fmtMs(r.Delivery.P50Ms), fmtMs(r.Delivery.P99Ms), fmtMs(r.Delivery.MaxMs)),
			Met:      !small && complete && r.Delivery.P99Ms <= 100, NotAtSize: small, Note: note},
	}
}

// RunFanout runs the fanout scenario with the hub as a subprocess, so its
// memory can be read apart from the clients'.
func RunFanout(ctx context.Context, cfg FanoutConfig, opts Options) (*FanoutResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()
	// The hub inherits the limit, and holds one descriptor per client too.
	if err := raiseFileLimit(uint64(cfg.Clients + 1024)); err != nil {
		return nil, err
	}
	res := &FanoutResult{Config: cfg, SourceAddrs: cfg.SourceAddrs}
	if res.SourceAddrs == 0 {
		res.SourceAddrs = (cfg.Clients + 19_999) / 20_000
	}

	dbURL, err := env.newDatabase(ctx)
	if err != nil {
		return nil, err
	}
	// The hub's default cap on HTTP connections is below large runs. The
	// margin covers the metrics scrapes and the admin requests.
	hp, err := env.startHubProcess(ctx, opts.Exe, dbURL, cfg.Clients+100)
	if err != nil {
		return nil, err
	}
	hubMetrics := "http://" + hp.httpAddr + "/metrics"
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return nil, err
	}
	if res.Before, err = readHubMemory(ctx, hubMetrics); err != nil {
		return nil, err
	}

	ops, err := dialOperators(ctx, env, hp.httpAddr, cfg, res)
	defer closeOperators(ops)
	if err != nil {
		return res, err
	}
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	if res.After, err = readHubMemory(ctx, hubMetrics); err != nil {
		return res, err
	}
	n := float64(res.Connected)
	res.RSSPerClient = (res.After.RSSBytes - res.Before.RSSBytes) / n
	res.HeapStackPerClient = (res.After.HeapInuseBytes + res.After.StackInuseBytes - res.Before.HeapInuseBytes - res.Before.StackInuseBytes) / n
	m, err := scrape(ctx, hubMetrics)
	if err != nil {
		return res, err
	}
	res.HubClients, _ = m.value("xpress_api_websocket_clients")

	// One incident: an agent in this process, one vehicle, one SOS.
	a, err := env.startAgent(ctx, "bench-fanout", hp.mqttAddr, nil)
	if err != nil {
		return res, err
	}
	if err := waitUplink(ctx, a, 30*time.Second); err != nil {
		return res, err
	}
	f, err := connectFleet(ctx, "tcp://"+a.MQTTAddr().String(), "bench-fanout-", 1, env.log)
	if err != nil {
		return res, err
	}
	defer f.close()
	plan := sosPlan(f.vehicles, 1, time.Now().Add(startDelay), 0, runID())
	env.log.Info("fanout sending the SOS", "clients", res.Connected)
	outcome := sendSOS(ctx, plan, DefaultPublishTimeout)[0]
	if outcome.err != nil {
		return res, fmt.Errorf("send the SOS: %w", outcome.err)
	}
	res.collectDelivery(ctx, ops, plan[0], cfg.Timeout)
	return res, nil
}

// dialOperators connects cfg.Clients operators, spread over the source
// addresses, with at most cfg.DialParallel handshakes at once.
func dialOperators(ctx context.Context, env *runEnv, httpAddr string, cfg FanoutConfig, res *FanoutResult) ([]*operator, error) {
	clients := make([]*http.Client, res.SourceAddrs)
	for i := range clients {
		clients[i] = sourceClient(net.IPv4(127, 0, 0, byte(1+i)))
	}

	ops := make([]*operator, cfg.Clients)
	sem := make(chan struct{}, cfg.DialParallel)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var errOnce sync.Once
	var firstErr error
	var done atomic.Int64

	start := time.Now()
	for i := range ops {
		if ctx.Err() != nil || failed.Load() > 0 {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			op, err := dialOperator(ctx, httpAddr, env.adminToken, clients[i%len(clients)])
			if err != nil {
				failed.Add(1)
				errOnce.Do(func() { firstErr = err })
				return
			}
			ops[i] = op
			if n := done.Add(1); n%10_000 == 0 {
				env.log.Info("operators connected", "connected", n, "of", cfg.Clients)
			}
		})
	}
	wg.Wait()

	res.ConnectSeconds = time.Since(start).Seconds()
	res.Connected = int(done.Load())
	if firstErr != nil {
		return ops, fmt.Errorf("%d of %d operator WebSockets connected; first failure: %w", res.Connected, cfg.Clients, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return ops, err
	}
	env.log.Info("operators connected", "connected", res.Connected, "seconds", res.ConnectSeconds)
	return ops, nil
}

// collectDelivery waits until every operator has the incident of the SOS
// or the timeout passes, and records the delivery time of each.
func (r *FanoutResult) collectDelivery(ctx context.Context, ops []*operator, sos sosSend, timeout time.Duration) {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ids := []string{sos.id}
	rec := NewRecorder()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, op := range ops {
		if op == nil {
			continue
		}
		wg.Go(func() {
			op.waitOpened(waitCtx, ids)
			at, ok := op.openedAt(sos.id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case ok:
				r.Received++
				rec.Record(at.Sub(sos.scheduled))
			case op.streamErr() != nil:
				r.Closed++
				r.Missing++
				if r.FirstError == "" {
					r.FirstError = "operator stream ended: " + op.streamErr().Error()
				}
			default:
				r.Missing++
			}
		})
	}
	wg.Wait()
	r.Delivery = rec.Summary()
}

// closeOperators closes every operator's WebSocket.
func closeOperators(ops []*operator) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, op := range ops {
		if op == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			op.close()
		})
	}
	wg.Wait()
}

// readHubMemory reads the hub's memory gauges from its /metrics.
func readHubMemory(ctx context.Context, url string) (HubMemory, error) {
	m, err := scrape(ctx, url)
	if err != nil {
		return HubMemory{}, err
	}
	var hm HubMemory
	var ok [4]bool
	hm.RSSBytes, ok[0] = m.value("process_resident_memory_bytes")
	hm.HeapInuseBytes, ok[1] = m.value("go_memstats_heap_inuse_bytes")
	hm.StackInuseBytes, ok[2] = m.value("go_memstats_stack_inuse_bytes")
	hm.Goroutines, ok[3] = m.value("go_goroutines")
	for _, present := range ok {
		if !present {
			return hm, fmt.Errorf("hub /metrics at %s lacks the process and Go memory metrics", url)
		}
	}
	return hm, nil
}
