package uplink

import (
	"errors"
	"fmt"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/xpress-ops/tower/protocol"
)

// errStopped ends a session because Close was called.
var errStopped = errors.New("uplink stopped")

// ackBuffer is how many Acks may wait for the session loop. At most
// MaxInflightBatchesLimit+2 batches are in flight and the hub sends one
// Ack per batch, so the buffer only overflows when the hub sends Acks for
// batches that were never sent. An Ack dropped on overflow costs a resend after
// AckTimeout.
const ackBuffer = 256

// logEveryAttempts limits the repeated warnings while the hub is unreachable.
const logEveryAttempts = 10

// Causes of a dead link, as metric labels.
const (
	causeAckTimeout = "ack_timeout"
	causeKeepAlive  = "keepalive"
	causeTCPError   = "tcp_error"
)

// pingTimeoutText is the text of the error paho v1.5.1 reports when no
// PINGRESP came back in time (ping.go). paho exports no sentinel for it.
const pingTimeoutText = "pingresp not received, disconnecting"

// run connects l, drains its lanes and reconnects until Close.
func (u *Uplink) run(l *hubLink) {
	attempt := 0
	for {
		progressed, err := u.session(l)
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
		level("uplink to hub down; reconnecting", "link", l.name, "hub", u.cfg.HubURL, "attempt", attempt+1,
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
	link   *hubLink
	client paho.Client
	// up is the agent clock when the connection came up.
	up   time.Time
	acks chan protocol.Ack
	lost chan error
}

// session runs one connection of l: connect, subscribe to Acks, send
// batches until the link fails or Close. progressed reports whether the
// hub acknowledged anything, which resets the backoff.
func (u *Uplink) session(l *hubLink) (progressed bool, err error) {
	c, err := u.connect(l)
	if err != nil {
		u.metrics.connectFailures.Inc()
		return false, err
	}
	if l.connectedBefore {
		u.metrics.reconnects.Inc()
	}
	l.connectedBefore = true
	u.linkUp(l)
	u.log.Info("uplink connected to hub", "link", l.name, "client", l.clientID, "hub", u.cfg.HubURL)

	s := newSession(u, c)
	defer func() {
		u.linkDown(l)
		for _, lane := range l.lanes {
			u.metrics.inflight.WithLabelValues(string(lane)).Set(0)
		}
		c.client.Disconnect(250)
	}()
	err = s.run()
	return s.progressed, err
}

// connect opens a clean MQTT session of l as the agent and subscribes to
// l's Ack topic. On the main link only, it also subscribes to the SOS
// state topics, the vehicle credentials and the operator list, each when
// its callback (Config.OnSOSState, Config.OnVehicleCredential,
// Config.OnOperators) is set; see subscribeAll. Their handlers run on the
// connection's paho goroutine, ahead of the Acks that arrive behind them,
// and the SOS link's Acks must not wait for them.
func (u *Uplink) connect(l *hubLink) (*conn, error) {
	select {
	case <-u.stop:
		return nil, errStopped
	default:
	}
	u.metrics.connectAttempts.Inc()
	c := &conn{link: l, acks: make(chan protocol.Ack, ackBuffer), lost: make(chan error, 1)}

	opts := paho.NewClientOptions().
		AddBroker(u.cfg.HubURL).
		SetClientID(l.clientID).
		SetUsername(u.cfg.AgentID).
		SetPassword(u.cfg.Password).
		// The spool holds the data and resends it, so paho keeps no session.
		SetCleanSession(true).
		// Explicit, so paho does not repeat a refused CONNECT as MQTT 3.1.
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(u.cfg.ConnectTimeout).
		SetWriteTimeout(u.cfg.ConnectTimeout).
		SetKeepAlive(u.cfg.KeepAlive).
		SetPingTimeout(u.cfg.PingTimeout).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	if u.cfg.TLS != nil {
		opts.SetTLSConfig(u.cfg.TLS.Clone())
	}
	c.client = paho.NewClient(opts)

	tok := c.client.Connect()
	if !tok.WaitTimeout(u.cfg.ConnectTimeout + time.Second) {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: timed out after %s", u.cfg.HubURL, u.cfg.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		if errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised) {
			u.credentialsRefused(err)
			return nil, fmt.Errorf("connect to %s: %w: %w", u.cfg.HubURL, ErrCredentialsRefused, err)
		}
		return nil, fmt.Errorf("connect to %s: %w", u.cfg.HubURL, err)
	}
	u.refusals.Store(0)
	u.metrics.credsRefused.Set(0)
	c.up = u.cfg.Now()

	if err := u.subscribeAll(c, u.subscriptions(c)); err != nil {
		c.client.Disconnect(0)
		return nil, err
	}
	return c, nil
}

// subscription is one topic filter a link subscribes to, with the
// handler of its messages.
type subscription struct {
	filter  string
	handler paho.MessageHandler
	// lost names what the agent misses while the subscription is refused.
	lost string
}

// subscriptions returns the filters c's link subscribes to: its Ack
// topic, and on the main link the SOS states, the vehicle credentials
// and the operator list, each when its callback is set.
func (u *Uplink) subscriptions(c *conn) []subscription {
	l := c.link
	subs := []subscription{{
		filter:  l.ackTopic,
		handler: func(_ paho.Client, m paho.Message) { u.receiveAck(c, m.Payload()) },
		lost:    "the hub's Acks; no batch of the link can be settled",
	}}
	if !l.states {
		return subs
	}
	if u.cfg.OnSOSState != nil {
		subs = append(subs, subscription{
			filter:  protocol.SOSStateUpdateFilter(u.cfg.AgentID),
			handler: func(_ paho.Client, m paho.Message) { u.cfg.OnSOSState(m.Topic(), m.Payload()) },
			lost:    "the hub's SOS states; vehicles would not hear them",
		})
	}
	if u.cfg.OnVehicleCredential != nil {
		subs = append(subs, subscription{
			filter:  protocol.VehicleCredentialFilter,
			handler: func(_ paho.Client, m paho.Message) { u.cfg.OnVehicleCredential(m.Topic(), m.Payload()) },
			lost:    "new, rotated and revoked vehicle credentials; a revoked vehicle would stay accepted",
		})
	}
	if u.cfg.OnOperators != nil {
		subs = append(subs, subscription{
			filter:  protocol.AgentOperatorsTopic(u.cfg.AgentID),
			handler: func(_ paho.Client, m paho.Message) { u.cfg.OnOperators(m.Topic(), m.Payload()) },
			lost:    "operator account changes for this agent's page",
		})
	}
	return subs
}

// subscribeAll subscribes c to every filter of subs with QoS 1 in one
// SUBSCRIBE, sent right after the CONNACK of a clean session, so the hub
// has nothing in flight to the agent yet. Separate SUBSCRIBEs would let
// the retained messages the first ones deliver collide with a later one:
// mochi-mqtt v2.7.9 (processSubscribe) rejects a SUBSCRIBE whose packet
// id matches one of its own deliveries still in flight with 0x91
// "packet identifier in use" for every filter, and paho numbers its
// packets independently of the broker.
//
// The handlers' routes are added before the SUBSCRIBE, so nothing that
// arrives right after the SUBACK is missed. Every filter's code is
// checked: a refused filter (0x80 or more, or none returned) is counted,
// logged at error and reported by SubscriptionsRefused, and the error
// ends the connection, so the link reconnects with backoff and tries
// again instead of running without the hub's credential updates.
func (u *Uplink) subscribeAll(c *conn, subs []subscription) error {
	l := c.link
	filters := make(map[string]byte, len(subs))
	for _, sub := range subs {
		c.client.AddRoute(sub.filter, sub.handler)
		filters[sub.filter] = 1
	}
	tok := c.client.SubscribeMultiple(filters, nil)
	if !tok.WaitTimeout(u.cfg.ConnectTimeout) {
		return fmt.Errorf("subscribe to %d filters: no SUBACK within %s", len(filters), u.cfg.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe to %d filters: %w", len(filters), err)
	}
	var granted map[string]byte
	if st, ok := tok.(*paho.SubscribeToken); ok {
		granted = st.Result()
	}
	var refused []string
	for _, sub := range subs {
		code, ok := granted[sub.filter]
		if ok && code < 0x80 {
			continue
		}
		refused = append(refused, sub.filter)
		u.metrics.subsRefused.WithLabelValues(l.name).Inc()
		codeText := "none"
		if ok {
			codeText = fmt.Sprintf("0x%02x", code)
		}
		u.log.Error("hub refused a subscription; reconnecting the link to subscribe again. Until then the agent misses "+sub.lost,
			"link", l.name, "client", l.clientID, "filter", sub.filter, "code", codeText, "hub", u.cfg.HubURL)
	}
	if len(refused) > 0 {
		l.subsRefused.Store(true)
		return fmt.Errorf("%w: %s", ErrSubscriptionRefused, strings.Join(refused, ", "))
	}
	l.subsRefused.Store(false)
	return nil
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

// linkLost counts a connection paho reported lost, by cause, and returns
// the error that ends the session.
func (u *Uplink) linkLost(err error) error {
	cause := causeTCPError
	if err != nil && err.Error() == pingTimeoutText {
		cause = causeKeepAlive
	}
	u.metrics.linkDead.WithLabelValues(cause).Inc()
	return fmt.Errorf("%w (%s): %v", ErrConnectionLost, cause, err)
}

// credentialsRefused counts a CONNACK that refused the agent's
// credentials and logs it at error with the fix: the first refusal and
// every logEveryAttempts-th after it. The uplink keeps retrying with
// backoff, since the hub may be in the middle of a rotation.
func (u *Uplink) credentialsRefused(err error) {
	u.metrics.authRefused.Inc()
	u.metrics.credsRefused.Set(1)
	n := u.refusals.Add(1)
	if n == 1 || n%logEveryAttempts == 0 {
		u.log.Error("hub refused the agent's credentials; vehicles' data stays in the spool until the hub accepts them. "+
			"Fix: give the agent the token of its id on the hub in XPRESS_AGENT_TOKEN or XPRESS_AGENT_TOKEN_FILE "+
			"(create one with 'xpress admin agent add "+u.cfg.AgentID+" --region ...', or 'xpress admin agent rotate "+u.cfg.AgentID+"')",
			"hub", u.cfg.HubURL, "token_set", u.cfg.Password != "", "refusals", n, "error", err)
	}
}
