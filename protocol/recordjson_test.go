package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func ptr(f float64) *float64 { return &f }

// jsonRecords are records whose encoding covers the fast path's edges:
// number formats, optional fields, escapes and times it must leave to
// encoding/json.
func jsonRecords() []Record {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456789, time.UTC)
	manila := time.FixedZone("PHT", 8*3600)
	base := func() Record {
		return Record{Seq: 7, Kind: KindFix, VehicleID: "taxi-0917", ReceivedAt: at,
			Fix: &Fix{Time: at.Add(-time.Second), Lat: 14.5995, Lon: 120.9842}}
	}
	var recs []Record
	add := func(mutate func(r *Record)) {
		r := base()
		mutate(&r)
		recs = append(recs, r)
	}
	add(func(*Record) {})
	add(func(r *Record) { r.Seq = 0 })
	add(func(r *Record) { r.Seq = math.MaxUint64 })
	add(func(r *Record) { r.Historical = true })
	add(func(r *Record) {
		r.Fix.SpeedKmh, r.Fix.HeadingDeg, r.Fix.AccuracyM, r.Fix.AltM, r.Fix.BatteryPct =
			ptr(32.5), ptr(0), ptr(-0.0), ptr(1e-7), ptr(100)
	})
	for _, f := range []float64{0, -0.0, 1e-6, 9.99e-7, 1e20, 1e21, -1e21, 5e-324, math.MaxFloat64, 0.1, 1.0 / 3} {
		add(func(r *Record) { r.Fix.Lat, r.Fix.SpeedKmh = f, ptr(f) })
	}
	add(func(r *Record) { r.Fix.Lat = math.NaN() })
	add(func(r *Record) { r.Fix.AltM = ptr(math.Inf(-1)) })
	for _, v := range []string{"", "a<b", "a&b", `quote"d`, `back\slash`, "tab\there", "jeepney-ñ", "line\u2028sep", "\xff"} {
		add(func(r *Record) { r.VehicleID = v })
	}
	add(func(r *Record) { r.ReceivedAt = at.In(manila) })
	add(func(r *Record) { r.Fix.Time = time.Time{} })
	add(func(r *Record) { r.Fix.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) })
	add(func(r *Record) { r.Fix = nil })
	add(func(r *Record) { r.Kind, r.Fix, r.Status = KindStatus, nil, &Status{Online: true} })
	add(func(r *Record) { r.Status = &Status{} })
	add(func(r *Record) {
		r.Kind, r.Fix, r.SOS = KindSOS, nil, &SOS{ID: "sos-1", Time: at, Kind: SOSPanic, HasLocation: true, Lat: 1, Lon: 2}
	})
	return recs
}

func TestAppendRecordJSON_MatchesEncodingJSON(t *testing.T) {
	for i, r := range jsonRecords() {
		want, wantErr := json.Marshal(&r)
		got, gotErr := AppendRecordJSON([]byte("prefix"), &r)
		if (wantErr != nil) != (gotErr != nil) {
			t.Errorf("record %d: error %v, encoding/json's %v", i, gotErr, wantErr)
			continue
		}
		if wantErr != nil {
			continue
		}
		if !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("record %d:\n got %s\nwant prefix%s", i, got, want)
		}
	}
}

