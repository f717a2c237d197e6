package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/protocol"
)

// VehicleAuthenticator checks a vehicle's credentials at CONNECT. The
// broker has already checked that vehicleID (the MQTT username) is a
// valid vehicle id. A non-nil error rejects the connection: an error
// wrapping ErrVehicleNotAuthorized gets CONNACK "not authorized", any
// other "bad user name or password".
type VehicleAuthenticator interface {
	Authenticate(vehicleID string, password []byte) error
}

// RememberingAuthenticator is a VehicleAuthenticator that can tell
// cheaply, without its slow check, that it accepted the same vehicle and
// password recently and nothing changed since. The broker then lets the
// vehicle try even from an address that is blocked for failed
// authentications, so one bad device behind a carrier NAT address does
// not lock out the vehicles it shares the address with.
type RememberingAuthenticator interface {
	VehicleAuthenticator
	Remembers(vehicleID string, password []byte) bool
}

// Errors of a VehicleAuthenticator that choose the CONNACK reason code.
var (
	// ErrVehicleNotAuthorized means the vehicle has no credential or it
	// was revoked: CONNACK 0x87 "not authorized" in MQTT 5, 0x05 in MQTT 3.1.1.
	ErrVehicleNotAuthorized = errors.New("vehicle is not authorized")
	// ErrBadPassword means the password is missing or wrong: CONNACK 0x86
	// "bad user name or password" in MQTT 5, 0x04 in MQTT 3.1.1.
	ErrBadPassword = errors.New("bad vehicle password")
)

// AllowAllVehicles accepts any password. The agent uses it with
// --vehicle-auth off, which is allowed on loopback addresses only.
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

// Reasons of refusals at CONNECT, for xpress_agent_rejects_total: a wrong
// or missing password, an unknown or revoked vehicle, an address over its
// CONNECT rate, and an address blocked after too many failed
// authentications. A username that is not a vehicle id is reasonAuth.
const (
	reasonBadPassword   = "bad_password"
	reasonNotAuthorized = "vehicle_not_authorized"
	reasonConnectRate   = "connect_rate"
	reasonAuthBlocked   = "auth_failures_blocked"
)

// CONNACK codes of the refusals the hook chooses itself, in MQTT 5 and
// MQTT 3.1.1. mochi maps only some MQTT 5 codes to 3.1.1 ones, so the
// hook picks both.
var (
	codeBadPassword = [2]packets.Code{packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword}
	codeNotAuth     = [2]packets.Code{packets.ErrNotAuthorized, packets.Err3NotAuthorized}
	codeRate        = [2]packets.Code{packets.ErrConnectionRateExceeded, packets.Err3ServerUnavailable}
)

// OnConnect applies the per-address limits and authenticates the
// vehicle. It runs before OnConnectAuthenticate, and unlike it can choose
// the CONNACK code: it sends the CONNACK of a refusal itself and returns
// an error, which makes mochi close the connection.
//
//   - an address over its CONNECT rate, or blocked after too many failed
//     authentications: 0x9F "connection rate exceeded" (3.1.1: 0x03
//     "server unavailable"). A blocked address still gets in with a
//     vehicle and password the authenticator remembers accepting.
//   - a username that is not a vehicle id, or a wrong or missing
//     password: 0x86 "bad user name or password" (3.1.1: 0x04).
//   - an unknown or revoked vehicle: 0x87 "not authorized" (3.1.1: 0x05).
//
// Each refusal is counted by reason and logged with the vehicle id and
// remote address, never the password. Refusals by the per-address limits
// are logged at most once per address per minute.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	vehicle := string(pk.Connect.Username)
	addr := hostOf(cl.Net.Remote)
	log := h.log.With("vehicle", vehicle, "client", cl.ID, "remote", cl.Net.Remote)

	switch h.addrs.connect(addr) {
	case rateExceeded:
		h.metrics.rejects.WithLabelValues(reasonConnectRate).Inc()
		if h.addrs.shouldLog(addr) {
			log.Warn("vehicle connections refused: too many CONNECT attempts from this address; further refusals of the address are logged once a minute",
				"reason", reasonConnectRate, "rate_per_second", h.cfg.ConnectRate, "burst", h.cfg.ConnectBurst)
		}
		return h.rejectConnect(cl, codeRate)
	case blocked:
		if ra, ok := h.cfg.Authenticator.(RememberingAuthenticator); !ok || !ra.Remembers(vehicle, pk.Connect.Password) {
			h.metrics.rejects.WithLabelValues(reasonAuthBlocked).Inc()
			if h.addrs.shouldLog(addr) {
				log.Warn("vehicle connections refused: this address failed authentication too often; further refusals of the address are logged once a minute",
					"reason", reasonAuthBlocked)
			}
			return h.rejectConnect(cl, codeRate)
		}
	}

	if err := protocol.ValidateVehicleID(vehicle); err != nil {
		h.metrics.rejects.WithLabelValues(reasonAuth).Inc()
		log.Warn("vehicle connection rejected: username is not a valid vehicle id", "reason", reasonAuth, "error", err)
		h.authFailed(log, addr)
		return h.rejectConnect(cl, codeBadPassword)
	}
	if err := h.cfg.Authenticator.Authenticate(vehicle, pk.Connect.Password); err != nil {
		reason, code := reasonBadPassword, codeBadPassword
		if errors.Is(err, ErrVehicleNotAuthorized) {
			reason, code = reasonNotAuthorized, codeNotAuth
		}
		h.metrics.rejects.WithLabelValues(reason).Inc()
		log.Warn("vehicle connection rejected: authentication failed", "reason", reason, "error", err)
		h.authFailed(log, addr)
		return h.rejectConnect(cl, code)
	}
	return nil
}

