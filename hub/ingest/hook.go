package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/tlsconfig"
	"github.com/xpress-ops/tower/protocol"
)

// Reasons a batch is rejected, as metric labels. Decode failures use
// protocol.Reason.
const (
	reasonAgentMismatch    = "agent_mismatch"
	reasonStoreUnavailable = "store_unavailable"
	reasonStoreError       = "store_error"
	reasonPrevMissing      = "prev_missing"
	// reasonRetained: the publish had the retain flag set.
	reasonRetained = "retained"
)

// maxAckErrorLength bounds the error text sent back in an Ack.
const maxAckErrorLength = 500

// hook connects the broker to the Server: authentication, ACL, connection
// tracking and batch handling.
type hook struct {
	mqtt.HookBase
	server *Server
}

func (h *hook) ID() string { return "xpress-ingest" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablish,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnPublish,
	}, []byte{b})
}

// OnConnectAuthenticate accepts a connection whose username is a valid
// agent id, whose password the Authenticator accepts and which sets no
// will message.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	s := h.server
	agentID := string(cl.Properties.Username)
	if err := protocol.ValidateAgentID(agentID); err != nil {
		s.metrics.connectionsRejected.WithLabelValues(reasonInvalidAgentID).Inc()
		s.log.Warn("agent connection rejected: username is not a valid agent id", "remote", cl.Net.Remote, "client", cl.ID, "error", err)
		return false
	}
	if s.cfg.ClientCAs != nil {
		names, ok := tlsconfig.PeerNames(cl.Net.Conn)
		if !ok || !slices.Contains(names, agentID) {
			s.metrics.connectionsRejected.WithLabelValues(reasonClientCertificate).Inc()
			s.log.Warn("agent connection rejected: mutual TLS is on and the connection has no client certificate for this agent id",
				"agent", agentID, "remote", cl.Net.Remote, "client", cl.ID, "certificate_names", names)
			return false
		}
	}
	// Mochi responds to a refusal with CONNACK "bad user name or password":
	// 0x86 for MQTT 5, 0x04 for MQTT 3.1.1. The token is never logged.
	if err := s.cfg.Authenticator.Authenticate(agentID, pk.Connect.Password); err != nil {
		reason := authFailureReason(err)
		s.metrics.connectionsRejected.WithLabelValues(reason).Inc()
		level := slog.LevelWarn
		if reason == reasonAuthStore {
			level = slog.LevelError
		}
		s.log.Log(context.Background(), level, "agent connection rejected: authentication failed",
			"agent", agentID, "remote", cl.Net.Remote, "client", cl.ID, "reason", reason, "error", err)
		return false
	}
	// Mochi publishes a will message without an ACL check or OnPublish,
	// and retains it if asked. A will could therefore write to the topics
	// only the hub may write to (vehicle credentials, operator lists, SOS
	// states, Acks), and every agent would apply it. The uplink never sets
	// a will, and an agent's batches are never forwarded, so every will is
	// refused.
	// The uplink's client ids are the agent id and its SOS link's id.
	// Any other would let one agent take over another agent's session and
	// knock its connections off.
	if cl.ID != agentID && cl.ID != protocol.SOSLinkClientID(agentID) {
		s.metrics.connectionsRejected.WithLabelValues(reasonClientID).Inc()
		s.log.Warn("agent connection rejected: client id must be the agent id or its SOS link's id",
			"agent", agentID, "remote", cl.Net.Remote, "client", cl.ID, "reason", reasonClientID)
		return false
	}
	if pk.Connect.WillFlag {
		s.metrics.connectionsRejected.WithLabelValues(reasonWillMessage).Inc()
		s.log.Warn("agent connection rejected: agents may not set a will message",
			"agent", agentID, "remote", cl.Net.Remote, "client", cl.ID, "topic", pk.Connect.WillTopic,
			"retain", pk.Connect.WillRetain, "reason", reasonWillMessage)
		return false
	}
	return true
}

