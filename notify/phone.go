package notify

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// DefaultPhoneRegion is the region of numbers written without a country
// code.
const DefaultPhoneRegion = "PH"

// maxPhoneInput is the longest raw phone number NormalizePhone parses. The
// longest E.164 number has 15 digits, so 40 characters leave room for
// spaces, brackets and a national prefix.
const maxPhoneInput = 40

// NormalizePhone returns raw as an E.164 number such as "+639171234567".
// It accepts the usual Philippine forms, with spaces, dashes, dots or
// brackets between the digits: 0917 123 4567, +63 917 123 4567,
// +63 0917 123 4567, 63917 123 4567 and (0917) 123-4567, and any number with
// an international prefix. It rejects a number that is too short, too
// long or not valid for its region, with an error that quotes raw.
//
// Landlines (+63 2 8123 4567) are valid and accepted. See IsMobilePhone.
func NormalizePhone(raw string) (string, error) {
	trimmed := strings.TrimSpace(raw)
	if trimmed == "" {
		return "", fmt.Errorf("phone number is empty")
	}
	if len(trimmed) > maxPhoneInput {
		return "", fmt.Errorf("phone number %s is too long: at most %d characters", quotePhone(raw), maxPhoneInput)
	}
	for _, r := range trimmed {
		if !isPhoneRune(r) {
			return "", fmt.Errorf("phone number %s contains %q: use digits, '+', spaces, dashes, dots or brackets", quotePhone(raw), r)
		}
	}

	num, err := phonenumbers.Parse(trimmed, DefaultPhoneRegion)
	if err != nil {
		return "", fmt.Errorf("phone number %s is not a phone number: %w", quotePhone(raw), err)
	}
	region := phonenumbers.GetRegionCodeForCountryCode(int(num.GetCountryCode()))
	digits := len(phonenumbers.GetNationalSignificantNumber(num))
	switch phonenumbers.IsPossibleNumberWithReason(num) {
	case phonenumbers.TOO_SHORT:
		return "", fmt.Errorf("phone number %s is too short: %d digits after the country code +%d", quotePhone(raw), digits, num.GetCountryCode())
	case phonenumbers.TOO_LONG:
		return "", fmt.Errorf("phone number %s is too long: %d digits after the country code +%d", quotePhone(raw), digits, num.GetCountryCode())
	case phonenumbers.INVALID_COUNTRY_CODE:
		return "", fmt.Errorf("phone number %s has an unknown country code +%d", quotePhone(raw), num.GetCountryCode())
	case phonenumbers.INVALID_LENGTH, phonenumbers.IS_POSSIBLE_LOCAL_ONLY:
		return "", fmt.Errorf("phone number %s has %d digits after the country code +%d, not a valid length for region %s", quotePhone(raw), digits, num.GetCountryCode(), region)
	}
	if !phonenumbers.IsValidNumber(num) {
		return "", fmt.Errorf("phone number %s is not a valid number for region %s (country code +%d)", quotePhone(raw), region, num.GetCountryCode())
	}
	return phonenumbers.Format(num, phonenumbers.E164), nil
}

// IsMobilePhone reports whether number, in any form NormalizePhone
// accepts, is a mobile number that can receive SMS. It uses the number
// ranges of libphonenumber's metadata (github.com/nyaruka/phonenumbers),
// so a number whose range cannot be distinguished from a landline's counts
// as mobile.
func IsMobilePhone(number string) bool {
	e164, err := NormalizePhone(number)
	if err != nil {
		return false
	}
	num, err := phonenumbers.Parse(e164, DefaultPhoneRegion)
	if err != nil {
		return false
	}
	switch phonenumbers.GetNumberType(num) {
	case phonenumbers.MOBILE, phonenumbers.FIXED_LINE_OR_MOBILE:
		return true
	default:
		return false
	}
}

func isPhoneRune(r rune) bool {
	switch {
	case r >= '0' && r <= '9':
		return true
	case r == '+', r == ' ', r == '-', r == '.', r == '(', r == ')', r == '\t':
		return true
	default:
		return false
	}
}

// quotePhone quotes raw for an error message, shortened so that a long
// input cannot flood a log line.
func quotePhone(raw string) string {
	const max = 48
	if len(raw) > max {
		raw = raw[:max] + "..."
	}
	return strconv.Quote(raw)
}
