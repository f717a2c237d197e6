package embedded

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
)

// A file written before presses were recorded keeps only each incident's
// first press, and its redelivery must still not count as a press.
func TestStore_RedeliveryWithoutPressIndex(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	pressed := storetest.Epoch.Add(-time.Minute)
	commit(t, s, storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", pressed)))
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketIncidentPresses); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucketIncidentPresses)
		return err
	}); err != nil {
		t.Fatalf("empty the press index: %v", err)
	}

	res := commit(t, s, storetest.NewBatch(storetest.SOSRecord(2, "veh-1", "sos-1", pressed)))
	if c := res.Incidents[0]; c.Event.Type != store.EventRedelivered || c.Incident.Presses != 1 {
		t.Errorf("redelivery without the press index: event %s presses %d, want %s and 1", c.Event.Type, c.Incident.Presses, store.EventRedelivered)
	}
}

// Agent records are not vehicle messages: they leave the vehicle's
// last-seen time alone.
func TestStore_AgentRecordsLeaveVehicleSeen(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	commit(t, s, storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch)))
	later := storetest.Epoch.Add(time.Hour)
	commit(t, s, storetest.NewBatch(
		storetest.AckRecord(2, "veh-1", "sos-1", "Maria", later),
		storetest.NotifiedRecord(3, "veh-1", "sos-1", store.ChannelSMS, "+639171234567", "SM-1", "", later),
	))
	err := s.db.View(func(tx *bolt.Tx) error {
		var v vehicleValue
		if err := json.Unmarshal(tx.Bucket(bucketVehicles).Get([]byte("veh-1")), &v); err != nil {
			return err
		}
		if !fromMicros(v.LastSeen).Equal(storetest.Epoch) {
			t.Errorf("veh-1 last seen %s, want the SOS's %s", fromMicros(v.LastSeen), storetest.Epoch)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
}

func TestStore_DispatchMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := openStore(t, Config{Registerer: reg})
	pressed := storetest.Epoch.Add(-time.Minute)
	res := commit(t, s, storetest.NewBatch(
		storetest.SOSRecord(1, "veh-1", "sos-1", pressed),
		storetest.SOSRecord(2, "veh-1", "sos-1", pressed),
		storetest.AckRecord(3, "veh-1", "sos-x", "Maria", storetest.Epoch),
		storetest.NotifiedRecord(4, "veh-1", "sos-1", "pager", "123", "", "", storetest.Epoch),
	))
	id := res.Incidents[0].Incident.ID
	ctx := testContext(t)
	if _, _, err := s.EscalateIncident(ctx, store.Escalation{IncidentID: id, Level: 1}); err != nil {
		t.Fatal(err)
	}
	s.EscalateIncident(ctx, store.Escalation{IncidentID: id, Level: 1})           //nolint:errcheck // counted as a conflict
	s.ClaimNotification(ctx, 42, storetest.Epoch, storetest.Epoch.Add(time.Hour)) //nolint:errcheck // counted as not found
	s.SaveContact(ctx, store.Contact{Name: "x"})                                  //nolint:errcheck // counted as invalid

	for _, c := range []struct{ op, result string }{
		{"escalate", "ok"}, {"escalate", "conflict"}, {"claim", "not_found"}, {"save_contact", "invalid"},
	} {
		if got := testutil.ToFloat64(s.metrics.dispatchOps.WithLabelValues(c.op, c.result)); got != 1 {
			t.Errorf("dispatch operations (%s, %s) = %v, want 1", c.op, c.result, got)
		}
	}
	if got := testutil.ToFloat64(s.metrics.redelivered); got != 1 {
		t.Errorf("redelivered = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.agentRecordsSkipped.WithLabelValues("sos_ack", "unmatched")); got != 1 {
		t.Errorf("agent records skipped (sos_ack, unmatched) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.agentRecordsSkipped.WithLabelValues("sos_notified", "invalid")); got != 1 {
		t.Errorf("agent records skipped (sos_notified, invalid) = %v, want 1", got)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
