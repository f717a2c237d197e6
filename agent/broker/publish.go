package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// Reject reasons beyond protocol.Reason's labels, for xpress_agent_rejects_total.
const (
	reasonAuth         = "auth"
	reasonACL          = "acl"
	reasonACLSubscribe = "acl_subscribe"
	reasonClientID     = "client_id_in_use"
	reasonReadOnly     = "read_only_topic"
	reasonSpool        = "spool_error"
	reasonSpoolFull    = "spool_full"
	reasonPacketSize   = "packet_too_large"
	reasonWill         = "will_invalid"
	// reasonSOSRepaired counts SOS messages kept although parts of their
	// payload were damaged and dropped; the SOS itself is stored.
	reasonSOSRepaired = "sos_payload_repaired"
)

// maxReasonString bounds the MQTT 5 reason string sent back to a vehicle.
const maxReasonString = 200

// hook is the broker's mochi hook: authentication, ACL, and storing
// publishes in the spool.
type hook struct {
	mqtt.HookBase
	cfg     *Config
	log     *slog.Logger
	metrics *metrics
	limits  protocol.Limits
	server  *mqtt.Server
	// addrs are the per-address CONNECT limits.
	addrs *addrLimits
	// sosLog logs each stored SOS off the PUBACK's path.
	sosLog *offPathLog
}

// ID names the hook in mochi's logs.
func (h *hook) ID() string { return "xpress-vehicles" }

// Provides reports which mochi events the hook handles.
func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnPublish,
		mqtt.OnWill,
		mqtt.OnWillSent,
		mqtt.OnDisconnect,
	}, []byte{b})
}

// OnPublish validates a vehicle's message and appends its records to the
// spool before mochi acknowledges it. The returned error decides what
// mochi does (see processPublish in mochi v2.7.9's server.go):
//
//   - nil: the records are committed and fsynced; mochi sends the PUBACK.
//   - invalid message (bad topic, payload, or another vehicle's topic):
//     MQTT 5 with QoS > 0 gets a PUBACK with reason code 0x87, 0x90 or
//     0x99 and a reason string. Older protocol versions and QoS 0 get
//     packets.CodeSuccessIgnore, so the message is acknowledged and
//     discarded: a poison message must not be redelivered forever. (A
//     plain error would let mochi acknowledge and forward it.)
//   - spool full (spool.ErrFull: no room even after evicting GPS, or the
//     disk is full): MQTT 5 with QoS > 0 gets PUBACK 0x97 (quota
//     exceeded); everyone else gets packets.ErrRejectPacket, as below.
//   - other spool failure: MQTT 5 with QoS > 0 gets PUBACK 0x80
//     (unspecified error); everyone else gets packets.ErrRejectPacket,
//     which sends no PUBACK at all, so the vehicle keeps the message and
//     resends it.
//
// Every rejection is counted in xpress_agent_rejects_total and logged with
// the vehicle id. An SOS or SOS cancel the spool could not store is also
// counted in xpress_agent_sos_store_failures_total and logged at Error
// level with its SOS id.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the agent's own message, sent with Broker.Publish
	}
	start := time.Now()
	vehicle := vehicleOf(cl)
	// Only an MQTT 5 PUBACK can carry a reason code.
	withCode := cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0

	topic, err := protocol.ParseVehicleTopic(pk.TopicName)
	switch {
	case err != nil:
		return pk, h.reject(vehicle, pk, withCode, protocol.Reason(err), packets.ErrTopicNameInvalid, err)
	case topic.VehicleID != vehicle:
		err := fmt.Errorf("topic %q belongs to vehicle %s", pk.TopicName, topic.VehicleID)
		return pk, h.reject(vehicle, pk, withCode, reasonACL, packets.ErrNotAuthorized, err)
	case topic.Kind == protocol.TopicSOSState:
		err := fmt.Errorf("topic %q is written by the agent, not by vehicles", pk.TopicName)
		return pk, h.reject(vehicle, pk, withCode, reasonReadOnly, packets.ErrNotAuthorized, err)
	}

	recs, err := h.decode(vehicle, topic.Kind, pk.Payload)
	if err != nil {
		return pk, h.reject(vehicle, pk, withCode, protocol.Reason(err), packets.ErrPayloadFormatInvalid, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.AppendTimeout)
	defer cancel()
	if err := h.cfg.Spool.Append(ctx, recs); err != nil {
		return pk, h.storeFailed(cl, vehicle, pk, recs, withCode, err)
	}

	h.metrics.accepted.WithLabelValues(string(recs[0].Kind)).Inc()
	h.metrics.storeSeconds.Observe(time.Since(start).Seconds())
	if recs[0].Kind == protocol.KindSOS {
		s := recs[0].SOS
		level := slog.LevelInfo
		if s.PayloadError != "" {
			// The SOS is kept, but the device sends damaged messages.
			level = slog.LevelWarn
			h.metrics.rejects.WithLabelValues(reasonSOSRepaired).Inc()
		}
		h.sosLog.log(level, "SOS stored", "vehicle", vehicle, "sos", s.ID, "seq", recs[0].Seq,
			"id_assigned", s.IDAssigned, "has_location", s.HasLocation, "location_error", s.LocationError,
			"time_error", s.TimeError, "payload_error", s.PayloadError)
		if h.cfg.OnSOSStored != nil {
			h.cfg.OnSOSStored(recs[0])
		}
	}
	return pk, nil
}

