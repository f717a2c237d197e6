package protocol

import "errors"

// Validation errors. Decoders wrap them with the field and value, so
// callers test with errors.Is and log the message.
var (
	// ErrMalformed means the payload is not the expected JSON.
	ErrMalformed = errors.New("malformed payload")
	// ErrInvalidUTF8 means the payload is not valid UTF-8.
	ErrInvalidUTF8 = errors.New("payload is not valid UTF-8")
	// ErrTooLarge means the payload or a fix array exceeds its limit.
	ErrTooLarge = errors.New("payload too large")
	// ErrMissingField means a required field is absent.
	ErrMissingField = errors.New("missing field")
	// ErrOutOfRange means a number is outside its allowed range or not finite.
	ErrOutOfRange = errors.New("value out of range")
	// ErrNullIsland means a position of exactly (0, 0), the usual sign of a GPS without a fix.
	ErrNullIsland = errors.New("position is exactly (0, 0)")
	// ErrFutureTimestamp means a timestamp too far ahead of the receiver's clock.
	ErrFutureTimestamp = errors.New("timestamp in the future")
	// ErrStaleTimestamp means a timestamp older than the retention window.
	ErrStaleTimestamp = errors.New("timestamp older than retention")
	// ErrInvalidID means a vehicle, agent or SOS id has the wrong length or characters.
	ErrInvalidID = errors.New("invalid id")
	// ErrUnknownTopic means a topic outside the device or agent contract.
	ErrUnknownTopic = errors.New("unknown topic")
	// ErrInvalidBatch means a batch envelope breaks its own rules.
	ErrInvalidBatch = errors.New("invalid batch")
)

// Reason returns a short, bounded label for err, fit for a metric label.
func Reason(err error) string {
	for _, r := range []struct {
		err   error
		label string
	}{
		{ErrMalformed, "malformed"},
		{ErrInvalidUTF8, "invalid_utf8"},
		{ErrTooLarge, "too_large"},
		{ErrMissingField, "missing_field"},
		{ErrOutOfRange, "out_of_range"},
		{ErrNullIsland, "null_island"},
		{ErrFutureTimestamp, "future_timestamp"},
		{ErrStaleTimestamp, "stale_timestamp"},
		{ErrInvalidID, "invalid_id"},
		{ErrUnknownTopic, "unknown_topic"},
		{ErrInvalidBatch, "invalid_batch"},
	} {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}
