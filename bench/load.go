package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/xpress-ops/tower/protocol"
)

// Defaults of the load generator.
const (
	// DefaultPublishTimeout is how long a vehicle waits for a PUBACK
	// before it counts the message as failed.
	DefaultPublishTimeout = 30 * time.Second
	// DefaultMaxInflight is how many messages one vehicle may have
	// waiting for their PUBACK. When it is reached the vehicle falls behind
	// its schedule, which shows as latency.
	DefaultMaxInflight = 1000
	// connectParallel bounds the MQTT connections opened at once.
	connectParallel = 64
	// startDelay is how far ahead of now a load's first message is
	// scheduled, so that every sender goroutine is ready in time.
	startDelay = 100 * time.Millisecond
)

// phtZone is the offset of the timestamps vehicles send, Philippine time.
var phtZone = time.FixedZone("PHT", 8*60*60)

// deviceTimeLayout is RFC 3339 with milliseconds and a numeric offset,
// as in the device contract's example.
const deviceTimeLayout = "2006-01-02T15:04:05.000-07:00"

// nullStore is a paho message store that keeps nothing. Vehicles do not
// reconnect, so nothing would ever be resent from a store, and paho's
// memory store would only add a map update per message to the generator.
type nullStore struct{}

func (nullStore) Open()                             {}
func (nullStore) Put(string, packets.ControlPacket) {}
func (nullStore) Get(string) packets.ControlPacket  { return nil }
func (nullStore) All() []string                     { return nil }
func (nullStore) Del(string)                        {}
func (nullStore) Close()                            {}
func (nullStore) Reset()                            {}

// vehicle is one simulated vehicle: a paho MQTT 3.1.1 client whose user
// name is the vehicle id and whose client id is the vehicle id with the
// fleet's run id, unique per run. Two runs at once against one broker
// (the shared Mosquitto of edge) would otherwise take over each other's
// sessions. The agent accepts any client id that no other vehicle holds.
type vehicle struct {
	id       string
	clientID string
	fixTopic string
	sosTopic string
	client   mqtt.Client
	lat, lon float64
}

// fleet is a set of connected vehicles.
type fleet struct {
	broker   string
	vehicles []*vehicle
	// lost counts connections that dropped during the run.
	lost atomic.Int64
}

// connectFleet connects n vehicles, named prefix followed by a six-digit
// number, to the MQTT broker at brokerURL. It fails when any vehicle
// cannot connect, after disconnecting the others.
func connectFleet(ctx context.Context, brokerURL, prefix string, n int, log *slog.Logger) (*fleet, error) {
	f := &fleet{broker: brokerURL, vehicles: make([]*vehicle, n)}
	run := runID()
	for i := range f.vehicles {
		id := fmt.Sprintf("%s%06d", prefix, i+1)
		if err := protocol.ValidateVehicleID(id); err != nil {
			return nil, fmt.Errorf("vehicle prefix %q: %w", prefix, err)
		}
		f.vehicles[i] = &vehicle{
			id:       id,
			clientID: id + "-" + run,
			fixTopic: protocol.VehicleTopicFor(id, protocol.TopicFix),
			sosTopic: protocol.VehicleTopicFor(id, protocol.TopicSOS),
			// Spread the fleet over about 10 km around Manila.
			lat: 14.55 + float64(i%97)*0.001,
			lon: 120.98 + float64(i%89)*0.001,
		}
	}

	start := time.Now()
	sem := make(chan struct{}, connectParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, v := range f.vehicles {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f.connect(ctx, v); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		f.close()
		return nil, fmt.Errorf("connect %d vehicles to %s: %d failed, first: %w", n, brokerURL, len(errs), errs[0])
	}
	log.Info("vehicles connected", "vehicles", n, "broker", brokerURL, "took", time.Since(start).Round(time.Millisecond))
	return f, nil
}

func (f *fleet) connect(ctx context.Context, v *vehicle) error {
	opts := mqtt.NewClientOptions().
		AddBroker(f.broker).
		SetClientID(v.clientID).
		SetUsername(v.id).
		SetPassword("bench").
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetStore(nullStore{}).
		SetKeepAlive(60 * time.Second).
		SetConnectTimeout(30 * time.Second).
		SetWriteTimeout(DefaultPublishTimeout).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { f.lost.Add(1) })
	v.client = mqtt.NewClient(opts)
	tok := v.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// The attempt ends within its connect timeout; wait so that no
		// connection outlives the fleet.
		<-tok.Done()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("vehicle %s: %w", v.id, err)
	}
	return nil
}