// storeFailed counts and logs a publish the spool did not store and
// returns the error that makes mochi handle it as OnPublish documents.
func (h *hook) storeFailed(cl *mqtt.Client, vehicle string, pk packets.Packet, recs []protocol.Record, withCode bool, err error) error {
	reason, code := reasonSpool, packets.ErrUnspecifiedError.Code
	if errors.Is(err, spool.ErrFull) {
		reason, code = reasonSpoolFull, packets.ErrQuotaExceeded.Code
	}
	h.metrics.rejects.WithLabelValues(reason).Inc()

	sosLane := recs[0].Kind.Lane() == protocol.LaneSOS
	attrs := recordAttrs(vehicle, pk, recs, "reason", reason, slog.Any("error", err))
	switch {
	case sosLane:
		h.metrics.sosStoreFailures.WithLabelValues(reason).Inc()
		h.log.Error("SOS NOT STORED: spool write failed; the vehicle must resend", attrs...)
	case reason == reasonSpoolFull:
		// The spool logs refused GPS and status records, rate-limited.
		h.log.Debug("vehicle message not stored: spool full", attrs...)
	default:
		h.log.Error("vehicle message NOT stored: spool write failed", attrs...)
	}

	if withCode {
		return packets.Code{Code: code, Reason: "message not stored: " + reason}
	}
	// MQTT 3.1.1 has no negative PUBACK, and a client resends an
	// unacknowledged message only when it reconnects [MQTT-4.4.0-1]. Close
	// the connection so the device reconnects and resends, rather than
	// waiting forever for a PUBACK that will not come.
	if cl != nil && pk.FixedHeader.Qos > 0 {
		cl.Stop(fmt.Errorf("close connection so vehicle %s resends its unstored message: %w", vehicle, err))
	}
	return packets.ErrRejectPacket
}

// reject counts and logs a rejected publish and returns the error that
// makes mochi handle it as OnPublish documents.
func (h *hook) reject(vehicle string, pk packets.Packet, withCode bool, reason string, code packets.Code, err error) error {
	h.metrics.rejects.WithLabelValues(reason).Inc()
	h.log.Warn("vehicle message rejected",
		"vehicle", vehicle, "topic", pk.TopicName, "reason", reason, "qos", pk.FixedHeader.Qos,
		"reason_code", fmt.Sprintf("0x%02x", code.Code), "error", err)
	if !withCode {
		return packets.CodeSuccessIgnore
	}
	// mochi sends a packets.Code as the PUBACK reason code and its
	// Reason as the reason string. It must not be wrapped.
	msg := code.Reason + ": " + err.Error()
	if len(msg) > maxReasonString {
		msg = msg[:maxReasonString]
	}
	return packets.Code{Code: code.Code, Reason: msg}
}

