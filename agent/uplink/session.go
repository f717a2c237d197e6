package uplink

import (
	"errors"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/protocol"
)

// errStopped ends a session because Close was called.
var errStopped = errors.New("uplink stopped")

// ackBuffer is how many Acks may wait for the session loop. The loop has
// one batch in flight, so a handful is plenty; an Ack dropped on overflow
// only costs a resend after AckTimeout.
const ackBuffer = 64

// logEveryAttempts limits the repeated warnings while the hub is unreachable.
const logEveryAttempts = 10

// run connects, drains and reconnects until Close.
func (u *Uplink) run() {
	defer close(u.done)
	attempt := 0
	for {
		progressed, err := u.session()
		if errors.Is(err, errStopped) {
			return
		}
		if progressed {
			attempt = 0
		}
		delay := u.backoff(attempt)
		level := u.log.Debug
		if attempt%logEveryAttempts == 0 {
			level = u.log.Warn
		}
		level("uplink to hub down; reconnecting", "hub", u.cfg.HubURL, "attempt", attempt+1,
			"retry_in", delay.String(), "error", err)
		attempt++

		if !u.sleep(delay) {
			return
		}
	}
}

// sleep waits d or until Close; it reports false on Close.
func (u *Uplink) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-u.stop:
		return false
	}
}

// conn is one MQTT connection to the hub and the channels its paho
// callbacks feed.
type conn struct {
	client paho.Client
	// up is the agent clock when the connection came up.
	up   time.Time
	acks chan protocol.Ack
	lost chan error
}

// session runs one connection: connect, subscribe to Acks, send batches
// until the link fails or Close. progressed reports whether the hub
// acknowledged anything, which resets the backoff.
func (u *Uplink) session() (progressed bool, err error) {
	c, err := u.connect()
	if err != nil {
		u.metrics.connectFailures.Inc()
		return false, err
	}
	u.setState(StateConnected)
	u.metrics.connected.Set(1)
	u.log.Info("uplink connected to hub", "hub", u.cfg.HubURL)
	defer func() {
		u.setState(StateDisconnected)
		u.metrics.connected.Set(0)
		c.client.Disconnect(250)
	}()

	for {
		batch, err := u.nextBatch(c.up)
		if err != nil {
			return progressed, err
		}
		if batch == nil {
			if err := u.idle(c, &progressed); err != nil {
				return progressed, err
			}
			continue
		}
		if err := u.deliver(c, batch, &progressed); err != nil {
			return progressed, err
		}
	}
}

// connect opens a clean MQTT session as the agent and subscribes to its Ack topic.
func (u *Uplink) connect() (*conn, error) {
	select {
	case <-u.stop:
		return nil, errStopped
	default:
	}
	u.metrics.connectAttempts.Inc()
	c := &conn{acks: make(chan protocol.Ack, ackBuffer), lost: make(chan error, 1)}

	opts := paho.NewClientOptions().
		AddBroker(u.cfg.HubURL).
		SetClientID(u.cfg.AgentID).
		SetUsername(u.cfg.AgentID).
		SetPassword(u.cfg.Password).
		// The spool holds the data and resends it, so paho keeps no session.
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(u.cfg.ConnectTimeout).
		SetWriteTimeout(u.cfg.ConnectTimeout).
		SetKeepAlive(u.cfg.KeepAlive).
		SetPingTimeout(u.cfg.KeepAlive / 2).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	c.client = paho.NewClient(opts)

	tok := c.client.Connect()
	if !tok.WaitTimeout(u.cfg.ConnectTimeout + time.Second) {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: timed out after %s", u.cfg.HubURL, u.cfg.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.cfg.HubURL, err)
	}
	c.up = u.cfg.Now()

	sub := c.client.Subscribe(protocol.AckTopic(u.cfg.AgentID), 1, func(_ paho.Client, m paho.Message) {
		u.receiveAck(c, m.Payload())
	})
	if !sub.WaitTimeout(u.cfg.ConnectTimeout) {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("subscribe to %s: no SUBACK within %s", protocol.AckTopic(u.cfg.AgentID), u.cfg.ConnectTimeout)
	}
	if err := sub.Error(); err != nil {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("subscribe to %s: %w", protocol.AckTopic(u.cfg.AgentID), err)
	}
	if st, ok := sub.(*paho.SubscribeToken); ok {
		if code := st.Result()[protocol.AckTopic(u.cfg.AgentID)]; code >= 0x80 {
			c.client.Disconnect(0)
			return nil, fmt.Errorf("subscribe to %s: hub rejected the subscription with code 0x%02x", protocol.AckTopic(u.cfg.AgentID), code)
		}
	}
	return c, nil
}

// receiveAck runs on paho's goroutine. It decodes an Ack and queues it
// without blocking, because paho's handlers must not block.
func (u *Uplink) receiveAck(c *conn, payload []byte) {
	ack, err := protocol.DecodeAck(payload)
	if err != nil {
		u.metrics.acksIgnored.WithLabelValues("invalid").Inc()
		u.log.Warn("invalid ack from hub ignored", "error", err)
		return
	}
	select {
	case c.acks <- *ack:
	default:
		u.metrics.acksIgnored.WithLabelValues("overflow").Inc()
		u.log.Warn("ack from hub dropped: queue full; the batch will be resent", "lane", ack.Lane, "through", ack.Through)
	}
}