// decodeInputs are record encodings, the regular ones and variants
// encoding/json reads differently from a naive parser.
func decodeInputs() []string {
	var inputs []string
	for _, r := range jsonRecords() {
		if data, err := json.Marshal(&r); err == nil {
			inputs = append(inputs, string(data))
		}
	}
	const fix = `{"seq":1,"kind":"fix","vehicle":"v-1","received_at":"2026-12-04T02:00:00Z","fix":{"ts":"2026-12-04T01:59:59+08:00","lat":14.5,"lon":121}}`
	inputs = append(inputs,
		fix,
		" \n"+strings.ReplaceAll(fix, ",", " ,\t")+" \r\n",
		`{"fix":{"lon":121,"lat":14.5,"ts":"2026-12-04T01:59:59Z"},"vehicle":"v-1","kind":"fix","seq":1,"received_at":"2026-12-04T02:00:00Z"}`,
		strings.Replace(fix, `"seq":1`, `"seq":1,"seq":2`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":14.5,"lat":15`, 1),
		strings.Replace(fix, `"seq":1`, `"SEQ":1`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1,"extra":[1,{"a":null}]`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":14.5,"speed_kmh":null`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":null`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":-1`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1.0`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1e2`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":18446744073709551616`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":01`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":-0.5e-3`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":1E400`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":.5`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":1.`, 1),
		strings.Replace(fix, `"lat":14.5`, `"lat":"14.5"`, 1),
		strings.Replace(fix, `"v-1"`, `"v\u002d1"`, 1),
		strings.Replace(fix, `"v-1"`, `"v-\xff"`, 1),
		strings.Replace(fix, `"v-1"`, "\"v-\x01\"", 1),
		strings.Replace(fix, `"fix"`, `"FIX"`, 1),
		strings.Replace(fix, `"kind":"fix"`, `"kind":"status"`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1,"historical":true`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1,"historical":nope`, 1),
		strings.Replace(fix, `"seq":1`, `"seq":1,"status":null`, 1),
		strings.Replace(fix, `2026-12-04T02:00:00Z`, `2026-12-04 02:00:00Z`, 1),
		strings.Replace(fix, `2026-12-04T02:00:00Z`, `2026-12-04T02:00:00.5+24:00`, 1),
		fix+"x",
		fix[:len(fix)-1],
		`{}`, `[]`, `null`, ``,
	)
	return inputs
}

func TestUnmarshalRecordJSON_MatchesEncodingJSON(t *testing.T) {
	for _, in := range decodeInputs() {
		checkRecordDecode(t, []byte(in))
	}
}

// checkRecordDecode compares UnmarshalRecordJSON with json.Unmarshal.
func checkRecordDecode(t *testing.T, data []byte) {
	t.Helper()
	var want, got Record
	wantErr := json.Unmarshal(data, &want)
	gotErr := UnmarshalRecordJSON(data, &got)
	if (wantErr != nil) != (gotErr != nil) {
		t.Fatalf("%q: error %v, encoding/json's %v", data, gotErr, wantErr)
	}
	if wantErr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
	}
}

func TestBatchJSON_MatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	batch := &Batch{AgentID: "ncr-1", Region: "NCR-Manila", SpoolID: "abc", Lane: LaneGPS, Prev: 9, SentAt: at}
	for i := range 50 {
		speed := float64(i) / 3
		batch.Records = append(batch.Records, Record{
			Seq: uint64(i + 10), Kind: KindFix, VehicleID: fmt.Sprintf("veh-%03d", i%7), ReceivedAt: at,
			Historical: i%2 == 0, Fix: &Fix{Time: at.Add(-time.Duration(i) * time.Second), Lat: 14.5 + float64(i)/1e4, Lon: 121, SpeedKmh: &speed},
		})
	}
	region := *batch
	region.Region = "Région <1>"
	more := *batch
	more.More = true
	sos := *batch
	sos.Records = append([]Record{{Seq: 1, Kind: KindSOS, VehicleID: "v", ReceivedAt: at, SOS: &SOS{ID: "s-1", Time: at}}}, batch.Records...)
	for _, tc := range []struct {
		name  string
		batch *Batch
		// fast is whether the decoder takes the fast path.
		fast bool
	}{
		{"fixes", batch, true},
		{"more behind it", &more, true},
		{"no records", &Batch{AgentID: "a", SpoolID: "s", Lane: LaneGPS}, false},
		{"one record, no prev or more", &Batch{AgentID: "a", SpoolID: "s", Lane: LaneGPS, Records: batch.Records[:1], SentAt: at}, true},
		{"escaped region", &region, false},
		{"an SOS record", &sos, false},
	} {
		want, err := json.Marshal(tc.batch)
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeBatch(tc.batch)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want)
		}

		var slow Batch
		if err := json.Unmarshal(want, &slow); err != nil {
			t.Fatal(err)
		}
		fast, err := decodeBatchFast(want)
		if !tc.fast {
			if err == nil {
				t.Errorf("%s: took the fast path", tc.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: fast decode: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(*fast, slow) {
			t.Errorf("%s: fast decode\n got %+v\nwant %+v", tc.name, *fast, slow)
		}
	}
}

func FuzzUnmarshalRecordJSON(f *testing.F) {
	for _, in := range decodeInputs() {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkRecordDecode(t, data)
	})
}

func FuzzDecodeBatchFast(f *testing.F) {
	for _, in := range decodeInputs() {
		f.Add([]byte(`{"agent":"ncr-1","region":"NCR","spool":"s","lane":"gps","prev":3,"records":[` + in + `],"sent_at":"2026-12-04T02:00:00Z"}`))
	}
	f.Add([]byte(`{"agent":"a","records":[],"lane":"gps","lane":"sos"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, err := decodeBatchFast(data)
		if err != nil {
			return
		}
		var slow Batch
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("%q: fast path accepted what encoding/json rejects: %v", data, err)
		}
		if !reflect.DeepEqual(*fast, slow) {
			t.Fatalf("%q:\n got %+v\nwant %+v", data, *fast, slow)
		}
	})
}

// The fast path writes and reads the fields it knows by name. A field
// added to one of these structs must be added to recordjson.go too, or
// the fast path would drop it from the wire.
func TestFastJSON_KnowsEveryField(t *testing.T) {
	for _, tc := range []struct {
		value any
		known []string
	}{
		{Batch{}, []string{"agent", "region", "spool", "lane", "prev", "more", "records", "sent_at"}},
		{Record{}, []string{"seq", "kind", "vehicle", "received_at", "historical", "fix", "sos", "cancel", "status", "ack", "notified"}},
		{Fix{}, []string{"ts", "lat", "lon", "speed_kmh", "heading_deg", "accuracy_m", "alt_m", "battery_pct"}},
	} {
		typ := reflect.TypeOf(tc.value)
		var fields []string
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			fields = append(fields, name)
		}
		if !reflect.DeepEqual(fields, tc.known) {
			t.Errorf("%s has JSON fields %v, the fast path in recordjson.go knows %v: update it", typ.Name(), fields, tc.known)
		}
	}
}