// decode validates a payload and turns it into records stamped with the
// agent's receive time.
func (h *hook) decode(vehicle string, kind protocol.TopicKind, payload []byte) ([]protocol.Record, error) {
	now := h.cfg.Now().UTC()
	base := protocol.Record{VehicleID: vehicle, ReceivedAt: now}
	limits := h.limits
	limits.Now = func() time.Time { return now }

	switch kind {
	case protocol.TopicFix:
		fixes, err := protocol.DecodeFixes(payload, limits)
		if err != nil {
			return nil, err
		}
		recs := make([]protocol.Record, len(fixes))
		for i := range fixes {
			recs[i] = base
			recs[i].Kind = protocol.KindFix
			recs[i].Fix = &fixes[i]
		}
		return recs, nil
	case protocol.TopicSOS:
		sos, err := protocol.DecodeSOS(payload, limits, newSOSID)
		if err != nil {
			return nil, err
		}
		base.Kind, base.SOS = protocol.KindSOS, &sos
	case protocol.TopicSOSCancel:
		cancel, err := protocol.DecodeSOSCancel(payload)
		if err != nil {
			return nil, err
		}
		base.Kind, base.Cancel = protocol.KindSOSCancel, &cancel
	case protocol.TopicStatus:
		status, err := protocol.DecodeStatus(payload)
		if err != nil {
			return nil, err
		}
		base.Kind, base.Status = protocol.KindStatus, &status
	default:
		return nil, fmt.Errorf("%w: vehicles do not publish %s", protocol.ErrUnknownTopic, kind)
	}
	return []protocol.Record{base}, nil
}

// newSOSID makes an id for an SOS the vehicle sent without one.
func newSOSID() string {
	var raw [8]byte
	_, _ = rand.Read(raw[:]) // crypto/rand.Read never returns an error on Linux
	return "agent-" + hex.EncodeToString(raw[:])
}

// recordAttrs returns log attributes naming the vehicle, topic and, for
// an SOS or a cancel, the SOS id.
func recordAttrs(vehicle string, pk packets.Packet, recs []protocol.Record, extra ...any) []any {
	attrs := []any{"vehicle", vehicle, "topic", pk.TopicName, "records", len(recs)}
	if len(recs) > 0 {
		switch {
		case recs[0].SOS != nil:
			attrs = append(attrs, "sos", recs[0].SOS.ID)
		case recs[0].Cancel != nil:
			attrs = append(attrs, "sos", recs[0].Cancel.ID)
		}
	}
	return append(attrs, extra...)
}

// OnWillSent stores a vehicle's will message (usually its status
// {"online":false}) once mochi published it. The will topic was checked
// at CONNECT. Nothing is acknowledged here, so a failure is only logged
// and counted.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	vehicle := vehicleOf(cl)
	topic, err := protocol.ParseVehicleTopic(pk.TopicName)
	if err == nil && (topic.VehicleID != vehicle || topic.Kind == protocol.TopicSOSState) {
		err = fmt.Errorf("%w: will topic %q", protocol.ErrUnknownTopic, pk.TopicName)
	}
	var recs []protocol.Record
	if err == nil {
		recs, err = h.decode(vehicle, topic.Kind, pk.Payload)
	}
	if err != nil {
		h.metrics.rejects.WithLabelValues(reasonWill).Inc()
		h.log.Warn("vehicle will message not stored: invalid", "vehicle", vehicle, "topic", pk.TopicName, "error", err)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.AppendTimeout)
	defer cancel()
	if err := h.cfg.Spool.Append(ctx, recs); err != nil {
		reason := reasonSpool
		if errors.Is(err, spool.ErrFull) {
			reason = reasonSpoolFull
		}
		h.metrics.rejects.WithLabelValues(reason).Inc()
		h.log.Error("vehicle will message NOT stored: spool write failed",
			recordAttrs(vehicle, pk, recs, "reason", reason, slog.Any("error", err))...)
		return
	}
	h.metrics.accepted.WithLabelValues(string(recs[0].Kind)).Inc()
}

// OnDisconnect counts clients that mochi dropped for sending a packet
// larger than MaxPacketBytes.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.metrics.rejects.WithLabelValues(reasonPacketSize).Inc()
		h.log.Warn("vehicle disconnected: packet larger than the limit", "vehicle", vehicleOf(cl),
			"client", cl.ID, "limit_bytes", MaxPacketBytes)
	}
}
