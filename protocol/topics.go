package protocol

import (
	"fmt"
	"strings"
)

// Topic layout. A vehicle owns everything under VehiclePrefix + id + "/".
const (
	// VehiclePrefix starts every device topic.
	VehiclePrefix = "xpress/v1/vehicles/"
	// AgentPrefix starts every agent-to-hub topic.
	AgentPrefix = "xpress/v1/agents/"
)

// TopicKind names what a vehicle topic carries.
type TopicKind string

// The vehicle topics of the device contract.
const (
	TopicFix       TopicKind = "fix"
	TopicSOS       TopicKind = "sos"
	TopicSOSCancel TopicKind = "sos/cancel"
	TopicStatus    TopicKind = "status"
	TopicSOSState  TopicKind = "sos/state"
)

// VehicleTopic is a parsed vehicle topic.
type VehicleTopic struct {
	VehicleID string
	Kind      TopicKind
	// SOSID is set only for TopicSOSState.
	SOSID string
}

// ParseVehicleTopic splits a topic under VehiclePrefix into vehicle id and
// kind. It returns ErrUnknownTopic for anything outside the device contract.
func ParseVehicleTopic(topic string) (VehicleTopic, error) {
	rest, ok := strings.CutPrefix(topic, VehiclePrefix)
	if !ok {
		return VehicleTopic{}, fmt.Errorf("%w: %q is not under %s", ErrUnknownTopic, topic, VehiclePrefix)
	}
	id, tail, ok := strings.Cut(rest, "/")
	if !ok {
		return VehicleTopic{}, fmt.Errorf("%w: %q has no kind after the vehicle id", ErrUnknownTopic, topic)
	}
	if err := ValidateVehicleID(id); err != nil {
		return VehicleTopic{}, err
	}
	switch TopicKind(tail) {
	case TopicFix, TopicSOS, TopicSOSCancel, TopicStatus:
		return VehicleTopic{VehicleID: id, Kind: TopicKind(tail)}, nil
	}
	if sosID, ok := strings.CutPrefix(tail, "sos/"); ok {
		if sosID, ok = strings.CutSuffix(sosID, "/state"); ok {
			if err := ValidateSOSID(sosID); err != nil {
				return VehicleTopic{}, err
			}
			return VehicleTopic{VehicleID: id, Kind: TopicSOSState, SOSID: sosID}, nil
		}
	}
	return VehicleTopic{}, fmt.Errorf("%w: %q", ErrUnknownTopic, topic)
}

// VehicleTopicFor returns the topic of the given kind for one vehicle.
func VehicleTopicFor(vehicleID string, kind TopicKind) string {
	return VehiclePrefix + vehicleID + "/" + string(kind)
}

// SOSStateTopic returns the topic on which a vehicle hears the state of its SOS.
func SOSStateTopic(vehicleID, sosID string) string {
	return VehiclePrefix + vehicleID + "/sos/" + sosID + "/state"
}

// BatchTopic returns the topic an agent publishes its batches to.
func BatchTopic(agentID string) string { return AgentPrefix + agentID + "/batch" }

// AckTopic returns the topic on which the hub acknowledges an agent's batches.
func AckTopic(agentID string) string { return AgentPrefix + agentID + "/ack" }

// SOSLinkSuffix follows the agent id in the MQTT client id of the agent's
// SOS link, the uplink's second connection to the hub, which carries only
// the SOS lane. Agent ids cannot contain ':', so the client id is never
// another agent's.
const SOSLinkSuffix = ":sos"

// SOSLinkClientID returns the MQTT client id of an agent's SOS link.
func SOSLinkClientID(agentID string) string { return agentID + SOSLinkSuffix }

// SOSAckTopic returns the topic on which the hub acknowledges the batches
// an agent sends on its SOS link. The hub acknowledges batches sent on any
// other connection on AckTopic, so the SOS link's Acks do not queue behind
// the messages the hub sends to the main link.
func SOSAckTopic(agentID string) string { return AgentPrefix + agentID + "/sos-ack" }

// sosStateUpdateSegment follows the agent id in the hub-to-agent SOS state topics.
const sosStateUpdateSegment = "/sos-state/"

// SOSStateUpdateTopic returns the topic on which the hub sends an agent
// the state of one SOS of one of its vehicles:
// xpress/v1/agents/{agent_id}/sos-state/{vehicle_id}/{sos_id}.
func SOSStateUpdateTopic(agentID, vehicleID, sosID string) string {
	return AgentPrefix + agentID + sosStateUpdateSegment + vehicleID + "/" + sosID
}

// SOSStateUpdateFilter returns the topic filter that matches every
// SOSStateUpdateTopic of an agent.
func SOSStateUpdateFilter(agentID string) string {
	return AgentPrefix + agentID + sosStateUpdateSegment + "+/+"
}

// SOSStateUpdatePrefix returns the prefix shared by an agent's
// SOSStateUpdateTopic topics and its SOSStateUpdateFilter.
func SOSStateUpdatePrefix(agentID string) string {
	return AgentPrefix + agentID + sosStateUpdateSegment
}

// ParseSOSStateUpdateTopic returns the agent, vehicle and SOS ids of a
// SOSStateUpdateTopic topic.
func ParseSOSStateUpdateTopic(topic string) (agentID, vehicleID, sosID string, err error) {
	rest, ok := strings.CutPrefix(topic, AgentPrefix)
	if !ok {
		return "", "", "", fmt.Errorf("%w: %q is not under %s", ErrUnknownTopic, topic, AgentPrefix)
	}
	agentID, rest, ok = strings.Cut(rest, sosStateUpdateSegment)
	if !ok {
		return "", "", "", fmt.Errorf("%w: %q is not an SOS state topic", ErrUnknownTopic, topic)
	}
	vehicleID, sosID, ok = strings.Cut(rest, "/")
	if !ok || strings.Contains(sosID, "/") {
		return "", "", "", fmt.Errorf("%w: %q does not end in {vehicle_id}/{sos_id}", ErrUnknownTopic, topic)
	}
	if err := ValidateAgentID(agentID); err != nil {
		return "", "", "", err
	}
	if err := ValidateVehicleID(vehicleID); err != nil {
		return "", "", "", err
	}
	if err := ValidateSOSID(sosID); err != nil {
		return "", "", "", err
	}
	return agentID, vehicleID, sosID, nil
}

// ParseBatchTopic returns the agent id of a batch topic.
func ParseBatchTopic(topic string) (string, error) {
	rest, ok := strings.CutPrefix(topic, AgentPrefix)
	if !ok {
		return "", fmt.Errorf("%w: %q is not under %s", ErrUnknownTopic, topic, AgentPrefix)
	}
	id, ok := strings.CutSuffix(rest, "/batch")
	if !ok || strings.Contains(id, "/") {
		return "", fmt.Errorf("%w: %q is not an agent batch topic", ErrUnknownTopic, topic)
	}
	if err := ValidateAgentID(id); err != nil {
		return "", err
	}
	return id, nil
}
