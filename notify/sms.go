package notify

import (
	"strings"
	"unicode/utf16"
)

// SMS segment sizes (3GPP TS 23.038 and 23.040). A single SMS carries 160
// GSM-7 characters or 70 UCS-2 units. Each part of a concatenated SMS
// loses room to its header, so it carries 153 or 67.
const (
	gsm7Single = 160
	gsm7Part   = 153
	ucs2Single = 70
	ucs2Part   = 67
)

// gsm7Basic is the GSM 03.38 default alphabet, in which each character
// costs one septet.
const gsm7Basic = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
	"¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"

// gsm7Extension are the characters of the GSM 03.38 extension table. Each
// costs two septets (escape and character).
const gsm7Extension = "^{}\\[~]|€\f"

// SMSSegments returns how many SMS segments text needs: GSM-7 encoding
// when every character is in the GSM 03.38 alphabet, else UCS-2. It
// counts the concatenation header but not the rule that keeps an escape
// pair in one part, so a text full of extension characters may need one
// segment more. An empty text needs none.
func SMSSegments(text string) int {
	if text == "" {
		return 0
	}
	septets, ok := gsm7Length(text)
	if ok {
		if septets <= gsm7Single {
			return 1
		}
		return (septets + gsm7Part - 1) / gsm7Part
	}
	units := len(utf16.Encode([]rune(text)))
	if units <= ucs2Single {
		return 1
	}
	return (units + ucs2Part - 1) / ucs2Part
}

// gsm7Length returns the septets of text in GSM-7, or false when text has
// a character outside the alphabet.
func gsm7Length(text string) (int, bool) {
	n := 0
	for _, r := range text {
		switch {
		case strings.ContainsRune(gsm7Basic, r):
			n++
		case strings.ContainsRune(gsm7Extension, r):
			n += 2
		default:
			return 0, false
		}
	}
	return n, true
}
