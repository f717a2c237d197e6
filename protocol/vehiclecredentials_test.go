package protocol

import (
	"strings"
	"testing"
)

func TestVehicleCredentialTopic_RoundTrip(t *testing.T) {
	topic := VehicleCredentialTopic("veh-1")
	if topic != "xpress/v1/hub/vehicle-credentials/veh-1" || !strings.HasPrefix(topic, VehicleCredentialPrefix) {
		t.Fatalf("VehicleCredentialTopic = %q", topic)
	}
	if id, err := ParseVehicleCredentialTopic(topic); err != nil || id != "veh-1" {
		t.Errorf("ParseVehicleCredentialTopic(%q) = %q, %v", topic, id, err)
	}
	for _, bad := range []string{VehicleCredentialFilter, VehicleCredentialPrefix + "a/b", VehicleCredentialPrefix, "xpress/v1/vehicles/veh-1/fix"} {
		if _, err := ParseVehicleCredentialTopic(bad); err == nil {
			t.Errorf("ParseVehicleCredentialTopic(%q) accepted it", bad)
		}
	}
}

func TestVehicleCredential_Validate(t *testing.T) {
	good := VehicleCredential{VehicleID: "veh-1", Hash: "$argon2id$x", Version: 3}
	data, err := EncodeVehicleCredential(&good)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeVehicleCredential(data)
	if err != nil || *back != good {
		t.Fatalf("round trip = %+v, %v; want %+v", back, err, good)
	}
	for name, c := range map[string]VehicleCredential{
		"no version":         {VehicleID: "veh-1", Hash: "h"},
		"no hash":            {VehicleID: "veh-1", Version: 1},
		"revoked with hash":  {VehicleID: "veh-1", Hash: "h", Version: 1, Revoked: true},
		"bad vehicle":        {VehicleID: "veh/1", Hash: "h", Version: 1},
		"previous no expiry": {VehicleID: "veh-1", Hash: "h", PreviousHash: "p", Version: 1},
		"hash far too long":  {VehicleID: "veh-1", Hash: strings.Repeat("h", 600), Version: 1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
	if _, err := DecodeVehicleCredential([]byte("{")); err == nil {
		t.Error("DecodeVehicleCredential accepted broken JSON")
	}
}
