package protocol

import (
	"errors"
	"testing"
)

func TestParseVehicleTopic(t *testing.T) {
	cases := []struct {
		topic   string
		want    VehicleTopic
		wantErr error
	}{
		{"xpress/v1/vehicles/v1/fix", VehicleTopic{VehicleID: "v1", Kind: TopicFix}, nil},
		{"xpress/v1/vehicles/v1/sos", VehicleTopic{VehicleID: "v1", Kind: TopicSOS}, nil},
		{"xpress/v1/vehicles/v1/sos/cancel", VehicleTopic{VehicleID: "v1", Kind: TopicSOSCancel}, nil},
		{"xpress/v1/vehicles/v1/status", VehicleTopic{VehicleID: "v1", Kind: TopicStatus}, nil},
		{"xpress/v1/vehicles/v1/sos/s-1/state", VehicleTopic{VehicleID: "v1", Kind: TopicSOSState, SOSID: "s-1"}, nil},
		{"xpress/v1/vehicles/v1", VehicleTopic{}, ErrUnknownTopic},
		{"xpress/v1/vehicles/v1/gps", VehicleTopic{}, ErrUnknownTopic},
		{"xpress/v1/vehicles/v1/fix/extra", VehicleTopic{}, ErrUnknownTopic},
		{"other/v1/fix", VehicleTopic{}, ErrUnknownTopic},
		{"xpress/v1/vehicles//fix", VehicleTopic{}, ErrInvalidID},
		{"xpress/v1/vehicles/v+1/fix", VehicleTopic{}, ErrInvalidID},
	}
	for _, tc := range cases {
		got, err := ParseVehicleTopic(tc.topic)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("ParseVehicleTopic(%q) error = %v, want %v", tc.topic, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseVehicleTopic(%q) = %+v, %v; want %+v", tc.topic, got, err, tc.want)
		}
	}
}

func TestTopicBuilders_RoundTrip(t *testing.T) {
	if got, err := ParseVehicleTopic(VehicleTopicFor("cebu-7", TopicSOSCancel)); err != nil || got.Kind != TopicSOSCancel || got.VehicleID != "cebu-7" {
		t.Errorf("round trip of sos cancel topic: %+v, %v", got, err)
	}
	if got, err := ParseVehicleTopic(SOSStateTopic("cebu-7", "s-9")); err != nil || got.SOSID != "s-9" {
		t.Errorf("round trip of sos state topic: %+v, %v", got, err)
	}
	if id, err := ParseBatchTopic(BatchTopic("ncr-1")); err != nil || id != "ncr-1" {
		t.Errorf("round trip of batch topic: %q, %v", id, err)
	}
	for _, topic := range []string{"xpress/v1/agents/a/b/batch", "xpress/v1/agents/ncr-1/ack", "xpress/v1/agents//batch"} {
		if _, err := ParseBatchTopic(topic); err == nil {
			t.Errorf("ParseBatchTopic(%q) accepted", topic)
		}
	}
}
