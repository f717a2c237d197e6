// Package configcheck reports invalid configuration fields so that a
// caller can name them its own way. A package's Config.Validate returns
// FieldErrors named by the Go fields ("AckTimeout must be at least 1s,
// got 1ns"), and the command line renames them to the flags that set
// those fields ("--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT) must be
// at least 1s, got 1ns") with Rename.
package configcheck

import (
	"errors"
	"fmt"
	"time"
)

// FieldError is an invalid value of one configuration field.
type FieldError struct {
	// Field is the name of the invalid field, e.g. "AckTimeout".
	Field string
	// Related is another field the rule compares Field with, e.g.
	// "MaxBytes" for a reserve that must stay below it, or empty.
	Related string
	// problem renders the rule and the value, naming Related as given.
	problem func(related string) string
}

// Error returns the field name followed by the problem.
func (e *FieldError) Error() string { return e.Field + e.problem(e.Related) }

// Newf returns a FieldError whose message is field followed by a space
// and the formatted problem, e.g. Newf("Region", "must not be empty").
func Newf(field, format string, args ...any) *FieldError {
	text := " " + fmt.Sprintf(format, args...)
	return &FieldError{Field: field, problem: func(string) string { return text }}
}

// Wrap returns a FieldError whose message is field, a colon and err's
// message, for a check done by another function, such as an id check.
func Wrap(field string, err error) *FieldError {
	text := ": " + err.Error()
	return &FieldError{Field: field, problem: func(string) string { return text }}
}

// Compare returns a FieldError about field and the related field it is
// checked against. problem receives the related field's name as the
// caller names it, e.g. "must be less than " + related + " (8 MiB)".
func Compare(field, related string, problem func(related string) string) *FieldError {
	return &FieldError{Field: field, Related: related, problem: func(r string) string { return " " + problem(r) }}
}

// Duration checks that d is zero (the field's default) or within [lo, hi].
func Duration(field string, d, lo, hi time.Duration) error {
	switch {
	case d == 0:
		return nil
	case d < lo:
		return Newf(field, "must be at least %s, got %s", lo, d)
	case d > hi:
		return Newf(field, "must be at most %s, got %s", hi, d)
	}
	return nil
}

// Int checks that n is zero (the field's default) or within [lo, hi].
func Int(field string, n, lo, hi int64) error {
	switch {
	case n == 0:
		return nil
	case n < lo:
		return Newf(field, "must be at least %d, got %d", lo, n)
	case n > hi:
		return Newf(field, "must be at most %d, got %d", hi, n)
	}
	return nil
}

// Bytes is Int for a size in bytes: the message also shows the bounds in
// KiB, MiB or GiB when they are whole multiples of those.
func Bytes(field string, n, lo, hi int64) error {
	switch {
	case n == 0:
		return nil
	case n < lo:
		return Newf(field, "must be at least %s, got %d", FormatBytes(lo), n)
	case n > hi:
		return Newf(field, "must be at most %s, got %d", FormatBytes(hi), n)
	}
	return nil
}

// FormatBytes returns n as "4194304 bytes (4 MiB)", or "1000 bytes" when n
// is not a whole number of KiB.
func FormatBytes(n int64) string {
	for _, unit := range []struct {
		size int64
		name string
	}{{1 << 40, "TiB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= unit.size && n%unit.size == 0 {
			return fmt.Sprintf("%d bytes (%d %s)", n, n/unit.size, unit.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// Rename returns err with every FieldError in it renamed by name: a field
// that name maps (ok true) takes the new name, others keep theirs. It
// walks the trees errors.Join builds; an error wrapped by fmt.Errorf is
// kept as it is, so Validate methods join their FieldErrors unwrapped.
func Rename(err error, name func(field string) (string, bool)) error {
	if err == nil {
		return nil
	}
	if field, ok := err.(*FieldError); ok {
		renamed := *field
		if n, ok := name(field.Field); ok {
			renamed.Field = n
		}
		if n, ok := name(field.Related); ok && field.Related != "" {
			renamed.Related = n
		}
		return &renamed
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var out []error
	for _, e := range joined.Unwrap() {
		out = append(out, Rename(e, name))
	}
	return errors.Join(out...)
}

// Map returns a name function for Rename that looks fields up in names.
func Map(names map[string]string) func(string) (string, bool) {
	return func(field string) (string, bool) {
		n, ok := names[field]
		return n, ok
	}
}
