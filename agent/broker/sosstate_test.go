package broker_test

import (
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/protocol"
)

func TestBroker_OnSOSStoredAfterSpoolCommit(t *testing.T) {
	var mu sync.Mutex
	var stored []protocol.Record
	var tb *testBroker
	tb = startBroker(t, func(c *broker.Config) {
		c.OnSOSStored = func(rec protocol.Record) {
			// The record is in the spool before the callback runs.
			inSpool := len(readLane(t, tb.spool, protocol.LaneSOS))
			mu.Lock()
			defer mu.Unlock()
			if inSpool == 0 {
				t.Errorf("OnSOSStored for SOS %s ran before the spool stored it", rec.SOS.ID)
			}
			stored = append(stored, rec)
		}
	})
	c := connectPaho(t, tb.broker.Addr(), "taxi-1")
	publishPaho(t, c, protocol.VehicleTopicFor("taxi-1", protocol.TopicFix), fixJSON(14.5, 121, agentNow))
	publishPaho(t, c, protocol.VehicleTopicFor("taxi-1", protocol.TopicSOS), []byte(`{"id":"sos-1","kind":"fire"}`))
	publishPaho(t, c, protocol.VehicleTopicFor("taxi-1", protocol.TopicSOSCancel), []byte(`{"id":"sos-1"}`))

	// The callback runs before the PUBACK, so it has run by now.
	mu.Lock()
	defer mu.Unlock()
	if len(stored) != 1 {
		t.Fatalf("OnSOSStored called %d times, want once, for the SOS only", len(stored))
	}
	rec := stored[0]
	if rec.Kind != protocol.KindSOS || rec.VehicleID != "taxi-1" || rec.SOS.ID != "sos-1" || rec.SOS.Kind != protocol.SOSFire || rec.Seq == 0 {
		t.Errorf("OnSOSStored record = %+v, want SOS sos-1 of taxi-1 with its spool seq", rec)
	}
}

func TestBroker_PublishReachesOwnVehicleOnly(t *testing.T) {
	tb := startBroker(t, nil)
	topic := protocol.SOSStateTopic("taxi-1", "sos-1")
	if err := tb.broker.Publish(topic, []byte(`{"state":"received"}`), true); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	msgs := make(chan string, 4)
	own := connectPaho(t, tb.broker.Addr(), "taxi-1")
	tok := own.Subscribe(protocol.VehiclePrefix+"taxi-1/sos/+/state", 1, func(_ paho.Client, m paho.Message) {
		msgs <- m.Topic() + " " + string(m.Payload())
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	select {
	case got := <-msgs:
		if got != topic+` {"state":"received"}` {
			t.Errorf("vehicle received %q, want the retained state", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("vehicle did not receive the retained state")
	}

	// Another vehicle may not subscribe to taxi-1's states.
	other := connectPaho(t, tb.broker.Addr(), "taxi-2")
	tok = other.Subscribe(topic, 1, func(paho.Client, paho.Message) { t.Error("taxi-2 received taxi-1's state") })
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("no SUBACK")
	}
	if code := tok.(*paho.SubscribeToken).Result()[topic]; code < 0x80 {
		t.Errorf("taxi-2's subscription to taxi-1's state granted with code %#x", code)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_messages_accepted_total", "kind", "sos"); got != 0 {
		t.Errorf("the agent's own publish was stored as a vehicle SOS: accepted{kind=sos} = %v", got)
	}
}

func TestBroker_PublishBeforeOpen(t *testing.T) {
	b := broker.New(broker.Config{Addr: "127.0.0.1:0"})
	if err := b.Publish(protocol.SOSStateTopic("taxi-1", "sos-1"), []byte("x"), true); err == nil {
		t.Error("Publish before Open succeeded")
	}
}
