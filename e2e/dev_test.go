package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// xpress dev moves the replayed Munich trace to Manila, the city of its
// default region. The trace spans about 0.04° of latitude and 0.13° of
// longitude, so every replayed fix lies within 0.2° of Manila.
const (
	manilaLat, manilaLon = 14.5995, 120.9842
	relocatedSpread      = 0.2
)

type apiVehicles struct {
	Vehicles []struct {
		VehicleID string `json:"vehicle_id"`
		Fix       struct {
			Lat float64 `json:"lat"`
			Lon float64 `json:"lon"`
		} `json:"fix"`
	} `json:"vehicles"`
}

type apiIncidents struct {
	Incidents []struct {
		ID        int64  `json:"id"`
		SOSID     string `json:"sos_id"`
		VehicleID string `json:"vehicle_id"`
	} `json:"incidents"`
}

// xpress dev runs from an empty directory with nothing but the binary,
// creates an admin whose password it writes to data/admin-password, shows
// the signed-in admin replayed fixes and an SOS, stops on SIGINT and
// resumes its data and the same password.
func TestDev_RunsStopsAndResumes(t *testing.T) {
	trace, err := filepath.Abs("../testdata/traces/munich_car_barefoot_x0001-001.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	httpAddr := freeAddr(t)
	args := []string{"dev", "--data-dir", "data", "--http-addr", httpAddr, "--mqtt-addr", "127.0.0.1:0",
		"--trace", trace, "--vehicles", "4", "--speedup", "20", "--sos-every", "2s"}
	// XPRESS_DATABASE_URL must not leak in from the environment: this is the embedded store.
	env := []string{"XPRESS_DATABASE_URL="}
	base := "http://" + httpAddr

	dev := startProcessIn(t, "dev", dir, env, args...)
	waitHTTP(t, dev, base+"/readyz")
	// The file appears once the admin operator is stored, which may be
	// a moment after the HTTP server is ready.
	passwordFile := filepath.Join(dir, "data", "admin-password")
	waitFor(t, 30*time.Second, "the admin password file", func() bool {
		_, err := os.Stat(passwordFile)
		return err == nil
	})
	info, err := os.Stat(passwordFile)
	if err != nil {
		t.Fatalf("admin password file: %v", err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("admin password file mode = %o, want 600", mode)
	}
	password, err := os.ReadFile(passwordFile)
	if err != nil {
		t.Fatal(err)
	}
	signIn(t, base, "admin", strings.TrimSpace(string(password)))
	stream := openStream(t, httpAddr)

	var vehicles apiVehicles
	waitFor(t, 60*time.Second, "4 vehicles with positions", func() bool {
		getJSON(t, base+"/api/v1/vehicles", &vehicles)
		return len(vehicles.Vehicles) == 4
	})
	for _, v := range vehicles.Vehicles {
		if math.Abs(v.Fix.Lat-manilaLat) > relocatedSpread || math.Abs(v.Fix.Lon-manilaLon) > relocatedSpread {
			t.Errorf("vehicle %s at (%v, %v) is outside the Munich trace replayed in Manila", v.VehicleID, v.Fix.Lat, v.Fix.Lon)
		}
	}
	var incidents apiIncidents
	waitFor(t, 60*time.Second, "an SOS incident", func() bool {
		getJSON(t, base+"/api/v1/incidents", &incidents)
		return len(incidents.Incidents) > 0
	})
	waitFor(t, 30*time.Second, "fix and incident events on the WebSocket", func() bool {
		return stream.count("fix") > 0 && stream.count("incident.opened") > 0
	})
	var opened struct {
		Incident struct {
			SOSID string `json:"sos_id"`
		} `json:"incident"`
	}
	if err := json.Unmarshal(stream.ofType("incident.opened")[0].Data, &opened); err != nil {
		t.Fatal(err)
	}
	if opened.Incident.SOSID == "" {
		t.Error("incident.opened event has no SOS id")
	}

	dev.kill(syscall.SIGINT)
	if code := dev.exitCode(t); code != 0 {
		t.Fatalf("dev exited with code %d after SIGINT, want 0:\n%s", code, dev.output())
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "hub", "hub.db")); err != nil {
		t.Errorf("embedded store file: %v", err)
	}

	// Read what the first run stored, then restart and find it again.
	before := map[int64]string{}
	for _, inc := range incidents.Incidents {
		before[inc.ID] = inc.SOSID
	}
	dev = startProcessIn(t, "dev restarted", dir, env, args...)
	waitHTTP(t, dev, base+"/readyz")
	if again, err := os.ReadFile(passwordFile); err != nil || string(again) != string(password) {
		t.Errorf("admin password file after restart = %q, %v, want it unchanged", again, err)
	}
	signIn(t, base, "admin", strings.TrimSpace(string(password)))
	var after apiIncidents
	getJSON(t, base+"/api/v1/incidents?limit=1000", &after)
	found := map[int64]string{}
	for _, inc := range after.Incidents {
		found[inc.ID] = inc.SOSID
	}
	for id, sos := range before {
		if found[id] != sos {
			t.Errorf("incident %d (SOS %s) from the first run is missing after restart", id, sos)
		}
	}
	var vehiclesAfter apiVehicles
	getJSON(t, base+"/api/v1/vehicles", &vehiclesAfter)
	if len(vehiclesAfter.Vehicles) < len(vehicles.Vehicles) {
		t.Errorf("vehicles after restart = %d, want at least %d", len(vehiclesAfter.Vehicles), len(vehicles.Vehicles))
	}
	dev.kill(syscall.SIGINT)
	if code := dev.exitCode(t); code != 0 {
		t.Errorf("restarted dev exited with code %d after SIGINT, want 0", code)
	}
}