// close disconnects every connected vehicle.
func (f *fleet) close() {
	var wg sync.WaitGroup
	for _, v := range f.vehicles {
		if v != nil && v.client != nil && v.client.IsConnectionOpen() {
			wg.Go(func() { v.client.Disconnect(100) })
		}
	}
	wg.Wait()
}

// fixLoad is an open-loop schedule of fix messages over a fleet.
type fixLoad struct {
	// Rate is messages per second over the whole fleet. Message i is
	// scheduled at i/Rate seconds after the start and sent by vehicle i
	// modulo the fleet's size.
	Rate float64
	// Messages is the number of messages to send. Zero means Rate × Duration.
	Messages int64
	// Duration is the length of the schedule when Messages is zero.
	Duration time.Duration
	// Batch is fixes per message: 1 sends one JSON object, more send an array.
	Batch int
	// MaxInflight and Timeout default to DefaultMaxInflight and DefaultPublishTimeout.
	MaxInflight int
	Timeout     time.Duration
}

// LoadResult is the outcome of an open-loop load. Counts are messages
// unless named fixes.
type LoadResult struct {
	OfferedMsgsPerSec   float64 `json:"offered_msgs_per_s"`
	OfferedFixesPerSec  float64 `json:"offered_fixes_per_s"`
	FixesPerMessage     int     `json:"fixes_per_message"`
	Vehicles            int     `json:"vehicles"`
	Scheduled           int64   `json:"messages_scheduled"`
	Sent                int64   `json:"messages_sent"`
	Acked               int64   `json:"messages_acked"`
	Failed              int64   `json:"messages_failed"`
	FixesAcked          int64   `json:"fixes_acked"`
	ScheduleSeconds     float64 `json:"schedule_seconds"`
	ElapsedSeconds      float64 `json:"elapsed_seconds"`
	AchievedMsgsPerSec  float64 `json:"achieved_msgs_per_s"`
	AchievedFixesPerSec float64 `json:"achieved_fixes_per_s"`
	// MaxSendLagMs is how far behind its schedule the generator sent a
	// message at worst: the generator's own share of the latency.
	MaxSendLagMs float64 `json:"max_send_lag_ms"`
	// ConnectionsLost counts vehicle connections that dropped.
	ConnectionsLost int64 `json:"connections_lost"`
	// Latency runs from each message's scheduled send time to its PUBACK.
	Latency Latency `json:"puback_latency"`
	// FirstError is the first publish failure, empty without failures.
	FirstError string `json:"first_error,omitempty"`
}

// Print writes the load's figures.
func (r LoadResult) Print(w io.Writer, indent string) {
	fmt.Fprintf(w, "%soffered %s msg/s (%s fixes/s, %d %s/message) from %d %s for %.1fs\n", indent,
		fmtRate(r.OfferedMsgsPerSec), fmtRate(r.OfferedFixesPerSec), r.FixesPerMessage, plural(r.FixesPerMessage, "fix", "fixes"),
		r.Vehicles, plural(r.Vehicles, "vehicle", "vehicles"), r.ScheduleSeconds)
	fmt.Fprintf(w, "%smessages: %d scheduled, %d sent, %d acked, %d failed; %d connections lost\n", indent,
		r.Scheduled, r.Sent, r.Acked, r.Failed, r.ConnectionsLost)
	fmt.Fprintf(w, "%sachieved %s msg/s (%s fixes/s) over %.2fs; generator fell up to %s behind schedule\n", indent,
		fmtRate(r.AchievedMsgsPerSec), fmtRate(r.AchievedFixesPerSec), r.ElapsedSeconds, fmtMs(r.MaxSendLagMs))
	fmt.Fprintf(w, "%sPUBACK latency from scheduled send: %s\n", indent, r.Latency)
	if r.FirstError != "" {
		fmt.Fprintf(w, "%sfirst failure: %s\n", indent, r.FirstError)
	}
}

// plural returns one when n is 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// fmtRate formats a rate with thousands separators.
func fmtRate(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "-"
	}
	s := strconv.FormatInt(int64(math.Round(r)), 10)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// pendingPub is a published message waiting for its PUBACK.
type pendingPub struct {
	token     mqtt.Token
	scheduled time.Time
	published time.Time
}

