package sim

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/xpress-ops/tower/protocol"
)

// deviceZone is the offset of the timestamps the simulated devices send:
// Philippine time, UTC+8, which has no daylight saving time.
var deviceZone = time.FixedZone("PHT", 8*60*60)

// deviceTimeLayout is RFC 3339 with milliseconds and a numeric offset, as
// in the device contract's example.
const deviceTimeLayout = "2006-01-02T15:04:05.000-07:00"

// disconnectQuiesce is how long Disconnect waits for paho's outgoing work, in milliseconds.
const disconnectQuiesce = 250

// Status payloads. The offline one is also the will message.
var (
	statusOnline  = []byte(`{"online":true}`)
	statusOffline = []byte(`{"online":false}`)
)

// sosKinds are the kinds other than panic that a simulated SOS may carry. Panic is drawn 70 % of the time.
var sosKinds = []protocol.SOSKind{
	protocol.SOSCrash, protocol.SOSMedical, protocol.SOSFire, protocol.SOSHarassment, protocol.SOSOther,
}

// fixPayload is one fix in the device format.
type fixPayload struct {
	TS         string   `json:"ts"`
	Lat        float64  `json:"lat"`
	Lon        float64  `json:"lon"`
	SpeedKmh   *float64 `json:"speed_kmh,omitempty"`
	HeadingDeg *float64 `json:"heading_deg,omitempty"`
	AccuracyM  float64  `json:"accuracy_m"`
	BatteryPct float64  `json:"battery_pct"`
}

// sosPayload is an SOS in the device format.
type sosPayload struct {
	ID   string  `json:"id"`
	TS   string  `json:"ts"`
	Lat  float64 `json:"lat"`
	Lon  float64 `json:"lon"`
	Kind string  `json:"kind"`
}

// discardStore is a paho message store that keeps nothing, so a vehicle
// never resends a message after a reconnection. A message without a PUBACK
// when the connection drops then times out and counts as failed. Paho's
// own stores resend instead, and in paho v1.5.1 that resend completes the
// original token without error before any PUBACK arrives, and it races
// with a concurrent Publish on the same packet (the race detector reports
// it). Either would make the counts lie.
type discardStore struct{}

func (discardStore) Open()                             {}
func (discardStore) Put(string, packets.ControlPacket) {}
func (discardStore) Get(string) packets.ControlPacket  { return nil }
func (discardStore) All() []string                     { return nil }
func (discardStore) Del(string)                        {}
func (discardStore) Close()                            {}
func (discardStore) Reset()                            {}

var _ mqtt.Store = discardStore{}

// pendingMsg is a published message waiting for its PUBACK.
type pendingMsg struct {
	token     mqtt.Token
	kind      string
	fixes     int
	scheduled time.Time
	published time.Time
}

// cursor walks a track, from a start point, once or in loops.
type cursor struct {
	points  []Point
	idx     int
	lapBase time.Duration
	loop    bool
	// loopGap is the time from the last point back to the first on a loop:
	// the track's mean interval.
	loopGap time.Duration
}

func newCursor(track *Track, start int, loop bool) cursor {
	gap := time.Second
	if n := len(track.Points); n > 1 {
		gap = max(track.Duration()/time.Duration(n-1), time.Millisecond)
	}
	return cursor{points: track.Points, idx: start, loop: loop, loopGap: gap}
}

func (c *cursor) point() Point { return c.points[c.idx] }

// offset returns the current point's time since the track's start,
// counting completed loops.
func (c *cursor) offset() time.Duration { return c.lapBase + c.points[c.idx].Offset }

// advance moves to the next point. It returns false at the end of a track
// that does not loop.
func (c *cursor) advance() bool {
	c.idx++
	if c.idx < len(c.points) {
		return true
	}
	if !c.loop {
		c.idx = len(c.points) - 1
		return false
	}
	c.lapBase += c.points[len(c.points)-1].Offset + c.loopGap
	c.idx = 0
	return true
}

// vehicle is one simulated device: its MQTT client, its replay schedule
// and its PUBACK tracking. Its run goroutine owns everything except the
// connection state, which paho's callbacks also touch.
type vehicle struct {
	sim   *Sim
	id    string
	track *Track
	start int
	loop  bool
	rng   *rand.Rand

	client    mqtt.Client
	onConnect chan struct{} // signals from paho's OnConnect handler, capacity 1
	pending   chan pendingMsg
	ackerDone chan struct{}

	everConnected atomic.Bool
	connMu        sync.Mutex
	connected     bool // guarded by connMu, mirrored in the connected-vehicles gauge
	closed        bool // guarded by connMu, set once the vehicle shuts down

	// Replay state, owned by run.
	startMono time.Time
	startWall time.Time
	pos       Point
	battery   float64
	lastSOSMs int64
	batch     []fixPayload
}

