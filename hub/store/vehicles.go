package store

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// Limits of vehicle credentials.
const (
	// VehicleTokenBytes is the number of random bytes in a vehicle token.
	VehicleTokenBytes = 32
	// MaxVehicleCredentialBatch is the maximum number of vehicles one
	// CreateVehicleCredentials call provisions.
	MaxVehicleCredentialBatch = 10000
)

// VehicleCredentialStore keeps the credentials vehicles present to the
// agents' brokers: the MQTT user name is the vehicle id and the password
// its token. A store keeps only an argon2id hash of each token (a PHC
// string made by passhash.Hash with passhash.Token), because the hashes
// are copied to every agent, where a stolen disk must not yield working
// tokens.
//
// Every change (create, rotate, revoke) gives the changed credential the
// next value of one counter shared by all vehicles, its Version, so a
// reader that remembers the highest Version it saw asks
// VehicleCredentialsSince for what changed after it. A revoked credential
// stays as a tombstone without hashes, so agents learn of the revocation.
type VehicleCredentialStore interface {
	// CreateVehicleCredentials creates the credentials of vehicleIDs, all
	// or none, and returns their tokens in the order of vehicleIDs. The
	// tokens are never stored and cannot be read again. A vehicle whose
	// credential was revoked gets a new one. It returns ErrConflict when
	// one of the vehicles has a live credential and ErrInvalid when
	// ValidateVehicleIDs rejects the list.
	CreateVehicleCredentials(ctx context.Context, vehicleIDs []string) ([]IssuedVehicleToken, error)
	// RotateVehicleCredential replaces the vehicle's token with a new one
	// and returns it. The old token stays valid for grace (0 ends it at
	// once, at most MaxRotationGrace). A token replaced earlier stops
	// working. It returns ErrNotFound for an unknown or revoked vehicle
	// and ErrInvalid for a bad grace.
	RotateVehicleCredential(ctx context.Context, vehicleID string, grace time.Duration) (token string, c VehicleCredential, err error)
	// RevokeVehicleCredential ends every token of the vehicle and keeps
	// a tombstone. It returns ErrNotFound for an unknown or already
	// revoked vehicle.
	RevokeVehicleCredential(ctx context.Context, vehicleID string) (VehicleCredential, error)
	// VehicleCredentials returns every credential, revoked ones included,
	// without hashes, ordered by vehicle id.
	VehicleCredentials(ctx context.Context) ([]VehicleCredential, error)
	// VehicleCredentialsSince returns the credentials, with hashes, and
	// tombstones whose Version is greater than version, ordered by
	// Version. Zero returns all of them.
	VehicleCredentialsSince(ctx context.Context, version uint64) ([]StoredVehicleCredential, error)
}

// VehicleCredential is a vehicle's credential as the admin API shows it:
// never a token or its hash.
type VehicleCredential struct {
	VehicleID string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	// RotatedAt is the time of the last rotation, zero before the first.
	RotatedAt time.Time `json:"rotated_at,omitzero"`
	// PreviousValidUntil is when the token the last rotation replaced
	// stops working, or zero when there is none.
	PreviousValidUntil time.Time `json:"previous_valid_until,omitzero"`
	// RevokedAt is when the credential was revoked, or zero while it is live.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// Version is the counter value of the credential's last change.
	Version uint64 `json:"version"`
}

// Revoked reports whether the credential is a tombstone.
func (c VehicleCredential) Revoked() bool { return !c.RevokedAt.IsZero() }

// StoredVehicleCredential is a vehicle credential with its token hashes,
// as stores keep it and agents receive it.
type StoredVehicleCredential struct {
	VehicleCredential
	// TokenHash is the argon2id PHC string of the current token, empty
	// when revoked.
	TokenHash string `json:"token_hash,omitempty"`
	// PreviousHash is the hash of the token the last rotation replaced,
	// valid until PreviousValidUntil, or empty when there is none.
	PreviousHash string `json:"previous_hash,omitempty"`
}

// IssuedVehicleToken is a new token and the credential it belongs to.
type IssuedVehicleToken struct {
	Credential VehicleCredential `json:"credential"`
	Token      string            `json:"token"`
}

// ValidateVehicleIDs checks the vehicle ids of CreateVehicleCredentials:
// 1 to MaxVehicleCredentialBatch valid vehicle ids, none twice.
func ValidateVehicleIDs(ids []string) error {
	if len(ids) == 0 || len(ids) > MaxVehicleCredentialBatch {
		return fmt.Errorf("%w: give 1 to %d vehicle ids, got %d", ErrInvalid, MaxVehicleCredentialBatch, len(ids))
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if err := protocol.ValidateVehicleID(id); err != nil {
			return fmt.Errorf("%w: vehicle id: %v", ErrInvalid, err)
		}
		if seen[id] {
			return fmt.Errorf("%w: vehicle id %s is listed twice", ErrInvalid, id)
		}
		seen[id] = true
	}
	return nil
}

// NewVehicleToken returns a new random vehicle token, base64url without
// padding, and its argon2id hash.
func NewVehicleToken() (token, hash string, err error) {
	b := make([]byte, VehicleTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generate vehicle token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	if hash, err = passhash.Hash(token, passhash.Token); err != nil {
		return "", "", fmt.Errorf("hash vehicle token: %w", err)
	}
	return token, hash, nil
}

// NewVehicleTokens checks ids and returns a new token and hash for each,
// made before a store opens its transaction because hashing is slow.
func NewVehicleTokens(ids []string) (tokens, hashes []string, err error) {
	if err := ValidateVehicleIDs(ids); err != nil {
		return nil, nil, err
	}
	tokens, hashes = make([]string, len(ids)), make([]string, len(ids))
	errs := make([]error, len(ids))
	// Hashing takes milliseconds each, so a fleet is hashed on every core.
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(ids)) {
		wg.Go(func() {
			for i := range next {
				tokens[i], hashes[i], errs[i] = NewVehicleToken()
			}
		})
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return tokens, hashes, nil
}

// Create makes c a live credential of vehicleID created at now with hash
// and version, replacing a tombstone if c was one.
func (c *StoredVehicleCredential) Create(vehicleID, hash string, now time.Time, version uint64) {
	*c = StoredVehicleCredential{
		VehicleCredential: VehicleCredential{VehicleID: vehicleID, CreatedAt: now, Version: version},
		TokenHash:         hash,
	}
}

// Rotate gives c the token hash hash at now, keeping the current one valid
// for grace, and sets its version.
func (c *StoredVehicleCredential) Rotate(hash string, now time.Time, grace time.Duration, version uint64) {
	c.PreviousHash, c.PreviousValidUntil = "", time.Time{}
	if grace > 0 {
		c.PreviousHash, c.PreviousValidUntil = c.TokenHash, Time(now.Add(grace))
	}
	c.TokenHash, c.RotatedAt, c.Version = hash, now, version
}

// Revoke turns c into a tombstone at now with version.
func (c *StoredVehicleCredential) Revoke(now time.Time, version uint64) {
	c.TokenHash, c.PreviousHash, c.PreviousValidUntil = "", "", time.Time{}
	c.RevokedAt, c.Version = now, version
}