// loadRun is the shared state of one fixLoad run.
type loadRun struct {
	cfg       fixLoad
	start     time.Time
	total     int64
	latency   *Recorder
	sent      atomic.Int64
	acked     atomic.Int64
	failed    atomic.Int64
	lastAck   atomic.Int64 // UnixNano of the latest PUBACK
	maxLag    atomic.Int64 // nanoseconds
	errOnce   sync.Once
	firstErr  string
	lostStart int64
}

// scheduledAt returns the send time of message i.
func (r *loadRun) scheduledAt(i int64) time.Time {
	return r.start.Add(time.Duration(float64(i) * float64(time.Second) / r.cfg.Rate))
}

// runFixes sends the schedule cfg over the fleet and waits for every
// PUBACK or its timeout. Cancelling ctx stops sending early.
func (f *fleet) runFixes(ctx context.Context, cfg fixLoad) LoadResult {
	if cfg.Batch < 1 {
		cfg.Batch = 1
	}
	if cfg.MaxInflight < 1 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultPublishTimeout
	}
	total := cfg.Messages
	if total == 0 {
		total = int64(cfg.Rate * cfg.Duration.Seconds())
	}
	r := &loadRun{cfg: cfg, start: time.Now().Add(startDelay), total: total, latency: NewRecorder(), lostStart: f.lost.Load()}

	var wg sync.WaitGroup
	for c, v := range f.vehicles {
		if int64(c) >= total {
			break
		}
		wg.Go(func() { r.sendAll(ctx, v, int64(c), int64(len(f.vehicles))) })
	}
	wg.Wait()

	res := LoadResult{
		OfferedMsgsPerSec:  cfg.Rate,
		OfferedFixesPerSec: cfg.Rate * float64(cfg.Batch),
		FixesPerMessage:    cfg.Batch,
		Vehicles:           len(f.vehicles),
		Scheduled:          total,
		Sent:               r.sent.Load(),
		Acked:              r.acked.Load(),
		Failed:             r.failed.Load(),
		ScheduleSeconds:    float64(total) / cfg.Rate,
		MaxSendLagMs:       float64(r.maxLag.Load()) / 1e6,
		ConnectionsLost:    f.lost.Load() - r.lostStart,
		Latency:            r.latency.Summary(),
		FirstError:         r.firstErr,
	}
	res.FixesAcked = res.Acked * int64(cfg.Batch)
	end := time.Now()
	if last := r.lastAck.Load(); last != 0 {
		end = time.Unix(0, last)
	}
	res.ElapsedSeconds = max(end.Sub(r.start).Seconds(), 1e-9)
	res.AchievedMsgsPerSec = float64(res.Acked) / res.ElapsedSeconds
	res.AchievedFixesPerSec = res.AchievedMsgsPerSec * float64(cfg.Batch)
	return res
}

// sendAll sends vehicle v's share of the schedule: messages first,
// first+step, first+2·step and so on.
func (r *loadRun) sendAll(ctx context.Context, v *vehicle, first, step int64) {
	pending := make(chan pendingPub, r.cfg.MaxInflight)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		r.awaitAcks(pending)
	}()
	defer func() {
		close(pending)
		<-ackerDone
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var buf []byte
	for i := first; i < r.total; i += step {
		scheduled := r.scheduledAt(i)
		if wait := time.Until(scheduled); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		lag := int64(time.Since(scheduled))
		for cur := r.maxLag.Load(); lag > cur && !r.maxLag.CompareAndSwap(cur, lag); cur = r.maxLag.Load() {
		}

		buf = appendFixes(buf[:0], scheduled, v.lat, v.lon, i, r.cfg.Batch)
		payload := make([]byte, len(buf))
		copy(payload, buf)
		tok := v.client.Publish(v.fixTopic, 1, false, payload)
		r.sent.Add(1)
		pending <- pendingPub{token: tok, scheduled: scheduled, published: time.Now()}
	}
}

// awaitAcks waits for each message's PUBACK in publishing order, for at
// most the timeout after it was published, and records the outcome.
// A broker acknowledges one connection's messages in order, so waiting in
// order delays no measurement.
func (r *loadRun) awaitAcks(pending <-chan pendingPub) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for m := range pending {
		timer.Reset(time.Until(m.published.Add(r.cfg.Timeout)))
		select {
		case <-m.token.Done():
		case <-timer.C:
			r.fail(fmt.Errorf("no PUBACK within %s", r.cfg.Timeout))
			continue
		}
		if err := m.token.Error(); err != nil {
			r.fail(err)
			continue
		}
		now := time.Now()
		r.latency.Record(now.Sub(m.scheduled))
		r.acked.Add(1)
		ns := now.UnixNano()
		for cur := r.lastAck.Load(); ns > cur && !r.lastAck.CompareAndSwap(cur, ns); cur = r.lastAck.Load() {
		}
	}
}

