package ingest

import (
	"sync"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// MaxCatchUp bounds how long after its last SOS-lane batch marked More
// an agent still counts as catching up, so an agent that goes away in
// the middle of its backlog does not hold the dispatcher back for long.
const MaxCatchUp = 30 * time.Second

// catchUp tracks, per agent, when it last committed an SOS-lane batch
// with more records behind it. The zero value is ready to use.
type catchUp struct {
	mu    sync.Mutex
	since map[string]time.Time
}

// noteCatchUp records, from b.More, whether b's agent has more SOS-lane
// records waiting after b.
func (s *Server) noteCatchUp(b *protocol.Batch) {
	if b.Lane != protocol.LaneSOS {
		return
	}
	c := &s.catchUp
	c.mu.Lock()
	defer c.mu.Unlock()
	if !b.More {
		delete(c.since, b.AgentID)
		return
	}
	if c.since == nil {
		c.since = make(map[string]time.Time)
	}
	c.since[b.AgentID] = time.Now()
}

// CatchingUp reports whether agentID's last SOS-lane batch, within
// MaxCatchUp, had More set: more SOS-lane records were waiting behind it. The
// agent's reports of what it did during an outage (local
// acknowledgements, notifications it sent) travel in that lane after
// the SOS they concern, so until the lane is drained the hub does not
// know them yet.
func (s *Server) CatchingUp(agentID string) bool {
	c := &s.catchUp
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.since[agentID]
	return ok && time.Since(at) < MaxCatchUp
}
