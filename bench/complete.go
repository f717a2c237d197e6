package bench

import "fmt"

// This file holds each result's Problems: the counts that must add up for
// a run to count as complete. A missed speed target is reported by
// Targets and is not a problem. A lost message, SOS or incident is one.

// problems lists what did not add up in a load, each prefixed with label.
func (r LoadResult) problems(label string) []string {
	var p []string
	if r.Failed > 0 {
		p = append(p, fmt.Sprintf("%s: %d of %d messages failed, first: %s", label, r.Failed, r.Sent, r.FirstError))
	}
	if r.Acked+r.Failed < r.Scheduled {
		p = append(p, fmt.Sprintf("%s: %d of %d scheduled messages acked", label, r.Acked, r.Scheduled))
	}
	if r.ConnectionsLost > 0 {
		p = append(p, fmt.Sprintf("%s: %d vehicle connections lost", label, r.ConnectionsLost))
	}
	return p
}

// problems lists the SOS that were not sent, acked or seen.
func (f SOSFigures) problems(label string, wantAllSent bool) []string {
	var p []string
	if wantAllSent && f.Sent < f.Planned {
		p = append(p, fmt.Sprintf("%s: %d of %d SOS sent", label, f.Sent, f.Planned))
	}
	if f.Failed > 0 {
		p = append(p, fmt.Sprintf("%s: %d of %d SOS failed, first: %s", label, f.Failed, f.Sent, f.FirstError))
	}
	if f.Missing > 0 {
		p = append(p, fmt.Sprintf("%s: %d of %d acked SOS not seen on the operator stream", label, f.Missing, f.Acked))
	}
	return p
}

// Problems lists the fixes that were not acked or stored.
func (r *E2EResult) Problems() []string {
	p := r.Load.problems("load")
	if r.RowsInTable != r.Load.FixesAcked {
		p = append(p, fmt.Sprintf("%d rows in fixes for %d acknowledged fixes", r.RowsInTable, r.Load.FixesAcked))
	}
	if r.Baseline != nil {
		for _, bp := range r.Baseline.Problems() {
			p = append(p, "baseline: "+bp)
		}
	}
	return p
}

// Problems lists a search that sustained no rate or lost its vehicles'
// connections. Failed messages of a step above a broker's limit are the
// search's measurement, not a problem.
func (r *EdgeResult) Problems() []string {
	var p []string
	for _, s := range []*EdgeSearch{r.Agent, r.Other} {
		if s == nil {
			continue
		}
		if len(s.Steps) > 0 && s.MaxSustainedMsgsPerSec == 0 {
			p = append(p, fmt.Sprintf("%s sustained no offered rate", s.Broker))
		}
		var lost int64
		for _, st := range s.Steps {
			lost += st.Load.ConnectionsLost
		}
		if lost > 0 {
			p = append(p, fmt.Sprintf("%s: %d vehicle connections lost", s.Broker, lost))
		}
	}
	return p
}

// Problems lists the fixes and SOS that were lost.
func (r *SOSLatencyResult) Problems() []string {
	p := append(r.Load.problems("load"), r.SOS.problems("SOS", true)...)
	if r.Incidents != int64(r.SOS.Acked) {
		p = append(p, fmt.Sprintf("%d incidents stored for %d acked SOS", r.Incidents, r.SOS.Acked))
	}
	return p
}

// Problems lists the SOS that were not stored or seen.
func (r *SOSBurstResult) Problems() []string {
	p := r.SOS.problems("SOS", true)
	if r.Incidents != int64(r.SOS.Planned) {
		p = append(p, fmt.Sprintf("%d of %d incidents stored", r.Incidents, r.SOS.Planned))
	}
	if r.FirstError != "" {
		p = append(p, r.FirstError)
	}
	return p
}

// Problems lists the fixes and SOS that were lost. The drain stops sending
// SOS when the backlog is stored, so SOS not sent are no problem.
func (r *DrainResult) Problems() []string {
	p := r.Fill.problems("fill")
	if r.RowsInTable != r.Backlog {
		p = append(p, fmt.Sprintf("%d rows in fixes for a backlog of %d", r.RowsInTable, r.Backlog))
	}
	p = append(p, r.SOS.problems("SOS during the drain", false)...)
	if r.Incidents != int64(r.SOS.Acked) {
		p = append(p, fmt.Sprintf("%d incidents stored for %d acked SOS", r.Incidents, r.SOS.Acked))
	}
	return p
}

// Problems lists the clients that did not connect or receive the incident.
func (r *FanoutResult) Problems() []string {
	var p []string
	if r.Connected < r.Config.Clients {
		p = append(p, fmt.Sprintf("%d of %d operator WebSockets connected", r.Connected, r.Config.Clients))
	}
	if r.Missing > 0 || r.Received < r.Connected {
		p = append(p, fmt.Sprintf("%d of %d connected clients received the incident", r.Received, r.Connected))
	}
	return p
}

// Problems lists failed inserts and rows that do not match them.
func (r *BaselineResult) Problems() []string {
	var p []string
	if r.Failed > 0 {
		p = append(p, fmt.Sprintf("%d INSERTs failed, first: %s", r.Failed, r.FirstError))
	}
	// An INSERT cut off by the end of the run may still have committed, so
	// each worker may leave one row more than it counted.
	if r.RowsInTable < r.Inserted || r.RowsInTable > r.Inserted+int64(r.Config.Workers) {
		p = append(p, fmt.Sprintf("%d rows in fixes for %d inserted by %d %s", r.RowsInTable, r.Inserted, r.Config.Workers, plural(r.Config.Workers, "worker", "workers")))
	}
	return p
}
