package embedded

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Cursor returns the last committed sequence number of an agent's spool
// lane, or 0 when nothing was committed from that spool. The spool id is
// cleaned as CommitBatch cleans it.
func (s *Store) Cursor(ctx context.Context, agentID, spoolID string, lane protocol.Lane) (uint64, error) {
	var seq uint64
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCursors)
		if b == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrCorrupt, bucketCursors)
		}
		var err error
		seq, err = decodeCursor(b.Get(cursorKey(agentID, store.CleanText(spoolID), lane)))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read cursor of agent %s lane %s: %w", agentID, lane, err)
	}
	return seq, nil
}

// LatestPositions returns each vehicle's fix with the newest fix time,
// ordered by vehicle id (byte order), with its last reported online
// state. A vehicle that sent only statuses has no position. It reads
// readPageSize vehicles per read transaction.
func (s *Store) LatestPositions(ctx context.Context) ([]store.Position, error) {
	var (
		out  []store.Position
		next []byte // the first key of the next page, nil at the start
		done bool
	)
	for !done {
		err := s.view(ctx, func(tx *bolt.Tx) error {
			latest, status := tx.Bucket(bucketLatest), tx.Bucket(bucketStatus)
			if latest == nil || status == nil {
				return fmt.Errorf("%w: latest or status bucket missing", ErrCorrupt)
			}
			c := latest.Cursor()
			k, v := c.First()
			if next != nil {
				k, v = c.Seek(next)
			}
			for n := 0; k != nil; n++ {
				if n == readPageSize {
					next = bytes.Clone(k)
					return nil
				}
				f, err := decodeFix(v)
				if err != nil {
					return fmt.Errorf("latest position of vehicle %s: %w", k, err)
				}
				p := store.Position{VehicleID: f.VehicleID, AgentID: f.AgentID, Region: f.Region, Fix: f.Fix, ReceivedAt: f.ReceivedAt}
				if sv := status.Get(k); sv != nil {
					st, err := decodeStatus(sv)
					if err != nil {
						return fmt.Errorf("status of vehicle %s: %w", k, err)
					}
					p.Online = &st.Online
				}
				out = append(out, p)
				k, v = c.Next()
			}
			done = true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read latest positions: %w", err)
		}
	}
	return out, nil
}

// Fixes returns a vehicle's fixes with fix time in [from, to), oldest
// first, at most limit of them. A limit of zero or less means
// DefaultFixLimit. Fixes with the same time come in the order they were
// stored. It reads readPageSize fixes per read transaction.
func (s *Store) Fixes(ctx context.Context, vehicleID string, from, to time.Time, limit int) ([]store.StoredFix, error) {
	if limit <= 0 {
		limit = DefaultFixLimit
	}
	// No stored vehicle has an invalid id, and one with 0x00 in it would
	// match keys of another vehicle.
	if protocol.ValidateVehicleID(vehicleID) != nil || !from.Before(to) {
		if err := s.Ping(ctx); err != nil {
			return nil, fmt.Errorf("read fixes of vehicle %s: %w", vehicleID, err)
		}
		return nil, nil
	}
	from, to = clampTime(store.Time(from)), clampTime(store.Time(to))
	prefix := vehiclePrefix(vehicleID)
	next := appendTime(bytes.Clone(prefix), from)
	end := appendTime(bytes.Clone(prefix), to)

	var out []store.StoredFix
	for next != nil && len(out) < limit {
		err := s.view(ctx, func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketFixes)
			if b == nil {
				return fmt.Errorf("%w: bucket %s missing", ErrCorrupt, bucketFixes)
			}
			c := b.Cursor()
			k, v := c.Seek(next)
			next = nil
			for n := 0; k != nil && bytes.Compare(k, end) < 0 && len(out) < limit; n++ {
				if n == readPageSize {
					next = bytes.Clone(k)
					return nil
				}
				f, err := decodeFix(v)
				if err != nil {
					return fmt.Errorf("fix %x: %w", k, err)
				}
				out = append(out, f)
				k, v = c.Next()
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read fixes of vehicle %s: %w", vehicleID, err)
		}
	}
	return out, nil
}

// clampTime limits t to the storable range, so a query bound far out of
// it still orders right against stored keys.
func clampTime(t time.Time) time.Time {
	switch {
	case t.Before(minStorableTime):
		return minStorableTime
	case t.After(maxStorableTime):
		return maxStorableTime
	}
	return t
}