// OnSessionEstablish runs after authentication and before mochi lets a
// connection take over the session of a live client with the same client
// id: mochi disconnects the old connection (MQTT 5 reason "session taken
// over"). The uplink uses the agent id as client id of its main link, and
// protocol.SOSLinkClientID of it for its SOS link, so two agents
// configured with one id keep taking the sessions from each other; this
// logs each takeover with both remote addresses. A connection with the
// same user name and another client id does not take over and both stay.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	s := h.server
	if old, ok := s.broker.Clients.Get(cl.ID); ok && old != cl && !old.Closed() {
		s.metrics.sessionTakeovers.Inc()
		s.log.Warn("agent connection takes over the session of a live connection with the same client id; two agents may share one id",
			"agent", string(cl.Properties.Username), "client", cl.ID, "remote", cl.Net.Remote,
			"old_agent", string(old.Properties.Username), "old_remote", old.Net.Remote)
	}
}

// OnACLCheck lets an agent publish only to its batch topic, and subscribe
// only to its ack topics (protocol.AckTopic and protocol.SOSAckTopic), to topics and filters under its SOS state
// prefix (protocol.SOSStateUpdatePrefix) and to the vehicle credentials
// the hub publishes to every agent (protocol.VehicleCredentialPrefix), and
// to its own operator list (protocol.AgentOperatorsTopic), never another
// agent's. Mochi also calls it with write false before delivering a
// message to a subscriber.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.server
	agentID := string(cl.Properties.Username)
	allowed := protocol.AckTopic(agentID)
	action := "subscribe"
	if write {
		allowed, action = protocol.BatchTopic(agentID), "publish"
	} else if strings.HasPrefix(topic, protocol.SOSStateUpdatePrefix(agentID)) || strings.HasPrefix(topic, protocol.VehicleCredentialPrefix) {
		return true
	}
	if topic == allowed {
		return true
	}
	if !write && topic == protocol.SOSAckTopic(agentID) {
		return true // the Acks of the agent's SOS link
	}
	if !write && topic == protocol.AgentOperatorsTopic(agentID) {
		return true // the operators who may sign in on the agent's page
	}
	s.metrics.aclDenied.WithLabelValues(action).Inc()
	s.log.Warn("agent denied access to topic", "agent", agentID, "topic", topic, "action", action)
	return false
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	agentID := string(cl.Properties.Username)
	h.server.log.Info("agent connected", "agent", agentID, "client", cl.ID, "remote", cl.Net.Remote)
	h.server.agentConnected(agentID)
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	agentID := string(cl.Properties.Username)
	h.server.log.Info("agent disconnected", "agent", agentID, "client", cl.ID, "remote", cl.Net.Remote, "error", err)
	h.server.agentDisconnected(agentID)
	// The connection's committer commits what it has queued and ends.
	h.server.stopCommitter(cl)
}

