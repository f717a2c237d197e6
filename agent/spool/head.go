package spool

import "github.com/xpress-ops/tower/protocol"

// LastSeq returns the sequence number of the newest record appended to
// lane, or 0 when none was. The uplink compares it with a batch's last
// record to tell the hub whether more records wait behind the batch.
func (s *Spool) LastSeq(lane protocol.Lane) uint64 {
	s.statsMu.RLock()
	defer s.statsMu.RUnlock()
	st, ok := s.lanes[lane]
	if !ok || st.NextSeq == 0 {
		return 0
	}
	return st.NextSeq - 1
}