func newVehicle(s *Sim, id string, track *Track, start int, loop bool, rng *rand.Rand) *vehicle {
	return &vehicle{
		sim: s, id: id, track: track, start: start, loop: loop, rng: rng,
		onConnect: make(chan struct{}, 1),
		pending:   make(chan pendingMsg, s.cfg.MaxInflight),
		ackerDone: make(chan struct{}),
		battery:   50 + 50*rng.Float64(),
		pos:       track.Points[start],
	}
}

// run connects, replays until ctx is done or the track ends, and shuts down.
func (v *vehicle) run(ctx context.Context) {
	v.client = mqtt.NewClient(v.clientOptions())
	if !v.connect(ctx) {
		return
	}

	go v.ackLoop()
	v.replay(ctx)
	v.shutdown()
}

func (v *vehicle) clientOptions() *mqtt.ClientOptions {
	cfg := &v.sim.cfg
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(v.id).
		SetUsername(v.id).
		SetPassword(cfg.passwordOf(v.id)).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetStore(discardStore{}).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.PublishTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetBinaryWill(protocol.VehicleTopicFor(v.id, protocol.TopicStatus), statusOffline, 1, true).
		SetOnConnectHandler(func(mqtt.Client) {
			select {
			case v.onConnect <- struct{}{}:
			default:
			}
		}).
		SetConnectionNotificationHandler(v.onConnectionEvent)
	return opts
}

// onConnectionEvent counts and logs paho's connection events. Paho calls
// it from its own goroutines.
func (v *vehicle) onConnectionEvent(_ mqtt.Client, n mqtt.ConnectionNotification) {
	s := v.sim
	switch ev := n.(type) {
	case mqtt.ConnectionNotificationConnected:
		v.setConnected(true)
	case mqtt.ConnectionNotificationFailed:
		s.connectFailures.Add(1)
		s.metrics.connectFailures.Inc()
		s.limited.warn("connect_failed", "vehicle could not connect", "vehicle", v.id, "broker", s.cfg.Broker, "error", ev.Reason)
	case mqtt.ConnectionNotificationLost:
		s.connectionsLost.Add(1)
		s.metrics.connectionsLost.Inc()
		// Paho sends this event from a new goroutine, which may run after
		// a fast reconnection.
		if !v.client.IsConnectionOpen() {
			v.setConnected(false)
		}
		s.limited.warn("connection_lost", "vehicle lost its connection, reconnecting", "vehicle", v.id, "error", ev.Reason)
	}
}

// connect makes the first connection, retrying with jittered exponential
// backoff until it succeeds or ctx is done. Paho's auto-reconnect takes
// over after that.
func (v *vehicle) connect(ctx context.Context) bool {
	cfg := &v.sim.cfg
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		tok := v.client.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			// The attempt is bounded by ConnectTimeout. Wait for it so no
			// connection is left behind.
			<-tok.Done()
			if tok.Error() == nil {
				v.client.Disconnect(disconnectQuiesce)
			}
			v.markClosed()
			return false
		}
		if tok.Error() == nil {
			v.setConnected(true)
			return true
		}

		// Spread retries over half to all of the backoff, so a fleet
		// rejected together does not come back together.
		wait := backoff/2 + time.Duration(v.rng.Int64N(int64(backoff/2)+1))
		v.sim.log.Debug("connect attempt failed", "vehicle", v.id, "attempt", attempt, "retry_in", wait, "error", tok.Error())
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			v.markClosed()
			return false
		case <-timer.C:
		}
		backoff = min(backoff*2, cfg.MaxReconnectInterval)
	}
}