// OnPublish handles a batch from an agent. The ACL check already ensured
// the topic is the agent's own batch topic. The return value steers
// mochi's processPublish (mochi-mqtt v2.7.9, server.go):
//   - packets.CodeSuccessIgnore: the PUBACK is sent and the packet is
//     neither retained nor forwarded. The hook returns it for batches it
//     accepts (committed, on the SOS link, or queued for the connection's
//     committer, on any other), and for every rejection from an MQTT
//     3.1.1 client because that PUBACK has no reason code. The
//     application Ack carries the outcome.
//   - a packets.Code of 0x80 or more: for an MQTT 5 client, a PUBACK with
//     that reason code, and the packet is dropped.
//
// The hook never returns packets.ErrRejectPacket: that withholds the
// PUBACK, and the client would redeliver the same batch on reconnect
// although the Ack already settled it.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the hub's own Ack
	}
	s := h.server
	agentID := string(cl.Properties.Username)
	ackTopic := ackTopicOf(cl, agentID)
	s.metrics.batchesReceived.Inc()
	s.metrics.batchBytes.Observe(float64(len(pk.Payload)))

	// The uplink never retains a batch. A retained publish is refused
	// without an Ack before anything else, so that no path can leave an
	// agent's message retained on the hub.
	if pk.FixedHeader.Retain {
		s.metrics.batchesRejected.WithLabelValues(reasonRetained).Inc()
		s.log.Warn("retained publish from agent refused: agents may not retain messages",
			"agent", agentID, "client", cl.ID, "topic", pk.TopicName, "bytes", len(pk.Payload), "reason", reasonRetained)
		return pk, refusal(cl, pk, packets.ErrNotAuthorized)
	}

	b, err := protocol.DecodeBatch(pk.Payload)
	if err != nil {
		s.rejectInvalid(agentID, ackTopic, pk.Payload, err)
		return pk, refusal(cl, pk, packets.ErrPayloadFormatInvalid)
	}
	if b.AgentID != agentID {
		s.rejectImpostor(agentID, ackTopic, b)
		return pk, refusal(cl, pk, packets.ErrNotAuthorized)
	}

	l := link{agentID: agentID, ackTopic: ackTopic}
	if cl.ID == protocol.SOSLinkClientID(agentID) {
		// The SOS link commits here, before the PUBACK. Each SOS batch
		// is alone in its lane's window, so a queue would only add a
		// hand-over to its path.
		if err := s.commit(l, []queued{{b: b, bytes: len(pk.Payload)}}, nil); err != nil {
			return pk, refusal(cl, pk, packets.ErrUnspecifiedError)
		}
		return pk, packets.CodeSuccessIgnore
	}
	// The main link's batches go to its committer, and the PUBACK leaves
	// before the batch is committed. The uplink never takes a PUBACK for
	// a commit. It deletes records only on the application-level Ack,
	// which the committer sends after the commit (see the uplink's
	// package doc, Delivery and handleAck in agent/uplink/ack.go). Its
	// paho v1.5.1 client speaks MQTT 3.1.1, whose PUBACK has no reason
	// code. A failed commit gets an error Ack, as on the SOS link. Only
	// an MQTT 5 client sees a difference: a success PUBACK where the
	// SOS link's would carry the error's reason code.
	s.enqueue(cl, l, b, len(pk.Payload))
	return pk, packets.CodeSuccessIgnore
}

// ackTopicOf returns the topic for the Acks of the batches cl sends: the
// SOS link's own Ack topic for the agent's SOS link, so that its Acks
// never wait behind the SOS states and Acks the hub sends on the agent's
// other connection, and the agent's Ack topic for any other connection.
func ackTopicOf(cl *mqtt.Client, agentID string) string {
	if cl.ID == protocol.SOSLinkClientID(agentID) {
		return protocol.SOSAckTopic(agentID)
	}
	return protocol.AckTopic(agentID)
}

// refusal returns the hook error for a rejected publish pk: code for an
// MQTT 5 client's QoS 1 or 2 publish, and CodeSuccessIgnore otherwise (a
// plain PUBACK, or nothing at QoS 0). mochi v2.7.9 honours a reason code
// only for QoS 1 and 2: at QoS 0 it would go on to retain and forward the
// publish, while CodeSuccessIgnore drops it.
func refusal(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		return code
	}
	return packets.CodeSuccessIgnore
}

// rejectInvalid counts, logs and acknowledges a batch that failed to
// decode. When the envelope's spool and lane can still be read, the agent
// gets a permanent error Ack with its cursor, so it stops resending the
// batch. Otherwise no Ack is sent, because an Ack needs a lane.
func (s *Server) rejectInvalid(agentID, ackTopic string, payload []byte, decodeErr error) {
	reason := protocol.Reason(decodeErr)
	s.metrics.batchesRejected.WithLabelValues(reason).Inc()

	var envelope struct {
		SpoolID string        `json:"spool"`
		Lane    protocol.Lane `json:"lane"`
	}
	if err := json.Unmarshal(payload, &envelope); err != nil || envelope.SpoolID == "" || len(envelope.SpoolID) > 64 || !envelope.Lane.Valid() {
		s.log.Warn("invalid batch dropped without Ack: spool and lane unreadable",
			"agent", agentID, "bytes", len(payload), "reason", reason, "error", decodeErr)
		return
	}
	s.log.Warn("invalid batch rejected", "agent", agentID, "spool", envelope.SpoolID, "lane", envelope.Lane,
		"bytes", len(payload), "reason", reason, "error", decodeErr)
	s.sendAck(ackTopic, &protocol.Ack{
		AgentID:   agentID,
		SpoolID:   envelope.SpoolID,
		Lane:      envelope.Lane,
		Through:   s.cursor(agentID, envelope.SpoolID, envelope.Lane),
		Error:     ackError("invalid batch: " + decodeErr.Error()),
		Permanent: true,
	})
}

