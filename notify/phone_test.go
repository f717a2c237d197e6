package notify

import (
	"strings"
	"testing"
)

func TestNormalizePhoneAccepts(t *testing.T) {
	cases := []struct {
		raw  string
		want string
	}{
		{"0917 123 4567", "+639171234567"},
		{"09171234567", "+639171234567"},
		{"+63 917 123 4567", "+639171234567"},
		{"+639171234567", "+639171234567"},
		{"+63 0917 123 4567", "+639171234567"},
		{"+630917-123-4567", "+639171234567"},
		{"639171234567", "+639171234567"},
		{"63 917 123 4567", "+639171234567"},
		{"(0917) 123-4567", "+639171234567"},
		{"0917.123.4567", "+639171234567"},
		{"0917-123-4567", "+639171234567"},
		{"+63 (917) 123 4567", "+639171234567"},
		{"  0917 123 4567  ", "+639171234567"},
		{"0998 765 4321", "+639987654321"},
		{"+63 2 8123 4567", "+63281234567"}, // Metro Manila landline
		{"(02) 8123-4567", "+63281234567"},
		{"+1 415 555 2671", "+14155552671"},
		{"+44 20 7946 0958", "+442079460958"},
	}
	for _, c := range cases {
		t.Run(c.raw, func(t *testing.T) {
			got, err := NormalizePhone(c.raw)
			if err != nil {
				t.Fatalf("NormalizePhone(%q): %v", c.raw, err)
			}
			if got != c.want {
				t.Errorf("NormalizePhone(%q) = %q, want %q", c.raw, got, c.want)
			}
		})
	}
}

func TestNormalizePhoneRejects(t *testing.T) {
	cases := []struct {
		raw    string
		reason string // a word the error must contain
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"0917", "not a valid length"},
		{"0917 123", "not a valid number for region PH"},
		{"+63 917", "too short"},
		{"12345678901234", "too long"},
		{"0917 123 4567 8901", "too long"},
		{"09171234567890", "not a valid number for region PH"},
		{"+63 000 000 0000", "not a valid number for region PH"},
		{"+999 1234 5678", "country code"},
		{"0917-CALL-NOW", "contains 'C'"},
		{"0917 123 4567 ext. 2", "contains 'e'"},
		{"+63 917 123 4567;drop", "contains ';'"},
		{"tel:+639171234567", "contains 't'"},
		{strings.Repeat("9", 41), "too long: at most 40 characters"},
	}
	for _, c := range cases {
		t.Run(c.raw, func(t *testing.T) {
			got, err := NormalizePhone(c.raw)
			if err == nil {
				t.Fatalf("NormalizePhone(%q) = %q, want an error", c.raw, got)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Errorf("NormalizePhone(%q) error %q does not say %q", c.raw, err, c.reason)
			}
			if strings.TrimSpace(c.raw) != "" && !strings.Contains(err.Error(), `"`+c.raw[:min(len(c.raw), 20)]) {
				t.Errorf("NormalizePhone(%q) error %q does not quote the input", c.raw, err)
			}
		})
	}
}

func TestIsMobilePhone(t *testing.T) {
	cases := []struct {
		number string
		want   bool
	}{
		{"0917 123 4567", true},
		{"+639987654321", true},
		{"+63 2 8123 4567", false},
		{"+442079460958", false},
		{"not a number", false},
	}
	for _, c := range cases {
		if got := IsMobilePhone(c.number); got != c.want {
			t.Errorf("IsMobilePhone(%q) = %v, want %v", c.number, got, c.want)
		}
	}
}
