package protocol

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validSOSStateUpdate() *SOSStateUpdate {
	return &SOSStateUpdate{
		VehicleID:  "taxi-0917",
		SOSID:      "sos-1",
		IncidentID: 42,
		State: SOSState{
			State:   SOSStateAcknowledged,
			TS:      time.Date(2026, 12, 4, 10, 1, 10, 0, time.FixedZone("PHT", 8*3600)),
			Message: "An operator is handling your SOS.",
		},
	}
}

func TestSOSState_RoundTrip(t *testing.T) {
	in := validSOSStateUpdate().State
	data, err := EncodeSOSState(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"state":"acknowledged","ts":"2026-12-04T02:01:10Z","message":"An operator is handling your SOS."}`
	if string(data) != want {
		t.Errorf("payload = %s\nwant      %s", data, want)
	}
	out, err := DecodeSOSState(data)
	if err != nil {
		t.Fatal(err)
	}
	if out.State != in.State || !out.TS.Equal(in.TS) || out.Message != in.Message {
		t.Errorf("decoded %+v, want %+v", out, in)
	}
	if out.TS.Location() != time.UTC {
		t.Errorf("decoded ts location = %v, want UTC", out.TS.Location())
	}
}

func TestDecodeSOSState_Rules(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		wantErr error
	}{
		{"empty payload clears", ``, ErrMissingField},
		{"not json", `received`, ErrMalformed},
		{"missing state", `{"ts":"2026-12-04T02:01:10Z"}`, ErrMissingField},
		{"unknown state", `{"state":"open","ts":"2026-12-04T02:01:10Z"}`, ErrMalformed},
		{"missing ts", `{"state":"received"}`, ErrMissingField},
		{"ts without offset", `{"state":"received","ts":"2026-12-04T02:01:10"}`, ErrMalformed},
		{"message too long", `{"state":"received","ts":"2026-12-04T02:01:10Z","message":"` + strings.Repeat("x", MaxSOSStateMessage+1) + `"}`, ErrTooLarge},
		{"invalid utf-8", "{\"state\":\"received\",\"ts\":\"2026-12-04T02:01:10Z\",\"message\":\"\xff\"}", ErrInvalidUTF8},
		{"empty message allowed", `{"state":"received","ts":"2026-12-04T02:01:10Z","message":""}`, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeSOSState([]byte(tc.payload))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestEncodeSOSState_RejectsInvalid(t *testing.T) {
	if _, err := EncodeSOSState(SOSState{State: "open", TS: time.Now()}); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown state: error = %v, want ErrMalformed", err)
	}
	if _, err := EncodeSOSState(SOSState{State: SOSStateReceived}); !errors.Is(err, ErrMissingField) {
		t.Errorf("zero ts: error = %v, want ErrMissingField", err)
	}
	if _, err := EncodeSOSState(SOSState{State: SOSStateReceived, TS: time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC)}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("year 12000: error = %v, want ErrOutOfRange", err)
	}
}

func TestSOSStateUpdate_RoundTrip(t *testing.T) {
	in := validSOSStateUpdate()
	data, err := EncodeSOSStateUpdate(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeSOSStateUpdate(data)
	if err != nil {
		t.Fatal(err)
	}
	if out.VehicleID != in.VehicleID || out.SOSID != in.SOSID || out.IncidentID != in.IncidentID {
		t.Errorf("decoded ids %s/%s/%d, want %s/%s/%d", out.VehicleID, out.SOSID, out.IncidentID, in.VehicleID, in.SOSID, in.IncidentID)
	}
	if out.State.State != in.State.State || !out.State.TS.Equal(in.State.TS) || out.State.Message != in.State.Message {
		t.Errorf("decoded state %+v, want %+v", out.State, in.State)
	}
	if in.State.TS.Location() == time.UTC {
		t.Error("EncodeSOSStateUpdate changed the caller's time zone")
	}
}

func TestDecodeSOSStateUpdate_Rules(t *testing.T) {
	const state = `{"state":"dispatched","ts":"2026-12-04T02:01:10Z","message":"on the way"}`
	cases := []struct {
		name    string
		payload string
		wantErr error
	}{
		{"valid", `{"vehicle":"v1","sos":"s-1","incident":7,"state":` + state + `}`, nil},
		{"empty", ``, ErrMalformed},
		{"array", `[]`, ErrMalformed},
		{"missing vehicle", `{"sos":"s-1","incident":7,"state":` + state + `}`, ErrInvalidID},
		{"vehicle with slash", `{"vehicle":"v/1","sos":"s-1","incident":7,"state":` + state + `}`, ErrInvalidID},
		{"sos with wildcard", `{"vehicle":"v1","sos":"s+1","incident":7,"state":` + state + `}`, ErrInvalidID},
		{"incident zero", `{"vehicle":"v1","sos":"s-1","incident":0,"state":` + state + `}`, ErrOutOfRange},
		{"incident not a number", `{"vehicle":"v1","sos":"s-1","incident":"7","state":` + state + `}`, ErrMalformed},
		{"state missing", `{"vehicle":"v1","sos":"s-1","incident":7}`, ErrMissingField},
		{"state unknown", `{"vehicle":"v1","sos":"s-1","incident":7,"state":{"state":"closed","ts":"2026-12-04T02:01:10Z"}}`, ErrMalformed},
		{"too large", `{"vehicle":"v1","sos":"s-1","incident":7,"pad":"` + strings.Repeat("x", MaxSOSStateUpdateBytes) + `","state":` + state + `}`, ErrTooLarge},
		{"invalid utf-8", "{\"vehicle\":\"v1\",\"sos\":\"s-1\",\"incident\":7,\"x\":\"\xff\",\"state\":" + state + "}", ErrInvalidUTF8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeSOSStateUpdate([]byte(tc.payload))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestSOSStateRank_Order(t *testing.T) {
	order := []string{SOSStateReceived, SOSStateAcknowledged, SOSStateDispatched, SOSStateResolved}
	for i := 1; i < len(order); i++ {
		if !SOSStateAdvances(order[i-1], order[i]) {
			t.Errorf("%s -> %s does not advance", order[i-1], order[i])
		}
		if SOSStateAdvances(order[i], order[i-1]) {
			t.Errorf("%s -> %s advances backwards", order[i], order[i-1])
		}
	}
	if SOSStateAdvances(SOSStateResolved, SOSStateCancelled) || SOSStateAdvances(SOSStateCancelled, SOSStateResolved) {
		t.Error("a final state advances to the other final state")
	}
	if !SOSStateAdvances("", SOSStateReceived) {
		t.Error("no state -> received does not advance")
	}
	if SOSStateRank("open") != 0 {
		t.Error("unknown state has a rank")
	}
	for _, s := range []string{SOSStateResolved, SOSStateCancelled} {
		if !SOSStateFinal(s) {
			t.Errorf("%s is not final", s)
		}
	}
	if SOSStateFinal(SOSStateDispatched) {
		t.Error("dispatched is final")
	}
}

func TestDefaultSOSStateMessage_EveryState(t *testing.T) {
	for _, s := range []string{SOSStateReceived, SOSStateAcknowledged, SOSStateDispatched, SOSStateResolved, SOSStateCancelled} {
		msg := DefaultSOSStateMessage(s)
		if msg == "" || len(msg) > MaxSOSStateMessage {
			t.Errorf("message for %s = %q", s, msg)
		}
	}
	if DefaultSOSStateMessage("open") != "" {
		t.Error("unknown state has a message")
	}
}

func TestSOSStateUpdateTopic_RoundTrip(t *testing.T) {
	topic := SOSStateUpdateTopic("ncr-1", "taxi-0917", "sos:1.a")
	if topic != "xpress/v1/agents/ncr-1/sos-state/taxi-0917/sos:1.a" {
		t.Errorf("topic = %q", topic)
	}
	agentID, vehicleID, sosID, err := ParseSOSStateUpdateTopic(topic)
	if err != nil {
		t.Fatal(err)
	}
	if agentID != "ncr-1" || vehicleID != "taxi-0917" || sosID != "sos:1.a" {
		t.Errorf("parsed %q %q %q", agentID, vehicleID, sosID)
	}
	if !strings.HasPrefix(topic, SOSStateUpdatePrefix("ncr-1")) || !strings.HasPrefix(SOSStateUpdateFilter("ncr-1"), SOSStateUpdatePrefix("ncr-1")) {
		t.Errorf("topic %q or filter %q lacks prefix %q", topic, SOSStateUpdateFilter("ncr-1"), SOSStateUpdatePrefix("ncr-1"))
	}
	for _, bad := range []struct {
		topic   string
		wantErr error
	}{
		{"xpress/v1/agents/ncr-1/sos-state/taxi-0917", ErrUnknownTopic},
		{"xpress/v1/agents/ncr-1/sos-state/taxi-0917/s-1/x", ErrUnknownTopic},
		{"xpress/v1/agents/ncr-1/ack", ErrUnknownTopic},
		{"xpress/v1/vehicles/v1/sos/s-1/state", ErrUnknownTopic},
		{"xpress/v1/agents/a/b/sos-state/v1/s-1", ErrInvalidID},
		{"xpress/v1/agents/ncr-1/sos-state/v 1/s-1", ErrInvalidID},
		{"xpress/v1/agents/ncr-1/sos-state/v1/+", ErrInvalidID},
	} {
		if _, _, _, err := ParseSOSStateUpdateTopic(bad.topic); !errors.Is(err, bad.wantErr) {
			t.Errorf("ParseSOSStateUpdateTopic(%q) error = %v, want %v", bad.topic, err, bad.wantErr)
		}
	}
}

// FuzzDecodeSOSStateUpdate checks that the decoder never panics, that
// every error wraps a sentinel, and that whatever it accepts encodes
// again and keeps its ids valid.
func FuzzDecodeSOSStateUpdate(f *testing.F) {
	data, err := EncodeSOSStateUpdate(validSOSStateUpdate())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	for _, seed := range []string{
		`{"vehicle":"v1","sos":"s-1","incident":1,"state":{"state":"resolved","ts":"2026-12-04T02:01:10+08:00"}}`,
		`{"vehicle":"v1","sos":"s-1","incident":-1,"state":{}}`,
		`{"state":null}`, `null`, ``, "\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		u, err := DecodeSOSStateUpdate(payload)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if ValidateVehicleID(u.VehicleID) != nil || ValidateSOSID(u.SOSID) != nil || u.IncidentID <= 0 {
			t.Fatalf("accepted invalid ids: %+v", u)
		}
		if SOSStateRank(u.State.State) == 0 {
			t.Fatalf("accepted unknown state %q", u.State.State)
		}
		if _, err := EncodeSOSStateUpdate(&u); err != nil {
			t.Fatalf("accepted update does not encode again: %v", err)
		}
	})
}
