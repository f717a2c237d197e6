package spool

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// keyAgentID is the meta key of the id of the agent that owns the spool.
var keyAgentID = []byte("agent_id")

// maxAgentIDBytes bounds Config.AgentID; agent ids are at most 64 bytes.
const maxAgentIDBytes = 64

// ErrOtherOwner means the spool file records another agent as its owner.
// Its records were received by that agent, and sending them under
// another id would relabel them at the hub.
var ErrOtherOwner = errors.New("spool belongs to another agent")

// OwnerError is the error Open returns for a spool file that records
// another agent as its owner. It matches ErrOtherOwner.
type OwnerError struct {
	// Path is the spool file.
	Path string
	// Owner is the agent id the file records.
	Owner string
	// AgentID is Config.AgentID, the agent that tried to open it.
	AgentID string
}

func (e *OwnerError) Error() string {
	return fmt.Sprintf("spool %s belongs to agent %q, not %q: its unsent records were received by %q, so open it as that agent",
		e.Path, e.Owner, e.AgentID, e.Owner)
}

// Is reports whether target is ErrOtherOwner.
func (e *OwnerError) Is(target error) bool { return target == ErrOtherOwner }

// Owner returns the agent id recorded in the spool file, empty before
// Open or when Config.AgentID is empty and the file records none.
func (s *Spool) Owner() string { return s.owner }

// checkOwner compares the agent id recorded in the meta bucket with
// Config.AgentID. A new file (created reports that initLayout just made
// its spool id) records Config.AgentID. An older file without the record
// is adopted: Open records Config.AgentID and logs it. An empty
// Config.AgentID checks and records nothing.
func (s *Spool) checkOwner(meta *bolt.Bucket, created bool) error {
	recorded := string(meta.Get(keyAgentID))
	s.owner = recorded
	if s.cfg.AgentID == "" {
		return nil
	}
	if recorded != "" {
		if recorded != s.cfg.AgentID {
			return &OwnerError{Path: s.cfg.Path, Owner: recorded, AgentID: s.cfg.AgentID}
		}
		return nil
	}
	if err := meta.Put(keyAgentID, []byte(s.cfg.AgentID)); err != nil {
		return fmt.Errorf("record the spool's agent id: %w", err)
	}
	s.owner = s.cfg.AgentID
	s.adopted = !created
	return nil
}