// nextBatch reads the next batch to send: from the first lane in
// protocol.Lanes order (SOS, status, GPS) that has unacknowledged
// records. Because it starts from the SOS lane every time, an SOS that
// arrives during a GPS backlog goes out before the next GPS batch. It
// returns nil when every lane is drained.
func (u *Uplink) nextBatch(up time.Time) (*protocol.Batch, error) {
	for _, lane := range protocol.Lanes {
		recs, err := u.cfg.Spool.Read(lane, u.ackedThrough(lane), u.cfg.MaxBatchRecords, u.cfg.MaxBatchBytes)
		if err != nil {
			return nil, fmt.Errorf("read spool: %w", err)
		}
		if len(recs) == 0 {
			continue
		}
		for i := range recs {
			// Queued while the link was down: catch-up data.
			recs[i].Historical = recs[i].ReceivedAt.Before(up)
		}
		return &protocol.Batch{
			AgentID: u.cfg.AgentID,
			Region:  u.cfg.Region,
			SpoolID: u.cfg.Spool.SpoolID(),
			Lane:    lane,
			Records: recs,
			SentAt:  u.cfg.Now().UTC(),
		}, nil
	}
	return nil, nil
}

// idle waits for new records, handling stray Acks, until the spool
// signals an append, the link fails or Close.
func (u *Uplink) idle(c *conn, progressed *bool) error {
	for {
		select {
		case <-u.cfg.Spool.Notify():
			return nil
		case ack := <-c.acks:
			if u.applyAck(ack, nil).progressed {
				*progressed = true
			}
		case err := <-c.lost:
			return fmt.Errorf("%w: %v", ErrConnectionLost, err)
		case <-u.stop:
			return errStopped
		}
	}
}

// deliver publishes one batch and waits for its Ack. It returns nil once
// the hub acknowledged the batch or rejected it permanently (the records
// moved to the rejected bucket). It also returns nil when the hub
// rejected it transiently and the retry backoff passed. The caller then
// reads the next batch, which may hold the same records again. deliver
// returns an error when the link must be re-established.
//
// TODO: one batch is in flight at a time; a window of several batches
// would use a long round trip better.
func (u *Uplink) deliver(c *conn, batch *protocol.Batch, progressed *bool) error {
	payload, err := protocol.EncodeBatch(batch)
	if err != nil {
		return err
	}
	lane := string(batch.Lane)
	u.noteSent(batch.Lane, batch.Last())
	u.metrics.batchesSent.WithLabelValues(lane).Inc()
	u.metrics.recordsSent.WithLabelValues(lane).Add(float64(len(batch.Records)))
	start := time.Now()

	tok := c.client.Publish(protocol.BatchTopic(u.cfg.AgentID), 1, false, payload)
	published := tok.Done()
	timer := time.NewTimer(u.cfg.AckTimeout)
	defer timer.Stop()
	for {
		select {
		case <-published:
			// A PUBACK only means the hub's broker has the batch. The
			// records stay in the spool until the Ack.
			published = nil
			if err := tok.Error(); err != nil {
				return fmt.Errorf("publish %s batch %d-%d: %w", lane, batch.First(), batch.Last(), err)
			}
		case ack := <-c.acks:
			res := u.applyAck(ack, batch)
			if res.progressed {
				*progressed = true
			}
			switch {
			case res.done:
				u.metrics.roundTrip.WithLabelValues(lane).Observe(time.Since(start).Seconds())
				return nil
			case res.retry:
				return u.waitRetry(c, progressed, res.retryAttempt)
			}
		case <-timer.C:
			u.metrics.ackTimeouts.Inc()
			return fmt.Errorf("%w: %s batch %d-%d, waited %s", ErrAckTimeout, lane, batch.First(), batch.Last(), u.cfg.AckTimeout)
		case err := <-c.lost:
			return fmt.Errorf("%w: %v", ErrConnectionLost, err)
		case <-u.stop:
			return errStopped
		}
	}
}

// waitRetry waits the backoff after a transient hub error, still handling
// Acks and watching the link.
func (u *Uplink) waitRetry(c *conn, progressed *bool, attempt int) error {
	t := time.NewTimer(u.backoff(attempt))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return nil
		case ack := <-c.acks:
			if u.applyAck(ack, nil).progressed {
				*progressed = true
			}
		case err := <-c.lost:
			return fmt.Errorf("%w: %v", ErrConnectionLost, err)
		case <-u.stop:
			return errStopped
		}
	}
}

func (u *Uplink) noteSent(lane protocol.Lane, seq uint64) {
	u.ackedMu.Lock()
	defer u.ackedMu.Unlock()
	u.sent[lane] = max(u.sent[lane], seq)
}
