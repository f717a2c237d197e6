package broker_test

import (
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/protocol"
)

func TestBroker_RejectsWillOnOwnSOSStateTopic(t *testing.T) {
	tb := startBroker(t, nil)
	for _, topic := range []string{
		protocol.SOSStateTopic(vehicle, "sos-1"),
		protocol.VehiclePrefix + vehicle + "/anything",
	} {
		_, connack := dialRaw(t, tb.broker.Addr(), rawConnect{
			version: 5, clientID: "will-state", username: vehicle,
			willTopic: topic, willBody: []byte(`{"state":"resolved","message":"forged"}`), willRetain: true,
		})
		if connack.ReasonCode != packets.ErrBadUsernameOrPassword.Code {
			t.Errorf("CONNECT with a will on %s: CONNACK 0x%02x, want 0x%02x", topic, connack.ReasonCode, packets.ErrBadUsernameOrPassword.Code)
		}
	}
	if !strings.Contains(tb.logs.text(), "the will topic is not one the vehicle may publish to") {
		t.Error("the refused will topic was not logged")
	}
}

func TestBroker_WillIsNotRetained(t *testing.T) {
	tb := startBroker(t, nil)
	rc, connack := dialRaw(t, tb.broker.Addr(), rawConnect{
		version: 5, clientID: "will-retained", username: vehicle,
		willTopic: statusTopic, willBody: []byte(`{"online":false}`), willRetain: true,
	})
	if connack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x, want success for a retained will on the status topic", connack.ReasonCode)
	}
	// Dropping the connection without DISCONNECT makes mochi send the will.
	rc.conn.Close()
	eventually(t, "the will status in the spool", func() bool {
		recs := readLane(t, tb.spool, protocol.LaneStatus)
		return len(recs) == 1 && recs[0].Status != nil && !recs[0].Status.Online
	})

	// A new subscriber gets retained messages right after the SUBACK, so
	// the first message it gets is the one published after subscribing
	// unless the will was retained.
	sub, connack := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "will-reader", username: vehicle})
	if connack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x, want success", connack.ReasonCode)
	}
	if suback := sub.subscribe(statusTopic); suback.FixedHeader.Type != packets.Suback || len(suback.ReasonCodes) != 1 || suback.ReasonCodes[0] >= 0x80 {
		t.Fatalf("SUBACK %+v, want the subscription granted", suback)
	}
	sub.publish(statusTopic, []byte(`{"online":true}`), 1)
	for {
		pk := sub.read()
		if pk.FixedHeader.Type != packets.Publish {
			continue // the PUBACK of the status
		}
		if pk.FixedHeader.Retain || string(pk.Payload) != `{"online":true}` {
			t.Fatalf("first message on %s: %q (retained %v), want the live status; the will was retained",
				pk.TopicName, pk.Payload, pk.FixedHeader.Retain)
		}
		return
	}
}
