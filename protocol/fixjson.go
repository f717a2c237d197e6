package protocol

// AppendJSON appends the JSON encoding of f to dst, the bytes that
// json.Marshal(f) returns, and reports true. It reports false, with dst
// unchanged, when it cannot produce those bytes: for a NaN or infinite
// float, which json.Marshal rejects, and for a time outside the years 0
// to 9999, which time.Time.MarshalJSON rejects. The caller then uses
// encoding/json, which returns the error. A nil f appends null, as
// json.Marshal does.
//
// The hub encodes every fix it publishes to operators, and encoding/json's
// reflection was most of that cost. A field added to Fix must be added
// here too, in the order of the struct, and
// TestFixAppendJSON_CoversEveryField fails until it is.
func (f *Fix) AppendJSON(dst []byte) ([]byte, bool) {
	if f == nil {
		return append(dst, "null"...), true
	}
	out := append(dst, `{"ts":`...)
	out, ok := appendJSONTime(out, f.Time)
	if !ok {
		return dst, false
	}
	out = append(out, `,"lat":`...)
	if out, ok = appendJSONFloat(out, f.Lat); !ok {
		return dst, false
	}
	out = append(out, `,"lon":`...)
	if out, ok = appendJSONFloat(out, f.Lon); !ok {
		return dst, false
	}
	for _, opt := range [...]struct {
		key string
		v   *float64
	}{
		{`,"speed_kmh":`, f.SpeedKmh},
		{`,"heading_deg":`, f.HeadingDeg},
		{`,"accuracy_m":`, f.AccuracyM},
		{`,"alt_m":`, f.AltM},
		{`,"battery_pct":`, f.BatteryPct},
	} {
		if opt.v == nil {
			continue
		}
		out = append(out, opt.key...)
		if out, ok = appendJSONFloat(out, *opt.v); !ok {
			return dst, false
		}
	}
	return append(out, '}'), true
}
