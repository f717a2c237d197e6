package ingest

// Inflight returns how many QoS 1 messages the hub sent to agentID's
// connection that the agent has not acknowledged yet, or 0 when the
// agent is not connected. The downlink reads it to pace its publishes,
// because mochi drops messages to a client past its in-flight quota.
func (s *Server) Inflight(agentID string) int {
	s.mu.Lock()
	broker := s.broker
	s.mu.Unlock()
	if broker == nil {
		return 0
	}
	// The uplink's main link, which receives the SOS states, uses the
	// agent id as its MQTT client id.
	cl, ok := broker.Clients.Get(agentID)
	if !ok || cl.Closed() {
		return 0
	}
	return cl.State.Inflight.Len()
}