// rejectImpostor sends a permanent error Ack for a batch that names
// another agent than the connection's. Nothing of it is stored.
func (s *Server) rejectImpostor(agentID, ackTopic string, b *protocol.Batch) {
	s.metrics.batchesRejected.WithLabelValues(reasonAgentMismatch).Inc()
	s.log.Warn("batch rejected: it names another agent than the connection",
		"agent", agentID, "claimed_agent", b.AgentID, "spool", b.SpoolID, "lane", b.Lane, "seq", b.First())
	s.sendAck(ackTopic, &protocol.Ack{
		AgentID:   agentID,
		SpoolID:   b.SpoolID,
		Lane:      b.Lane,
		Through:   s.cursor(agentID, b.SpoolID, b.Lane),
		Error:     ackError(fmt.Sprintf("batch names agent %q but the connection is agent %q", b.AgentID, agentID)),
		Permanent: true,
	})
}

// commitFailed logs and counts a batch the store did not commit, b, which
// merges the agent batches of group, and with sendAcks sends error Acks
// for it. The Acks are not permanent, so the agent resends the batches
// later.
//
// The uplink first settles the batches that the Ack's Through covers,
// then applies the error to the lane's oldest batch still in flight. So
// each agent batch of the group past the cursor gets an error Ack of its
// own, and the group gets at least one. Committed alone, each would have
// had one too: the first failing, the others rejected for their Prev.
func (s *Server) commitFailed(agentID, ackTopic string, b *protocol.Batch, group []queued, err error, sendAcks bool) {
	reason, text := reasonStoreError, "commit failed"
	level := slog.LevelError
	switch {
	case errors.Is(err, store.ErrPrevMissing):
		// The batch before this one failed and is logged; this one waits for its resend.
		reason, text, level = reasonPrevMissing, "previous batch not committed", slog.LevelWarn
	case errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded):
		reason, text = reasonStoreUnavailable, "store unavailable"
	}
	s.metrics.batchesRejected.WithLabelValues(reason).Add(float64(len(group)))
	s.log.Log(context.Background(), level, "batch commit failed", "agent", agentID, "spool", b.SpoolID, "lane", b.Lane,
		"seq", b.First(), "last", b.Last(), "prev", b.Prev, "records", len(b.Records), "batches", len(group),
		"error_acks", sendAcks, "error", err)
	if !sendAcks {
		return
	}
	through := s.cursor(agentID, b.SpoolID, b.Lane)
	acks := 0
	for _, q := range group {
		if q.b.Last() > through {
			acks++
		}
	}
	for range max(acks, 1) {
		s.sendAck(ackTopic, &protocol.Ack{
			AgentID: agentID,
			SpoolID: b.SpoolID,
			Lane:    b.Lane,
			Through: through,
			Error:   ackError(text + "; resend later"),
		})
	}
}

// cursor returns the lane's committed sequence number for an error Ack,
// or 0 when the store cannot read it within CursorTimeout. Agents must
// therefore never move their acknowledged position backwards on an Ack.
func (s *Server) cursor(agentID, spoolID string, lane protocol.Lane) uint64 {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.CursorTimeout)
	defer cancel()
	seq, err := s.cfg.Store.Cursor(ctx, agentID, spoolID, lane)
	if err != nil {
		s.log.Warn("cursor unreadable for error Ack; sending through 0", "agent", agentID, "spool", spoolID, "lane", lane, "error", err)
		return 0
	}
	return seq
}

// sendAck publishes a to topic, one of the agent's Ack topics (see
// ackTopicOf), with QoS 1.
func (s *Server) sendAck(topic string, a *protocol.Ack) {
	payload, err := protocol.EncodeAck(a)
	if err == nil {
		err = s.broker.Publish(topic, payload, false, 1)
	}
	if err != nil {
		s.metrics.acksFailed.Inc()
		s.log.Error("sending Ack failed", "agent", a.AgentID, "spool", a.SpoolID, "lane", a.Lane, "through", a.Through, "error", err)
	}
}

func ackError(text string) string {
	if len(text) <= maxAckErrorLength {
		return text
	}
	return strings.ToValidUTF8(text[:maxAckErrorLength], "") + "…"
}
