package broker

import (
	"errors"

	"github.com/mochi-mqtt/server/v2/packets"
)

// errVehicleRevoked is the reason mochi's connection log gives for a
// connection DisconnectVehicle closed.
var errVehicleRevoked = errors.New("vehicle credential revoked")

// DisconnectVehicle closes every connection of vehicleID, for a vehicle
// whose credential was revoked, and returns how many it closed. An MQTT 5
// client gets DISCONNECT 0x87 "not authorized" first. MQTT 3.1.1 has no
// DISCONNECT from the server, so such a connection is only closed. A
// reconnect is then refused at CONNECT. It does nothing before Open.
func (b *Broker) DisconnectVehicle(vehicleID string) int {
	if b.server == nil {
		return 0
	}
	n := 0
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() || vehicleOf(cl) != vehicleID {
			continue
		}
		if cl.Properties.ProtocolVersion >= 5 {
			_ = b.server.DisconnectClient(cl, packets.ErrNotAuthorized)
		} else {
			cl.Stop(errVehicleRevoked)
		}
		n++
	}
	if n > 0 {
		b.metrics.rejects.WithLabelValues(reasonNotAuthorized).Add(float64(n))
		b.log.Warn("vehicle disconnected: its credential was revoked", "vehicle", vehicleID, "connections", n)
	}
	return n
}