// authFailed counts a failed authentication against addr and logs the
// start of a block.
func (h *hook) authFailed(log *slog.Logger, addr string) {
	if h.addrs.failed(addr) {
		log.Warn("address blocked after too many failed vehicle authentications", "address", addr,
			"failures_per_minute", h.cfg.AuthFailures, "blocked_for", h.cfg.AuthBlock)
	}
}

// rejectConnect sends the CONNACK of a rejection with the code for the
// client's protocol version and returns the error that makes mochi close
// the connection.
func (h *hook) rejectConnect(cl *mqtt.Client, codes [2]packets.Code) error {
	code := codes[0]
	if cl.Properties.ProtocolVersion < 5 {
		code = codes[1]
	}
	if err := h.server.SendConnack(cl, code, false, nil); err != nil {
		return fmt.Errorf("send CONNACK 0x%02x: %w", code.Code, err)
	}
	return codes[0]
}

// OnConnectAuthenticate runs after OnConnect accepted the vehicle. It
// accepts a client whose will message (if any) goes to a topic the
// vehicle may publish to (see willTopicAllowed) and whose client id no
// other vehicle holds a session under. A
// rejected client gets CONNACK "bad user name or password" from mochi
// (0x86 in MQTT 5, and 0x05 in MQTT 3.1.1 by mochi's mapping).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	vehicle := string(pk.Connect.Username)
	log := h.log.With("vehicle", vehicle, "client", cl.ID, "remote", cl.Net.Remote)

	if pk.Connect.WillFlag {
		if err := willTopicAllowed(vehicle, pk.Connect.WillTopic); err != nil {
			h.metrics.rejects.WithLabelValues(reasonACL).Inc()
			log.Warn("vehicle connection rejected: the will topic is not one the vehicle may publish to",
				"topic", pk.Connect.WillTopic, "reason", reasonACL, "error", err)
			return false
		}
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

// willTopicAllowed returns nil when topic is one of the vehicle's own
// topics it may publish to under the device contract: fix, sos,
// sos/cancel or status. A will on an SOS state topic is refused: mochi
// publishes a will without an ACL check, and only the agent writes the
// states vehicles trust.
func willTopicAllowed(vehicle, topic string) error {
	vt, err := protocol.ParseVehicleTopic(topic)
	if err != nil {
		return err
	}
	if vt.VehicleID != vehicle {
		return fmt.Errorf("%w: will topic %q belongs to vehicle %q", protocol.ErrUnknownTopic, topic, vt.VehicleID)
	}
	if vt.Kind == protocol.TopicSOSState {
		return fmt.Errorf("%w: will topic %q is an SOS state topic, written only by the agent", protocol.ErrUnknownTopic, topic)
	}
	return nil
}

// OnWill drops the retain flag of a vehicle's will message before mochi
// publishes it. The device contract has vehicles set {"online":false} on
// their status topic as will, often retained like their status; the
// agent stores the will in the spool either way (OnWillSent), and a
// message a vehicle leaves behind when it drops must not stay on the
// broker for later subscribers.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain {
		h.log.Debug("vehicle will message published without its retain flag", "vehicle", vehicleOf(cl),
			"client", cl.ID, "topic", will.TopicName)
		will.Retain = false
	}
	return will, nil
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
