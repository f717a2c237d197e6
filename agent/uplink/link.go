package uplink

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// Names of the uplink's links, in logs.
const (
	linkMain = "main"
	linkSOS  = "sos"
)

// hubLink is one of the uplink's MQTT connections to the hub, with the
// lanes it carries. The main link carries the GPS and status lanes and
// receives the hub's SOS states. The SOS link carries only the SOS lane
// (see the package doc, SOS link). Each link runs a goroutine of its own,
// which connects, sends and reconnects. The lanes' acknowledged and sent
// sequence numbers stay in the Uplink, under its lock.
type hubLink struct {
	name     string
	clientID string
	ackTopic string
	lanes    []protocol.Lane
	// states is set on the link that subscribes to the SOS states.
	states bool
	// up is set while the link is connected.
	up atomic.Bool
	// subsRefused is set while the hub refused one of the link's
	// subscriptions at the last attempt (see Uplink.subscribeAll).
	subsRefused atomic.Bool
	// ackTimeout mirrors ackWait.current for readers on other goroutines.
	ackTimeout atomic.Int64
	// notify receives a value after the spool appended records (see
	// Uplink.fanOutNotify); it has a buffer of one.
	notify chan struct{}

	// Only the link's goroutine uses the fields below.

	// transientErrors counts the hub's transient rejections in a row.
	transientErrors int
	// ackWait is the Ack timeout in force; it outlives sessions.
	ackWait ackTimeoutState
	// connectedBefore is set once a connection came up, so later ones
	// count as reconnects.
	connectedBefore bool
}

// newLinks returns the main link and the SOS link of an uplink.
func newLinks(cfg Config) []*hubLink {
	links := []*hubLink{
		{
			name: linkMain, clientID: cfg.AgentID, ackTopic: protocol.AckTopic(cfg.AgentID),
			lanes: []protocol.Lane{protocol.LaneStatus, protocol.LaneGPS}, states: true,
		},
		{
			name: linkSOS, clientID: protocol.SOSLinkClientID(cfg.AgentID), ackTopic: protocol.SOSAckTopic(cfg.AgentID),
			lanes: []protocol.Lane{protocol.LaneSOS},
		},
	}
	for _, l := range links {
		l.notify = make(chan struct{}, 1)
		l.ackWait = newAckTimeoutState(cfg.AckTimeout)
		l.ackTimeout.Store(int64(cfg.AckTimeout))
		// Keep the lanes in protocol.Lanes order, the order of precedence.
		slices.SortFunc(l.lanes, func(a, b protocol.Lane) int {
			return slices.Index(protocol.Lanes, a) - slices.Index(protocol.Lanes, b)
		})
	}
	return links
}

// fanOutNotify passes each of the spool's notifications of appended
// records on to every link, since the spool's channel has one receiver.
// It returns on Close.
func (u *Uplink) fanOutNotify() {
	for {
		select {
		case <-u.cfg.Spool.Notify():
		case <-u.stop:
			return
		}
		for _, l := range u.links {
			select {
			case l.notify <- struct{}{}:
			default: // the link has a wake-up pending already
			}
		}
	}
}

// carries reports whether the link sends lane.
func (l *hubLink) carries(lane protocol.Lane) bool { return slices.Contains(l.lanes, lane) }

// linkUp records that l connected, and reports the uplink connected once
// every link is.
func (u *Uplink) linkUp(l *hubLink) {
	l.up.Store(true)
	u.updateState()
}

// linkDown records that l lost its connection; the uplink is disconnected
// until every link is up again.
func (u *Uplink) linkDown(l *hubLink) {
	l.up.Store(false)
	u.updateState()
}

func (u *Uplink) updateState() {
	u.stateMu.Lock()
	defer u.stateMu.Unlock()
	all := true
	for _, l := range u.links {
		all = all && l.up.Load()
	}
	if all {
		u.setState(StateConnected)
		u.metrics.connected.Set(1)
		return
	}
	u.setState(StateDisconnected)
	u.metrics.connected.Set(0)
}

// noteAckTimeout sets the Ack timeout gauge to the highest Ack timeout in
// force on any link.
func (u *Uplink) noteAckTimeout(l *hubLink) {
	u.stateMu.Lock()
	defer u.stateMu.Unlock()
	l.ackTimeout.Store(int64(l.ackWait.current))
	var highest time.Duration
	for _, other := range u.links {
		highest = max(highest, time.Duration(other.ackTimeout.Load()))
	}
	u.metrics.ackTimeout.Set(highest.Seconds())
}
