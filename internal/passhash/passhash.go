// Package passhash hashes secrets with argon2id, the slow, memory-hard
// hash that password storage guidance recommends, and checks them in
// constant time. Hashes are PHC strings such as
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//
// (salt and hash in unpadded standard base64), so each hash carries the
// parameters it was made with and the parameters can change without
// invalidating stored hashes.
package passhash

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Params are the argon2id cost parameters.
type Params struct {
	// Memory is the memory cost in KiB.
	Memory uint32
	// Time is the number of passes over the memory.
	Time uint32
	// Threads is the degree of parallelism.
	Threads uint8
}

// Password is for operators' passwords, which people choose and may
// reuse: the OWASP recommendation for argon2id (19 MiB, 2 passes).
var Password = Params{Memory: 19 * 1024, Time: 2, Threads: 1}

// Token is for random machine tokens of 256 bits, such as vehicle
// tokens, which no guessing attack can reach. The slow hash only keeps a
// copied credential database from being used directly, so the cost is
// kept low enough that thousands of vehicles reconnecting after an agent
// restart are verified within seconds.
var Token = Params{Memory: 8 * 1024, Time: 1, Threads: 1}

// Limits on parameters read from a stored hash, so a corrupted or hostile
// hash cannot make Verify allocate gigabytes or spin for minutes.
const (
	maxMemory  = 256 * 1024
	maxTime    = 16
	saltLength = 16
	keyLength  = 32
)

// ErrMismatch means the secret does not match the hash.
var ErrMismatch = errors.New("secret does not match")

// ErrMalformed means a stored hash is not an argon2id PHC string this
// package can check.
var ErrMalformed = errors.New("malformed argon2id hash")

// Hash returns the PHC string of secret hashed with p and a new random salt.
func Hash(secret string, p Params) (string, error) {
	salt := make([]byte, saltLength)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generate salt: %w", err)
	}
	key := argon2.IDKey([]byte(secret), salt, p.Time, p.Memory, p.Threads, keyLength)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// Verify checks secret against the PHC string encoded. It returns nil on
// a match, ErrMismatch when the secret differs and an error wrapping
// ErrMalformed when encoded cannot be read. The comparison takes constant
// time for a given hash.
func Verify(encoded, secret string) error {
	p, salt, want, err := decode(encoded)
	if err != nil {
		return err
	}
	got := argon2.IDKey([]byte(secret), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrMismatch
	}
	return nil
}

// ParamsOf returns the parameters encoded was made with, so a caller can
// rehash a secret whose hash is weaker than its current parameters.
func ParamsOf(encoded string) (Params, error) {
	p, _, _, err := decode(encoded)
	return p, err
}

func decode(encoded string) (Params, []byte, []byte, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return Params{}, nil, nil, fmt.Errorf("%w: want $argon2id$v=..$m=..,t=..,p=..$salt$hash", ErrMalformed)
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return Params{}, nil, nil, fmt.Errorf("%w: version %q, want v=%d", ErrMalformed, parts[2], argon2.Version)
	}
	var p Params
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return Params{}, nil, nil, fmt.Errorf("%w: parameters %q: %v", ErrMalformed, parts[3], err)
	}
	if p.Memory < 8*uint32(p.Threads) || p.Memory > maxMemory || p.Time < 1 || p.Time > maxTime || p.Threads < 1 {
		return Params{}, nil, nil, fmt.Errorf("%w: parameters %q out of range", ErrMalformed, parts[3])
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return Params{}, nil, nil, fmt.Errorf("%w: salt", ErrMalformed)
	}
	key, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(key) < 16 || len(key) > 64 {
		return Params{}, nil, nil, fmt.Errorf("%w: hash", ErrMalformed)
	}
	return p, salt, key, nil
}
