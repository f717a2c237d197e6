package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// HubPrefix starts every topic the hub publishes to all agents.
const HubPrefix = "xpress/v1/hub/"

// vehicleCredentialsPrefix starts the topics of vehicle credentials.
const vehicleCredentialsPrefix = HubPrefix + "vehicle-credentials/"

// VehicleCredentialTopic returns the topic on which the hub keeps one
// vehicle's credential as a retained message for every agent:
// xpress/v1/hub/vehicle-credentials/{vehicle_id}.
func VehicleCredentialTopic(vehicleID string) string { return vehicleCredentialsPrefix + vehicleID }

// VehicleCredentialFilter is the topic filter that matches every
// VehicleCredentialTopic.
const VehicleCredentialFilter = vehicleCredentialsPrefix + "+"

// VehicleCredentialPrefix is the prefix shared by the
// VehicleCredentialTopic topics and VehicleCredentialFilter.
const VehicleCredentialPrefix = vehicleCredentialsPrefix

// ParseVehicleCredentialTopic returns the vehicle id of a
// VehicleCredentialTopic topic.
func ParseVehicleCredentialTopic(topic string) (string, error) {
	id, ok := strings.CutPrefix(topic, vehicleCredentialsPrefix)
	if !ok {
		return "", fmt.Errorf("%w: %q is not under %s", ErrUnknownTopic, topic, vehicleCredentialsPrefix)
	}
	if err := ValidateVehicleID(id); err != nil {
		return "", err
	}
	return id, nil
}

// MaxVehicleCredentialBytes bounds an encoded VehicleCredential.
const MaxVehicleCredentialBytes = 4 << 10

// maxHashLength bounds each hash of a VehicleCredential.
const maxHashLength = 512

// VehicleCredential is the hub's message about one vehicle's credential,
// from which agents check the vehicle's token at CONNECT. Hashes are
// argon2id PHC strings (see package passhash), so tokens never travel.
type VehicleCredential struct {
	VehicleID string `json:"vehicle"`
	// Hash is the hash of the current token, empty when Revoked.
	Hash string `json:"hash,omitempty"`
	// PreviousHash is the hash of the token the last rotation replaced,
	// accepted until PreviousValidUntil, or empty when there is none.
	PreviousHash       string    `json:"previous_hash,omitempty"`
	PreviousValidUntil time.Time `json:"previous_valid_until,omitzero"`
	// Version orders the messages of all vehicles: a message with a
	// version at or below the one an agent holds for the vehicle is old.
	Version uint64 `json:"version"`
	// Revoked means the vehicle may no longer connect.
	Revoked bool `json:"revoked,omitempty"`
}

// Validate checks the fields a receiver relies on.
func (c *VehicleCredential) Validate() error {
	if err := ValidateVehicleID(c.VehicleID); err != nil {
		return err
	}
	if c.Version == 0 {
		return fmt.Errorf("%w: vehicle credential of %s has version 0", ErrMalformed, c.VehicleID)
	}
	switch {
	case c.Revoked && (c.Hash != "" || c.PreviousHash != ""):
		return fmt.Errorf("%w: revoked vehicle credential of %s carries hashes", ErrMalformed, c.VehicleID)
	case !c.Revoked && c.Hash == "":
		return fmt.Errorf("%w: vehicle credential of %s has no hash", ErrMalformed, c.VehicleID)
	case len(c.Hash) > maxHashLength || len(c.PreviousHash) > maxHashLength:
		return fmt.Errorf("%w: vehicle credential of %s has a hash longer than %d bytes", ErrMalformed, c.VehicleID, maxHashLength)
	case c.PreviousHash != "" && c.PreviousValidUntil.IsZero():
		return fmt.Errorf("%w: vehicle credential of %s has a previous hash without previous_valid_until", ErrMalformed, c.VehicleID)
	}
	return nil
}

// EncodeVehicleCredential returns the JSON of c after checking it.
func EncodeVehicleCredential(c *VehicleCredential) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// DecodeVehicleCredential reads and checks a VehicleCredential.
func DecodeVehicleCredential(data []byte) (*VehicleCredential, error) {
	if len(data) > MaxVehicleCredentialBytes {
		return nil, fmt.Errorf("%w: vehicle credential of %d bytes, at most %d", ErrTooLarge, len(data), MaxVehicleCredentialBytes)
	}
	var c VehicleCredential
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%w: vehicle credential: %v", ErrMalformed, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}