// replay publishes fixes on the track's schedule and SOS alerts on their
// own schedule, and the online status after every (re)connection. It
// returns when ctx is done or a track that does not loop ends.
func (v *vehicle) replay(ctx context.Context) {
	cfg := &v.sim.cfg

	// Report online before the first fix. The signal comes from the
	// successful connect that preceded this call.
	select {
	case <-v.onConnect:
		v.publishStatus(statusOnline)
	case <-ctx.Done():
		return
	}

	v.startMono = time.Now()
	v.startWall = cfg.Now()

	cur := newCursor(v.track, v.start, v.loop)
	startOffset := cur.offset()
	step := cur.loopGap
	if cfg.Rate > 0 {
		step = time.Duration(float64(time.Second) / cfg.Rate)
	} else {
		step = time.Duration(float64(step) / cfg.Speedup)
	}
	// A random phase keeps the fleet from publishing in lockstep.
	phase := time.Duration(v.rng.Float64() * float64(min(step, time.Second)))

	sent := 0
	var lastFix time.Time
	schedule := func() time.Time {
		if cfg.Rate > 0 {
			return v.startMono.Add(phase + time.Duration(float64(sent)*float64(time.Second)/cfg.Rate))
		}
		return v.startMono.Add(phase + time.Duration(float64(cur.offset()-startOffset)/cfg.Speedup))
	}
	nextFix := schedule()
	fixTimer := time.NewTimer(time.Until(nextFix))
	defer fixTimer.Stop()

	var sosTimer *time.Timer
	var sosC <-chan time.Time
	var nextSOS time.Time
	if cfg.SOSEvery > 0 {
		nextSOS = v.startMono.Add(v.sosGap())
		sosTimer = time.NewTimer(time.Until(nextSOS))
		defer sosTimer.Stop()
		sosC = sosTimer.C
	}

	for {
		select {
		case <-ctx.Done():
			v.flushBatch(lastFix)
			return
		case <-v.onConnect:
			v.publishStatus(statusOnline)
		case <-sosC:
			v.sendSOS(nextSOS)
			nextSOS = nextSOS.Add(v.sosGap())
			sosTimer.Reset(time.Until(nextSOS))
		case <-fixTimer.C:
			for now := time.Now(); !nextFix.After(now) && ctx.Err() == nil; {
				v.addFix(cur.point(), nextFix)
				lastFix = nextFix
				sent++
				if !cur.advance() {
					v.flushBatch(nextFix)
					return
				}
				nextFix = schedule()
			}
			fixTimer.Reset(time.Until(nextFix))
		}
	}
}

// sosGap draws the time to the next SOS: exponential with mean SOSEvery,
// so SOS alerts form a Poisson process.
func (v *vehicle) sosGap() time.Duration {
	return time.Duration(v.rng.ExpFloat64() * float64(v.sim.cfg.SOSEvery))
}

// wallTime maps a scheduled monotonic time to the timestamp the device
// reports: the run's start on the configured clock plus the schedule.
func (v *vehicle) wallTime(scheduled time.Time) time.Time {
	return v.startWall.Add(scheduled.Sub(v.startMono))
}

// addFix adds the fix of point p, scheduled at the given time, to the
// batch, and publishes the batch once it is full.
func (v *vehicle) addFix(p Point, scheduled time.Time) {
	v.pos = p

	// Drain about 1 % of battery per 100 fixes and recharge below 10 %.
	v.battery -= 0.01
	if v.battery < 10 {
		v.battery = 100
	}
	fix := fixPayload{
		TS:         v.wallTime(scheduled).In(deviceZone).Format(deviceTimeLayout),
		Lat:        p.Lat,
		Lon:        p.Lon,
		AccuracyM:  math.Round((3+7*v.rng.Float64())*10) / 10,
		BatteryPct: math.Round(v.battery),
	}
	if p.HasSpeed {
		kmh := math.Round(p.SpeedKmh*10) / 10
		fix.SpeedKmh = &kmh
	}
	if p.HasHeading {
		deg := math.Mod(math.Round(p.HeadingDeg*10)/10, 360)
		fix.HeadingDeg = &deg
	}
	v.batch = append(v.batch, fix)
	if len(v.batch) >= v.sim.cfg.Batch {
		v.flushBatch(scheduled)
	}
}

// flushBatch publishes the buffered fixes: one JSON object when Batch is
// 1, otherwise a JSON array.
func (v *vehicle) flushBatch(scheduled time.Time) {
	if len(v.batch) == 0 {
		return
	}
	var payload []byte
	var err error
	if v.sim.cfg.Batch == 1 {
		payload, err = json.Marshal(v.batch[0])
	} else {
		payload, err = json.Marshal(v.batch)
	}
	n := len(v.batch)
	v.batch = v.batch[:0]

	s := v.sim
	s.fixesSent.Add(uint64(n))
	s.fixMessages.Add(1)
	s.metrics.fixesPublished.Add(float64(n))
	if err != nil {
		// Unreachable with finite numbers, which the trace loaders ensure.
		s.log.Error("encode fix", "vehicle", v.id, "error", err)
		s.recordFailure(pendingMsg{kind: kindFix, fixes: n}, reasonError)
		return
	}
	v.publish(kindFix, protocol.TopicFix, s.cfg.QoS.level(), false, payload, scheduled, n)
}

