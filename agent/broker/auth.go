package broker

import (
	"fmt"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/protocol"
)

// VehicleAuthenticator checks a vehicle's credentials at CONNECT. The
// broker has already checked that vehicleID (the MQTT username) is a
// valid vehicle id. A non-nil error rejects the connection.
type VehicleAuthenticator interface {
	Authenticate(vehicleID string, password []byte) error
}

// AllowAllVehicles accepts any password. It is the development default
// until per-vehicle credentials exist.
type AllowAllVehicles struct{}

// Authenticate accepts every vehicle.
func (AllowAllVehicles) Authenticate(string, []byte) error { return nil }

var _ VehicleAuthenticator = AllowAllVehicles{}

// vehicleOf returns the vehicle id of an authenticated client: its MQTT username.
func vehicleOf(cl *mqtt.Client) string { return string(cl.Properties.Username) }

// ownsTopic reports whether topic (or filter) lies under the vehicle's own prefix.
func ownsTopic(vehicle, topic string) bool {
	return strings.HasPrefix(topic, protocol.VehiclePrefix+vehicle+"/")
}

// OnConnectAuthenticate accepts a client whose username is a valid vehicle
// id, whose password the Authenticator accepts, whose will message (if
// any) stays under its own prefix, and whose client id no other vehicle
// holds a session under. A rejected client gets CONNACK "bad user name or
// password" (0x04 in MQTT 3.1.1, 0x86 in MQTT 5).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	vehicle := string(pk.Connect.Username)
	log := h.log.With("vehicle", vehicle, "client", cl.ID, "remote", cl.Net.Remote)

	if err := protocol.ValidateVehicleID(vehicle); err != nil {
		h.metrics.rejects.WithLabelValues(reasonAuth).Inc()
		log.Warn("vehicle connection rejected: username is not a valid vehicle id", "error", err)
		return false
	}
	if err := h.cfg.Authenticator.Authenticate(vehicle, pk.Connect.Password); err != nil {
		h.metrics.rejects.WithLabelValues(reasonAuth).Inc()
		log.Warn("vehicle connection rejected: authentication failed", "error", err)
		return false
	}
	if pk.Connect.WillFlag && !ownsTopic(vehicle, pk.Connect.WillTopic) {
		h.metrics.rejects.WithLabelValues(reasonACL).Inc()
		log.Warn("vehicle connection rejected: will topic is outside the vehicle's prefix", "topic", pk.Connect.WillTopic)
		return false
	}
	// A session taken over by client id would hand this vehicle the other
	// vehicle's subscriptions and in-flight messages.
	if existing, ok := h.server.Clients.Get(cl.ID); ok && vehicleOf(existing) != vehicle {
		h.metrics.rejects.WithLabelValues(reasonClientID).Inc()
		log.Warn("vehicle connection rejected: another vehicle holds a session with this client id", "holder", vehicleOf(existing))
		return false
	}
	log.Debug("vehicle connected", "protocol_version", pk.ProtocolVersion)
	return true
}

// OnACLCheck confines each vehicle to topics under its own prefix
// xpress/v1/vehicles/{id}/, for subscribing and for receiving.
//
// Publishing: an MQTT 5 client publishing outside its prefix gets PUBACK
// 0x87 (not authorized) from mochi. For older protocol versions mochi
// would disconnect the client instead, which makes it redeliver the same
// message forever, so the write check passes here and OnPublish
// acknowledges and discards the message.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	vehicle := vehicleOf(cl)
	if ownsTopic(vehicle, topic) {
		return true
	}
	if write {
		if cl.Properties.ProtocolVersion < 5 {
			return true
		}
		h.metrics.rejects.WithLabelValues(reasonACL).Inc()
		h.log.Warn("vehicle message rejected", "vehicle", vehicle, "topic", topic, "reason", reasonACL,
			"reason_code", fmt.Sprintf("0x%02x", packets.ErrNotAuthorized.Code), "error", "topic is outside the vehicle's prefix")
		return false
	}
	h.metrics.rejects.WithLabelValues(reasonACLSubscribe).Inc()
	h.log.Warn("subscription rejected: filter is outside the vehicle's prefix", "vehicle", vehicle, "filter", topic, "reason", reasonACLSubscribe)
	return false
}
