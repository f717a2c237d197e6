package events_test

import (
	"encoding/json"
	"testing"

	"github.com/xpress-ops/tower/hub/events"
)

// TestBus_PublishInTagsRegion checks that the region given to PublishIn
// reaches subscribers of both kinds, replayed and live, and stays out of
// the frame, which is the same whatever the region.
func TestBus_PublishInTagsRegion(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	ch := mustSubscribe(t, b, 0)

	manila, err := b.PublishIn("NCR-Manila", events.TypeFix, map[string]string{"vehicle_id": "MNL-0001"})
	if err != nil {
		t.Fatalf("publish in NCR-Manila: %v", err)
	}
	cebu, err := b.PublishIn("Cebu", events.TypeFix, map[string]string{"vehicle_id": "MNL-0001"})
	if err != nil {
		t.Fatalf("publish in Cebu: %v", err)
	}
	none := mustPublish(t, b, events.TypeAgentStatus, map[string]string{"agent_id": "ncr-1"})

	if manila.Region != "NCR-Manila" || cebu.Region != "Cebu" || none.Region != "" {
		t.Fatalf("returned regions = %q, %q, %q, want NCR-Manila, Cebu and none", manila.Region, cebu.Region, none.Region)
	}
	// The frame carries no region: the same data gives the same frame
	// apart from seq.
	var m, c map[string]any
	if err := json.Unmarshal(manila.Frame(), &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(cebu.Frame(), &c); err != nil {
		t.Fatal(err)
	}
	if len(m) != 4 || len(c) != 4 || string(manila.Data) != string(cebu.Data) {
		t.Errorf("frames = %s and %s, want type, seq, time and data only, with equal data", manila.Frame(), cebu.Frame())
	}
	if out, _ := json.Marshal(manila); string(out) != string(manila.Frame()) {
		t.Errorf("json.Marshal = %s, want the frame %s", out, manila.Frame())
	}

	want := []string{"NCR-Manila", "Cebu", ""}
	for i, ev := range receive(t, ch, 3) {
		if ev.Region != want[i] {
			t.Errorf("channel event %d region = %q, want %q", ev.Seq, ev.Region, want[i])
		}
	}

	// A subscription read with Next replays the kept events with their regions.
	next := mustSubscribe(t, b, b.Latest()-3)
	for i := range 3 {
		ev, ok, err := next.Next()
		if err != nil || !ok {
			t.Fatalf("next %d: ok=%v err=%v", i, ok, err)
		}
		if ev.Region != want[i] {
			t.Errorf("replayed event %d region = %q, want %q", ev.Seq, ev.Region, want[i])
		}
	}
}