// sendSOS publishes an SOS at the vehicle's last position, with a fresh id
// "<vehicle>-<unix ms>" that is unique for the vehicle.
func (v *vehicle) sendSOS(scheduled time.Time) {
	at := v.wallTime(scheduled)
	ms := max(at.UnixMilli(), v.lastSOSMs+1)
	v.lastSOSMs = ms

	kind := protocol.SOSPanic
	if v.rng.Float64() < 0.3 {
		kind = sosKinds[v.rng.IntN(len(sosKinds))]
	}
	payload, err := json.Marshal(sosPayload{
		ID:   v.id + "-" + strconv.FormatInt(ms, 10),
		TS:   at.In(deviceZone).Format(deviceTimeLayout),
		Lat:  v.pos.Lat,
		Lon:  v.pos.Lon,
		Kind: string(kind),
	})
	v.sim.sosSent.Add(1)
	if err != nil {
		// Unreachable with finite numbers, which the trace loaders ensure.
		v.sim.log.Error("encode sos", "vehicle", v.id, "error", err)
		v.sim.recordFailure(pendingMsg{kind: kindSOS}, reasonError)
		return
	}
	v.publish(kindSOS, protocol.TopicSOS, 1, false, payload, scheduled, 0)
}

// publishStatus publishes the vehicle's retained online status.
func (v *vehicle) publishStatus(payload []byte) {
	v.publish(kindStatus, protocol.TopicStatus, 1, true, payload, time.Now(), 0)
}

// publish hands a message to paho and queues its token for ackLoop. It
// blocks only when MaxInflight messages await their PUBACK.
func (v *vehicle) publish(kind string, topic protocol.TopicKind, qos byte, retained bool, payload []byte, scheduled time.Time, fixes int) {
	v.sim.metrics.published.WithLabelValues(kind).Inc()
	tok := v.client.Publish(protocol.VehicleTopicFor(v.id, topic), qos, retained, payload)
	v.pending <- pendingMsg{token: tok, kind: kind, fixes: fixes, scheduled: scheduled, published: time.Now()}
}

// ackLoop waits for each queued message's PUBACK, in publishing order,
// for at most PublishTimeout after it was published, and records the
// outcome. It returns when pending is closed and drained.
func (v *vehicle) ackLoop() {
	defer close(v.ackerDone)
	s := v.sim
	timeout := s.cfg.PublishTimeout
	timer := time.NewTimer(timeout)
	defer timer.Stop()

	for m := range v.pending {
		timer.Reset(time.Until(m.published.Add(timeout)))
		var err error
		select {
		case <-m.token.Done():
			err = m.token.Error()
		case <-timer.C:
			s.recordFailure(m, reasonTimeout)
			s.limited.warn("publish_timeout", "no PUBACK within the publish timeout", "vehicle", v.id, "kind", m.kind, "timeout", timeout)
			continue
		}
		if err != nil {
			s.recordFailure(m, reasonError)
			s.limited.warn("publish_failed", "publish failed", "vehicle", v.id, "kind", m.kind, "error", err)
			continue
		}
		s.recordAck(m, time.Since(m.scheduled))
	}
}

// shutdown publishes the offline status (a clean disconnect discards the
// will message), waits for outstanding PUBACKs and disconnects.
func (v *vehicle) shutdown() {
	v.publishStatus(statusOffline)
	close(v.pending)
	<-v.ackerDone
	v.client.Disconnect(disconnectQuiesce)
	v.markClosed()
}

// setConnected records the connection state in the gauge. After
// markClosed it only lowers it, so a late event cannot leave a vehicle
// that is gone counted as connected.
func (v *vehicle) setConnected(up bool) {
	if up && v.everConnected.CompareAndSwap(false, true) {
		v.sim.vehiclesConnected.Add(1)
	}

	v.connMu.Lock()
	defer v.connMu.Unlock()
	if up == v.connected || (up && v.closed) {
		return
	}
	v.connected = up
	if up {
		v.sim.metrics.connected.Inc()
	} else {
		v.sim.metrics.connected.Dec()
	}
}

// markClosed records that the vehicle is disconnected for good.
func (v *vehicle) markClosed() {
	v.connMu.Lock()
	v.closed = true
	v.connMu.Unlock()
	v.setConnected(false)
}
