package store

import "unicode/utf8"

// AppendJSON appends the JSON encoding of f to dst, the bytes that
// json.Marshal(f) returns, and reports true. It reports false, with dst
// unchanged, when it cannot produce those bytes: for a string that
// encoding/json would escape, and for the floats and times that
// protocol.Fix.AppendJSON does not encode. The caller then uses
// encoding/json.
//
// The hub publishes every committed fix as an event, and encoding/json's
// reflection was most of that cost. The method has a value receiver, so
// that both a StoredFix and a *StoredFix passed as an interface value
// have it. A field added to StoredFix must be added here too, in the
// order of the struct, and TestStoredFixAppendJSON_CoversEveryField
// fails until it is.
func (f StoredFix) AppendJSON(dst []byte) ([]byte, bool) {
	out := append(dst, `{"vehicle_id":`...)
	out, ok := appendJSONString(out, f.VehicleID)
	if !ok {
		return dst, false
	}
	out = append(out, `,"agent_id":`...)
	if out, ok = appendJSONString(out, f.AgentID); !ok {
		return dst, false
	}
	out = append(out, `,"region":`...)
	if out, ok = appendJSONString(out, f.Region); !ok {
		return dst, false
	}
	out = append(out, `,"fix":`...)
	if out, ok = f.Fix.AppendJSON(out); !ok {
		return dst, false
	}
	out = append(out, `,"received_at":"`...)
	out, err := f.ReceivedAt.AppendText(out)
	if err != nil {
		// time.Time.MarshalJSON rejects the same times as AppendText.
		return dst, false
	}
	out = append(out, '"')
	if f.Historical {
		out = append(out, `,"historical":true`...)
	}
	return append(out, '}'), true
}

// appendJSONString appends s quoted when encoding/json writes it without
// escapes, or reports false. encoding/json escapes control characters,
// '"', '\\', '<', '>', '&', U+2028 and U+2029, and replaces invalid
// UTF-8. It copies every other character, including DEL and valid
// non-ASCII.
func appendJSONString(dst []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return dst, false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			return dst, false
		}
		i += size
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), true
}
