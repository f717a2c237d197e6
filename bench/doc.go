// Package bench is the load tool of Xpress Ops Tower, run as `xpress bench
// <scenario>`. Each scenario starts what it needs on loopback, with ports
// chosen by the kernel. The hub and agents run in this process, with
// three exceptions: the fanout scenario's hub is an `xpress hub`
// subprocess, so that its memory can be measured apart from the clients;
// the sos-burst scenario's agent is an `xpress agent` subprocess, so that
// no process holds both ends of 10,000 connections; and edge runs its
// agent as a subprocess when asked to. A scenario that uses
// PostgreSQL creates a fresh database on the server it is given and drops
// it afterwards.
//
// Load is open-loop. Every message has a send time fixed before the run
// starts, and its latency is measured from that scheduled time, not from
// the moment it was actually written. A stalled broker or a stalled
// generator therefore shows up as latency instead of a quietly lower send
// rate. Latencies go into HdrHistograms (github.com/HdrHistogram/hdrhistogram-go)
// with three significant digits.
//
// Vehicles are real paho MQTT clients, and operators are real WebSocket
// clients of the hub's /api/v1/stream. The scenarios:
//
//	edge         fixes/s one agent accepts durably (QoS 1, PUBACK after fsync), against Mosquitto
//	e2e          fixes/s from vehicles through agent and hub into PostgreSQL, with the spool backlog watched
//	sos-latency  SOS publish to incident.opened on an operator WebSocket, under e2e load
//	sos-burst    N SOS from N vehicles within one second: time until all are stored and seen
//	drain        a backlog of N fixes drained into a hub that was down, with SOS latency meanwhile
//	fanout       N operator WebSockets and one incident: delivery time over clients, memory per connection
//	baseline     one INSERT per fix into PostgreSQL, the naive writer the e2e figure is compared with
package bench
