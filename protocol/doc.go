// Package protocol defines the wire formats of Xpress Ops Tower: the JSON
// payloads vehicles publish to an agent, the MQTT topic names, and the
// batch envelope and acknowledgement exchanged between agent and hub.
//
// The package does no I/O. Decoders validate as they decode, so a value
// returned without error is safe to store.
package protocol
