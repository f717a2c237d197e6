package embedded

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// checkConsistent opens the closed store file at path read-only and
// reports every broken invariant of the layout. It runs bbolt's page
// checks and checks that fixes and index entries match one to one, that
// each incident has its opened entry and, exactly when active, its active
// entry, that SOS ids and events point at existing incidents, and that
// bucket sequences are at or past every id in use.
func checkConsistent(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("open %s for the consistency check: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		errs = append(errs, checkFixes(tx)...)
		errs = append(errs, checkIncidents(tx)...)
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("store file %s is inconsistent:\n%v", path, err)
	}
}

func checkFixes(tx *bolt.Tx) []error {
	var errs []error
	fixes, index, latest := tx.Bucket(bucketFixes), tx.Bucket(bucketFixesByTime), tx.Bucket(bucketLatest)
	maxUnique := uint64(0)
	err := fixes.ForEach(func(k, v []byte) error {
		sep := bytes.IndexByte(k, 0)
		if sep < 0 || len(k) != sep+17 {
			errs = append(errs, fmt.Errorf("fix key %x has no vehicle prefix and 16-byte suffix", k))
			return nil
		}
		vehicle, ts, unique := string(k[:sep]), readTime(k[sep+1:]), binary.BigEndian.Uint64(k[sep+9:])
		maxUnique = max(maxUnique, unique)
		f, err := decodeFix(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("fix %x: %w", k, err))
		case f.VehicleID != vehicle || !f.Fix.Time.Equal(ts):
			errs = append(errs, fmt.Errorf("fix %x holds vehicle %s at %s", k, f.VehicleID, f.Fix.Time))
		}
		if index.Get(fixIndexKey(vehicle, ts, unique)) == nil {
			errs = append(errs, fmt.Errorf("fix %x has no fixes_by_time entry", k))
		}
		return nil
	})
	errs = append(errs, err)
	if n, m := fixes.Stats().KeyN, index.Stats().KeyN; n != m {
		errs = append(errs, fmt.Errorf("%d fixes but %d fixes_by_time entries", n, m))
	}
	if fixes.Sequence() < maxUnique {
		errs = append(errs, fmt.Errorf("fixes sequence %d is below the unique number %d in use", fixes.Sequence(), maxUnique))
	}
	err = latest.ForEach(func(k, v []byte) error {
		if f, err := decodeFix(v); err != nil || f.VehicleID != string(k) {
			errs = append(errs, fmt.Errorf("latest position of %s: vehicle %q, %v", k, f.VehicleID, err))
		}
		return nil
	})
	return append(errs, err)
}

func checkIncidents(tx *bolt.Tx) []error {
	var errs []error
	incidents := tx.Bucket(bucketIncidents)
	byOpened, activeIdx := tx.Bucket(bucketIncidentsByOpened), tx.Bucket(bucketIncidentsActive)
	sosIdx, events := tx.Bucket(bucketIncidentSOS), tx.Bucket(bucketIncidentEvents)
	maxID, activeCount := int64(0), 0
	err := incidents.ForEach(func(k, v []byte) error {
		inc, err := decodeIncident(v)
		if err != nil || len(k) != 8 || inc.ID != int64(binary.BigEndian.Uint64(k)) {
			errs = append(errs, fmt.Errorf("incident %x: id %d, %v", k, inc.ID, err))
			return nil
		}
		maxID = max(maxID, inc.ID)
		if byOpened.Get(openedKey(inc.OpenedAt, inc.ID)) == nil {
			errs = append(errs, fmt.Errorf("incident %d has no incidents_by_opened entry", inc.ID))
		}
		hasActive := activeIdx.Get(activeKey(inc.VehicleID, inc.ReceivedAt, inc.ID)) != nil
		if hasActive != inc.State.Active() {
			errs = append(errs, fmt.Errorf("incident %d in state %s: incidents_active entry %v", inc.ID, inc.State, hasActive))
		}
		if inc.State.Active() {
			activeCount++
		}
		// An SOS id maps to its incident, or, once the incident is closed,
		// to a later incident that the id opened or joined after the close.
		if v := sosIdx.Get(sosKey(inc.VehicleID, inc.SOSID)); v == nil {
			errs = append(errs, fmt.Errorf("incident %d: its SOS id %s maps to nothing", inc.ID, inc.SOSID))
		} else if mapped := int64(binary.BigEndian.Uint64(v)); mapped != inc.ID && (inc.State.Active() || mapped < inc.ID) {
			errs = append(errs, fmt.Errorf("incident %d (%s): its SOS id %s maps to incident %d", inc.ID, inc.State, inc.SOSID, mapped))
		}
		c := events.Cursor()
		if k, _ := c.Seek(u64(uint64(inc.ID))); k == nil || !bytes.HasPrefix(k, u64(uint64(inc.ID))) {
			errs = append(errs, fmt.Errorf("incident %d has no events", inc.ID))
		}
		return nil
	})
	errs = append(errs, err)
	if n, m := incidents.Stats().KeyN, byOpened.Stats().KeyN; n != m {
		errs = append(errs, fmt.Errorf("%d incidents but %d incidents_by_opened entries", n, m))
	}
	if n := activeIdx.Stats().KeyN; n != activeCount {
		errs = append(errs, fmt.Errorf("%d active incidents but %d incidents_active entries", activeCount, n))
	}
	if incidents.Sequence() < uint64(maxID) {
		errs = append(errs, fmt.Errorf("incidents sequence %d is below the id %d in use", incidents.Sequence(), maxID))
	}

	err = sosIdx.ForEach(func(k, v []byte) error {
		id := int64(binary.BigEndian.Uint64(v))
		inc, err := decodeIncident(incidents.Get(v))
		if err != nil || !bytes.HasPrefix(k, vehiclePrefix(inc.VehicleID)) {
			errs = append(errs, fmt.Errorf("SOS id %q maps to incident %d of vehicle %s: %v", k, id, inc.VehicleID, err))
		}
		return nil
	})
	errs = append(errs, err)

	maxEvent := int64(0)
	err = events.ForEach(func(k, v []byte) error {
		ev, err := decodeEvent(v)
		if err != nil || len(k) != 16 || !bytes.Equal(k, eventKey(ev.IncidentID, ev.ID)) || incidents.Get(k[:8]) == nil {
			errs = append(errs, fmt.Errorf("event %x: %+v, %v", k, ev, err))
			return nil
		}
		maxEvent = max(maxEvent, ev.ID)
		if ev.Type == "" || ev.Actor == "" {
			errs = append(errs, fmt.Errorf("event %d of incident %d lacks a type or actor", ev.ID, ev.IncidentID))
		}
		return nil
	})
	errs = append(errs, err)
	if events.Sequence() < uint64(maxEvent) {
		errs = append(errs, fmt.Errorf("incident_events sequence %d is below the id %d in use", events.Sequence(), maxEvent))
	}
	return errs
}
