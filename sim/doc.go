// Package sim simulates a fleet of vehicles for Xpress Ops Tower and
// doubles as a load generator for an agent's MQTT broker.
//
// Each simulated vehicle is its own MQTT client. It connects with a will
// message, reports itself online, then publishes GPS fixes and now and then
// an SOS in the device format of package protocol. Positions come from a
// recorded trace (LoadTrace) or from synthetic loops around Philippine
// cities (Synthetic). Publishing follows a schedule fixed in advance, never
// the broker's acknowledgements, and the latency of each message is
// measured from its scheduled send time to its PUBACK. A slow broker
// therefore shows up as latency instead of a lower send rate.
package sim