func (r *loadRun) fail(err error) {
	r.failed.Add(1)
	r.errOnce.Do(func() { r.firstErr = err.Error() })
}

// appendFixes appends a fix message in the device format: one object when
// batch is 1, else an array of batch fixes one second apart that ends at
// ts, like a device that buffered while offline. seq varies the position.
func appendFixes(b []byte, ts time.Time, lat, lon float64, seq int64, batch int) []byte {
	if batch == 1 {
		return appendFix(b, ts, lat, lon, seq)
	}
	b = append(b, '[')
	for j := range batch {
		if j > 0 {
			b = append(b, ',')
		}
		at := ts.Add(-time.Duration(batch-1-j) * time.Second)
		b = appendFix(b, at, lat, lon, seq*int64(batch)+int64(j))
	}
	return append(b, ']')
}

// appendFix appends one fix object. The position moves with seq, about a
// metre a step, so consecutive fixes differ.
func appendFix(b []byte, ts time.Time, lat, lon float64, seq int64) []byte {
	step := float64(seq%10_000) * 0.00001
	b = append(b, `{"ts":"`...)
	b = ts.In(phtZone).AppendFormat(b, deviceTimeLayout)
	b = append(b, `","lat":`...)
	b = strconv.AppendFloat(b, lat+step, 'f', 6, 64)
	b = append(b, `,"lon":`...)
	b = strconv.AppendFloat(b, lon+step, 'f', 6, 64)
	b = append(b, `,"speed_kmh":32.5,"heading_deg":45,"accuracy_m":5,"battery_pct":80}`...)
	return b
}

// sosPayload returns an SOS message in the device format.
func sosPayload(id string, ts time.Time, lat, lon float64) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","ts":"`...)
	b = ts.In(phtZone).AppendFormat(b, deviceTimeLayout)
	b = append(b, `","lat":`...)
	b = strconv.AppendFloat(b, lat, 'f', 6, 64)
	b = append(b, `,"lon":`...)
	b = strconv.AppendFloat(b, lon, 'f', 6, 64)
	b = append(b, `,"kind":"panic"}`...)
	return b
}

// sosSend is one planned SOS: its vehicle, id and scheduled send time.
type sosSend struct {
	vehicle   *vehicle
	id        string
	scheduled time.Time
}

// sosOutcome is the outcome of one SOS publish.
type sosOutcome struct {
	id        string
	scheduled time.Time
	published time.Time
	pubackAt  time.Time
	err       error
}

// sendSOS publishes each planned SOS at its scheduled time, open-loop: a
// late PUBACK delays no later SOS. It returns the outcomes in plan order
// once every PUBACK has arrived or timed out. Cancelling ctx skips the
// SOS not yet sent, which then have the error context.Canceled.
func sendSOS(ctx context.Context, plan []sosSend, timeout time.Duration) []sosOutcome {
	out := make([]sosOutcome, len(plan))
	// A few sender goroutines keep the schedule when publishing blocks
	// briefly; each waits for its own PUBACKs in separate goroutines.
	const senders = 16
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			for i := s; i < len(plan); i += senders {
				p := plan[i]
				o := &out[i]
				o.id, o.scheduled = p.id, p.scheduled
				if wait := time.Until(p.scheduled); wait > 0 {
					timer.Reset(wait)
					select {
					case <-ctx.Done():
					case <-timer.C:
					}
				}
				if err := ctx.Err(); err != nil {
					o.err = err
					continue
				}
				tok := p.vehicle.client.Publish(p.vehicle.sosTopic, 1, false, sosPayload(p.id, p.scheduled, p.vehicle.lat, p.vehicle.lon))
				o.published = time.Now()
				wg.Go(func() {
					if !tok.WaitTimeout(timeout) {
						o.err = fmt.Errorf("SOS %s: no PUBACK within %s", p.id, timeout)
						return
					}
					if err := tok.Error(); err != nil {
						o.err = fmt.Errorf("SOS %s: %w", p.id, err)
						return
					}
					o.pubackAt = time.Now()
				})
			}
		})
	}
	wg.Wait()
	return out
}
