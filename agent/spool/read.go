package spool

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// Read returns the lane's records with sequence numbers after afterSeq,
// oldest first: at most max records (max <= 0: no count limit) and at
// most maxBytes of encoded records (maxBytes <= 0: no byte limit). The
// first record is returned even when it alone exceeds maxBytes, so one
// large record cannot stall its lane. The records are decoded copies,
// valid after the read transaction ends. The transaction lasts only as
// long as decoding the returned records, because a long read transaction
// stops bbolt from growing the file.
func (s *Spool) Read(lane protocol.Lane, afterSeq uint64, max int, maxBytes int) ([]protocol.Record, error) {
	if err := checkLane(lane); err != nil {
		return nil, err
	}
	recs, err := s.read(func(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket([]byte(lane)) }, afterSeq, max, maxBytes)
	if err != nil {
		return nil, fmt.Errorf("read %s records after %d: %w", lane, afterSeq, err)
	}
	return recs, nil
}

// ReadRejected returns records of lane that the hub rejected permanently,
// with the same limits as Read.
func (s *Spool) ReadRejected(lane protocol.Lane, afterSeq uint64, max int, maxBytes int) ([]protocol.Record, error) {
	if err := checkLane(lane); err != nil {
		return nil, err
	}
	recs, err := s.read(func(tx *bolt.Tx) *bolt.Bucket {
		return tx.Bucket(bucketRejected).Bucket([]byte(lane))
	}, afterSeq, max, maxBytes)
	if err != nil {
		return nil, fmt.Errorf("read rejected %s records after %d: %w", lane, afterSeq, err)
	}
	return recs, nil
}

func (s *Spool) read(bucket func(*bolt.Tx) *bolt.Bucket, afterSeq uint64, max, maxBytes int) ([]protocol.Record, error) {
	// A compaction replaces s.db and Close closes it, both under dbMu.
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if !s.running.Load() {
		return nil, ErrClosed
	}
	var recs []protocol.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		size := 0
		c := bucket(tx).Cursor()
		for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil; k, v = c.Next() {
			if max > 0 && len(recs) >= max {
				break
			}
			if maxBytes > 0 && len(recs) > 0 && size+len(v) > maxBytes {
				break
			}
			seq := binary.BigEndian.Uint64(k)
			// The decoder copies every string and byte slice out of v,
			// which bbolt reuses once the transaction ends.
			var rec protocol.Record
			if err := protocol.UnmarshalRecordJSON(v, &rec); err != nil {
				return fmt.Errorf("%w: decode record %d: %v", ErrCorrupt, seq, err)
			}
			rec.Seq = seq
			recs = append(recs, rec)
			size += len(v)
		}
		return nil
	})
	return recs, err
}
