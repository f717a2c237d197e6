package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// requestAs sends a request as the test principal who (see
// testPrincipals) with an optional JSON body, and returns the status and
// body.
func requestAs(t *testing.T, client *http.Client, base, who, method, path, body string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(testPrincipalHeader, who)
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s as %s: %v", method, path, who, err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(out)
}

// dialAs opens the event stream of the server at base as the test
// principal who and starts reading it.
func dialAs(t *testing.T, base, who string) *streamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	url := "ws" + strings.TrimPrefix(base, "http") + "/api/v1/stream"
	conn, res, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{testPrincipalHeader: {who}}})
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial stream as %s: status %d: %v", who, status, err)
	}
	conn.SetReadLimit(1 << 20)
	c := &streamClient{conn: conn, frames: make(chan frame, 4096), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		conn.CloseNow()
		<-c.done
	})
	return c
}

// readUntil reads frames until one of each seq in last has arrived, and
// returns every frame read, hello included.
func (c *streamClient) readUntil(t *testing.T, last ...uint64) []frame {
	t.Helper()
	var got []frame
	for want := slices.Clone(last); len(want) > 0; {
		f := c.next(t)
		got = append(got, f)
		want = slices.DeleteFunc(want, func(seq uint64) bool { return seq == f.Seq && f.Type != "hello" })
	}
	return got
}

// incidentIDs returns the incident ids of the incident frames, in order.
func incidentIDs(t *testing.T, frames []frame) []int64 {
	t.Helper()
	var ids []int64
	for _, f := range frames {
		if f.Type != events.TypeIncidentOpened && f.Type != events.TypeIncidentUpdated {
			continue
		}
		var c store.IncidentChange
		if err := json.Unmarshal(f.Data, &c); err != nil {
			t.Fatalf("frame %d: %v", f.Seq, err)
		}
		ids = append(ids, c.Incident.ID)
	}
	return ids
}

// commitSOS commits an SOS of vehicle from an agent of region to the
// dispatch server's store and publishes the incident as the hub does.
func commitSOS(t *testing.T, ds *dispatchServer, agent, region, vehicle, sosID string) store.Incident {
	t.Helper()
	rec := storetest.SOSRecord(1, vehicle, sosID, testNow)
	res, err := ds.store.CommitBatch(context.Background(), &protocol.Batch{
		AgentID: agent, Region: region, SpoolID: "s-" + agent, Lane: rec.Kind.Lane(), Records: []protocol.Record{rec}, SentAt: testNow,
	})
	if err != nil || len(res.Incidents) != 1 {
		t.Fatalf("commit SOS of %s: %+v, %v", region, res.Incidents, err)
	}
	c := res.Incidents[0]
	if _, err := ds.bus.PublishIn(c.Incident.Region, events.TypeIncidentOpened, c); err != nil {
		t.Fatal(err)
	}
	return c.Incident
}

// TestRegionScope_IncidentOfAnotherRegion opens an SOS in Manila and one
// in Cebu on a real store with a real dispatcher. An operator of Cebu
// cannot list, read, act on, or read or retry the notifications of the
// Manila incident, and gets the 404 of an incident that does not exist;
// nor does its stream carry the Manila incident's events, which the
// Manila operator's and the admin's streams carry in the same run.
func TestRegionScope_IncidentOfAnotherRegion(t *testing.T) {
	ds := newDispatchServer(t)
	client := ds.Client()
	for _, c := range []string{
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"09171234567"}`,
		`{"name":"Ben Cruz","role":"responder","region":"Cebu","phone":"09181234567"}`,
	} {
		if code, body := requestAs(t, client, ds.URL, "admin", http.MethodPost, "/api/v1/contacts", c); code != http.StatusCreated {
			t.Fatalf("POST contact as admin = %d %s", code, body)
		}
	}

	streams := map[string]*streamClient{}
	for _, who := range []string{"cebu", "manila", "admin"} {
		streams[who] = dialAs(t, ds.URL, who)
		streams[who].expect(t, "hello", ds.bus.Latest())
	}

	manila := commitSOS(t, ds, "agent-ncr", "NCR-Manila", "taxi-0917", "sos-mnl")
	cebu := commitSOS(t, ds, "agent-cebu", "Cebu", "taxi-0918", "sos-ceb")
	// The dispatcher escalates both incidents and publishes each change in
	// its incident's region.
	if err := ds.d.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	// One last event in each region marks the end of what each stream can get.
	manilaEnd, err := ds.bus.PublishIn("NCR-Manila", events.TypeVehicleStatus, store.VehicleStatus{VehicleID: "taxi-0917", AgentID: "agent-ncr"})
	if err != nil {
		t.Fatal(err)
	}
	cebuEnd, err := ds.bus.PublishIn("Cebu", events.TypeVehicleStatus, store.VehicleStatus{VehicleID: "taxi-0918", AgentID: "agent-cebu"})
	if err != nil {
		t.Fatal(err)
	}

	only := func(id int64) func(int64) bool { return func(got int64) bool { return got != id } }
	got := incidentIDs(t, streams["cebu"].readUntil(t, cebuEnd.Seq))
	if len(got) == 0 || slices.ContainsFunc(got, only(cebu.ID)) {
		t.Errorf("Cebu operator's stream carried incidents %v, want only Cebu's %d", got, cebu.ID)
	}
	got = incidentIDs(t, streams["manila"].readUntil(t, manilaEnd.Seq))
	if len(got) == 0 || slices.ContainsFunc(got, only(manila.ID)) {
		t.Errorf("Manila operator's stream carried incidents %v, want only Manila's %d", got, manila.ID)
	}
	got = incidentIDs(t, streams["admin"].readUntil(t, manilaEnd.Seq, cebuEnd.Seq))
	if !slices.Contains(got, manila.ID) || !slices.Contains(got, cebu.ID) {
		t.Errorf("admin's stream carried incidents %v, want both %d and %d", got, manila.ID, cebu.ID)
	}

	// The list.
	for who, want := range map[string][]int64{"cebu": {cebu.ID}, "manila": {manila.ID}, "admin": {cebu.ID, manila.ID}} {
		code, body := requestAs(t, client, ds.URL, who, http.MethodGet, "/api/v1/incidents", "")
		var list struct{ Incidents []store.Incident }
		if err := json.Unmarshal([]byte(body), &list); err != nil || code != http.StatusOK {
			t.Fatalf("GET incidents as %s = %d %s", who, code, body)
		}
		var ids []int64
		for _, inc := range list.Incidents {
			ids = append(ids, inc.ID)
		}
		slices.Sort(ids)
		slices.Sort(want)
		if !slices.Equal(ids, want) {
			t.Errorf("incidents listed to %s = %v, want %v", who, ids, want)
		}
	}
	if code, body := requestAs(t, client, ds.URL, "cebu", http.MethodGet, "/api/v1/incidents?region=NCR-Manila", ""); code != http.StatusOK || strings.Contains(body, "taxi-0917") {
		t.Errorf("Cebu operator's list filtered on NCR-Manila = %d %s, want no incidents", code, body)
	}

	// One incident, its notifications and a retry get the 404 of an
	// incident that does not exist. The same requests by the Manila
	// operator get 200s, so the 404s are not blanket refusals.
	notifications := func(who string, id int64) []store.Notification {
		code, body := requestAs(t, client, ds.URL, who, http.MethodGet, "/api/v1/incidents/"+strconv.FormatInt(id, 10)+"/notifications", "")
		var out struct{ Notifications []store.Notification }
		if err := json.Unmarshal([]byte(body), &out); err != nil || code != http.StatusOK || len(out.Notifications) == 0 {
			t.Fatalf("GET notifications of %d as %s = %d %s, want some", id, who, code, body)
		}
		return out.Notifications
	}
	manilaNotification := notifications("manila", manila.ID)[0]
	missing := manila.ID + cebu.ID + 100
	paths := func(id, nid int64) map[string][2]string {
		inc := "/api/v1/incidents/" + strconv.FormatInt(id, 10)
		return map[string][2]string{
			"incident":      {http.MethodGet, inc},
			"notifications": {http.MethodGet, inc + "/notifications"},
			"acknowledge":   {http.MethodPost, inc + "/acknowledge"},
			"note":          {http.MethodPost, inc + "/notes"},
			"retry":         {http.MethodPost, inc + "/notifications/" + strconv.FormatInt(nid, 10) + "/retry"},
		}
	}
	bodies := map[string]string{"note": `{"text":"seen from Cebu"}`}
	unknown := paths(missing, manilaNotification.ID)
	for name, req := range paths(manila.ID, manilaNotification.ID) {
		code, body := requestAs(t, client, ds.URL, "cebu", req[0], req[1], bodies[name])
		wantCode, wantBody := requestAs(t, client, ds.URL, "cebu", unknown[name][0], unknown[name][1], bodies[name])
		if code != http.StatusNotFound || body != wantBody || wantCode != http.StatusNotFound {
			t.Errorf("%s of the Manila incident as the Cebu operator = %d %s, want the 404 of an unknown incident: %d %s",
				name, code, body, wantCode, wantBody)
		}
	}
	inc, evs, err := ds.store.Incident(context.Background(), manila.ID)
	if err != nil {
		t.Fatal(err)
	}
	if inc.State != store.StateOpen || slices.ContainsFunc(evs, func(e store.IncidentEvent) bool { return strings.Contains(e.Actor, "carlo") }) {
		t.Errorf("Manila incident after the Cebu operator's attempts: state %s, events %+v; want it untouched", inc.State, evs)
	}
	for name, req := range paths(manila.ID, manilaNotification.ID) {
		want := http.StatusOK
		if name == "retry" {
			want = http.StatusForbidden // retrying a notification needs the supervisor role
		}
		if code, body := requestAs(t, client, ds.URL, "manila", req[0], req[1], bodies[name]); code != want {
			t.Errorf("%s of the Manila incident as the Manila operator = %d %s, want %d", name, code, body, want)
		}
	}
}

// TestRegionScope_MultiRegionPages lists incidents to an operator of two
// regions: the list holds the incidents of both, newest first, and offset
// and limit page through them as through one list.
func TestRegionScope_MultiRegionPages(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	regions := []string{"NCR-Manila", "Cebu", "Iloilo", "Cebu", "Iloilo", "NCR-Manila"}
	ts.store.update(func(f *fakeStore) {
		for i, region := range regions {
			inc := sampleIncident(int64(i+1), "taxi-"+strconv.Itoa(i+1), store.StateOpen, testNow.Add(time.Duration(i)*time.Minute))
			inc.Region = region
			f.incidents = append(f.incidents, inc)
		}
	})
	page := func(who, query string) []int64 {
		t.Helper()
		code, body := requestAs(t, ts.Client(), ts.URL, who, http.MethodGet, "/api/v1/incidents"+query, "")
		var list struct{ Incidents []store.Incident }
		if err := json.Unmarshal([]byte(body), &list); err != nil || code != http.StatusOK {
			t.Fatalf("GET incidents%s as %s = %d %s", query, who, code, body)
		}
		ids := []int64{}
		for _, inc := range list.Incidents {
			ids = append(ids, inc.ID)
		}
		return ids
	}
	for _, tc := range []struct {
		who, query string
		want       []int64
	}{
		{"visayas", "", []int64{5, 4, 3, 2}},
		{"visayas", "?limit=2", []int64{5, 4}},
		{"visayas", "?limit=2&offset=2", []int64{3, 2}},
		{"visayas", "?offset=4", []int64{}},
		{"visayas", "?region=Iloilo", []int64{5, 3}},
		{"visayas", "?region=NCR-Manila", []int64{}},
		{"cebu", "", []int64{4, 2}},
		{"nowhere", "", []int64{}},
		{"admin", "?limit=3", []int64{6, 5, 4}},
	} {
		if got := page(tc.who, tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("incidents%s as %s = %v, want %v", tc.query, tc.who, got, tc.want)
		}
	}
	if code, body := requestAs(t, ts.Client(), ts.URL, "none", http.MethodGet, "/api/v1/incidents", ""); code != http.StatusUnauthorized || strings.Contains(body, "taxi") {
		t.Errorf("incidents without a principal = %d %s, want none", code, body)
	}
}

// TestRegionScope_VehiclesTracksAgents checks the vehicle list, a
// vehicle's track and the agent list of a Cebu operator.
func TestRegionScope_VehiclesTracksAgents(t *testing.T) {
	agents := []api.AgentState{
		{ID: "agent-cebu", Region: "Cebu", Connected: true},
		{ID: "agent-ncr", Region: "NCR-Manila", Connected: true},
		{ID: "agent-new", Connected: true},
	}
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.Agents = func() []api.AgentState { return agents }
	})
	ts.store.update(func(f *fakeStore) {
		mnl := samplePosition("MNL-0001", 14.6, 121.0, testNow.Add(-time.Minute))
		mnl.Region = "NCR-Manila"
		ceb := samplePosition("CEB-0001", 10.3, 123.9, testNow.Add(-time.Minute))
		ceb.Region = "Cebu"
		f.positions = []store.Position{mnl, ceb}
		// CEB-0001 came from Manila, where its older fix was recorded.
		for i, region := range []string{"NCR-Manila", "Cebu"} {
			f.fixes = append(f.fixes, store.StoredFix{VehicleID: "CEB-0001", Region: region,
				Fix: protocol.Fix{Time: testNow.Add(time.Duration(i-30) * time.Minute), Lat: 10, Lon: 123}})
		}
		f.fixes = append(f.fixes, store.StoredFix{VehicleID: "MNL-0001", Region: "NCR-Manila",
			Fix: protocol.Fix{Time: testNow.Add(-10 * time.Minute), Lat: 14, Lon: 121}})
	})
	get := func(who, path string) (int, string) {
		return requestAs(t, ts.Client(), ts.URL, who, http.MethodGet, path, "")
	}

	if code, body := get("cebu", "/api/v1/vehicles"); code != http.StatusOK || !strings.Contains(body, "CEB-0001") || strings.Contains(body, "MNL-0001") {
		t.Errorf("vehicles as the Cebu operator = %d %s, want CEB-0001 only", code, body)
	}
	if code, body := get("admin", "/api/v1/vehicles"); code != http.StatusOK || !strings.Contains(body, "CEB-0001") || !strings.Contains(body, "MNL-0001") {
		t.Errorf("vehicles as admin = %d %s, want both", code, body)
	}

	code, body := get("cebu", "/api/v1/vehicles/MNL-0001/track")
	unknownCode, unknownBody := get("cebu", "/api/v1/vehicles/ZZZ-0009/track")
	if code != http.StatusNotFound || code != unknownCode || body != unknownBody {
		t.Errorf("Manila vehicle's track as the Cebu operator = %d %s, want the 404 of an unknown vehicle: %d %s", code, body, unknownCode, unknownBody)
	}
	if code, body := get("manila", "/api/v1/vehicles/MNL-0001/track"); code != http.StatusOK || !strings.Contains(body, `"lat":14`) {
		t.Errorf("Manila vehicle's track as the Manila operator = %d %s, want its fix", code, body)
	}
	code, body = get("cebu", "/api/v1/vehicles/CEB-0001/track")
	var track struct{ Fixes []store.StoredFix }
	if err := json.Unmarshal([]byte(body), &track); err != nil || code != http.StatusOK {
		t.Fatalf("Cebu vehicle's track = %d %s", code, body)
	}
	if len(track.Fixes) != 1 || track.Fixes[0].Region != "Cebu" {
		t.Errorf("Cebu vehicle's track as the Cebu operator = %+v, want only its fix in Cebu", track.Fixes)
	}

	agentIDs := func(who string) []string {
		code, body := get(who, "/api/v1/agents")
		var out struct{ Agents []api.AgentState }
		if err := json.Unmarshal([]byte(body), &out); err != nil || code != http.StatusOK {
			t.Fatalf("agents as %s = %d %s", who, code, body)
		}
		ids := []string{}
		for _, a := range out.Agents {
			ids = append(ids, a.ID)
		}
		return ids
	}
	if got := agentIDs("cebu"); !slices.Equal(got, []string{"agent-cebu"}) {
		t.Errorf("agents as the Cebu operator = %v, want agent-cebu", got)
	}
	if got := agentIDs("admin"); !slices.Equal(got, []string{"agent-cebu", "agent-ncr", "agent-new"}) {
		t.Errorf("agents as admin = %v, want all three", got)
	}
}

// TestRegionScope_Contacts checks that a Cebu supervisor lists only the
// contacts of Cebu and of Cebu's vehicles, and cannot create, change or
// delete a Manila contact.
func TestRegionScope_Contacts(t *testing.T) {
	ds := newDispatchServer(t)
	client := ds.Client()
	// A fix puts taxi-0918 in Cebu.
	fix := protocol.Record{Seq: 1, Kind: protocol.KindFix, VehicleID: "taxi-0918", ReceivedAt: testNow,
		Fix: &protocol.Fix{Time: testNow, Lat: 10.3, Lon: 123.9}}
	if _, err := ds.store.CommitBatch(context.Background(), &protocol.Batch{
		AgentID: "agent-cebu", Region: "Cebu", SpoolID: "s", Lane: fix.Kind.Lane(), Records: []protocol.Record{fix}, SentAt: testNow,
	}); err != nil {
		t.Fatalf("commit fix: %v", err)
	}
	ids := map[string]int64{}
	for name, c := range map[string]string{
		"manila":  `{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"09171234567"}`,
		"cebu":    `{"name":"Ben Cruz","role":"responder","region":"Cebu","phone":"09181234567"}`,
		"vehicle": `{"name":"Cora Lim","role":"emergency","vehicle_id":"taxi-0918","phone":"09191234567"}`,
	} {
		code, body := requestAs(t, client, ds.URL, "admin", http.MethodPost, "/api/v1/contacts", c)
		var out struct{ Contact store.Contact }
		if err := json.Unmarshal([]byte(body), &out); err != nil || code != http.StatusCreated {
			t.Fatalf("POST %s contact = %d %s", name, code, body)
		}
		ids[name] = out.Contact.ID
	}

	code, body := requestAs(t, client, ds.URL, "cebu", http.MethodGet, "/api/v1/contacts", "")
	if code != http.StatusOK || !strings.Contains(body, "Ben Cruz") || !strings.Contains(body, "Cora Lim") || strings.Contains(body, "Ana Reyes") {
		t.Errorf("contacts as the Cebu supervisor = %d %s, want Ben Cruz and Cora Lim only", code, body)
	}
	code, body = requestAs(t, client, ds.URL, "cebu", http.MethodPost, "/api/v1/contacts",
		`{"name":"Dan Sy","role":"responder","region":"NCR-Manila","phone":"09201234567"}`)
	if code != http.StatusForbidden {
		t.Errorf("Cebu supervisor creating a Manila contact = %d %s, want 403", code, body)
	}
	manila := "/api/v1/contacts/" + strconv.FormatInt(ids["manila"], 10)
	unknown := "/api/v1/contacts/" + strconv.FormatInt(ids["manila"]+ids["cebu"]+ids["vehicle"]+10, 10)
	for _, method := range []string{http.MethodPut, http.MethodDelete} {
		body := `{"name":"Ana Reyes","role":"responder","region":"Cebu","phone":"09171234567"}`
		code, got := requestAs(t, client, ds.URL, "cebu", method, manila, body)
		_, want := requestAs(t, client, ds.URL, "cebu", method, unknown, body)
		if code != http.StatusNotFound || got != want {
			t.Errorf("%s of a Manila contact as the Cebu supervisor = %d %s, want the 404 of an unknown contact %s", method, code, got, want)
		}
	}
	code, body = requestAs(t, client, ds.URL, "admin", http.MethodGet, "/api/v1/contacts?region=NCR-Manila", "")
	if code != http.StatusOK || !strings.Contains(body, `"region":"NCR-Manila"`) {
		t.Errorf("Manila contact after the Cebu supervisor's attempts = %d %s, want it unchanged", code, body)
	}
	if code, body := requestAs(t, client, ds.URL, "cebu", http.MethodPut, "/api/v1/contacts/"+strconv.FormatInt(ids["cebu"], 10),
		`{"name":"Ben Cruz Jr","role":"responder","region":"Cebu","phone":"09181234567"}`); code != http.StatusOK {
		t.Errorf("Cebu supervisor changing a Cebu contact = %d %s, want 200", code, body)
	}
}

// TestStream_RefusesWithoutPrincipal checks that the stream responds 401
// to a request that carries no principal.
func TestStream_RefusesWithoutPrincipal(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, res, err := websocket.Dial(ctx, ts.streamURL(""), &websocket.DialOptions{HTTPHeader: http.Header{testPrincipalHeader: {"none"}}})
	if err == nil {
		conn.CloseNow()
		t.Fatal("stream without a principal opened, want 401")
	}
	if res == nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stream without a principal: %v, response %+v, want 401", err, res)
	}
}

// TestStream_FiltersEventsByRegion checks which events each principal's
// stream sends: its regions' events, and those of no region only to
// principals that see every region; resume points count the events left out.
func TestStream_FiltersEventsByRegion(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	clients := map[string]*streamClient{}
	for _, who := range []string{"cebu", "visayas", "admin"} {
		clients[who] = dialAs(t, ts.URL, who)
		clients[who].expect(t, "hello", 0)
	}
	for _, region := range []string{"NCR-Manila", "Cebu", "", "Iloilo", "Cebu"} {
		if _, err := ts.bus.PublishIn(region, events.TypeFix, map[string]string{"region": region}); err != nil {
			t.Fatal(err)
		}
	}
	for who, want := range map[string][]uint64{"cebu": {2, 5}, "visayas": {2, 4, 5}, "admin": {1, 2, 3, 4, 5}} {
		var got []uint64
		for _, f := range clients[who].readUntil(t, 5) {
			got = append(got, f.Seq)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s received seqs %v, want %v", who, got, want)
		}
	}
}

// waitClose waits for the stream to end and returns its close status and
// reason, or -1 when it ended without a close frame.
func waitClose(t *testing.T, c *streamClient) (websocket.StatusCode, string) {
	t.Helper()
	err := c.waitClosed(t)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		return -1, ""
	}
	return ce.Code, ce.Reason
}

// stillOpen checks that c still receives events, by publishing one in
// region and reading it.
func stillOpen(t *testing.T, bus *events.Bus, c *streamClient, region string) {
	t.Helper()
	ev, err := bus.PublishIn(region, events.TypeFix, map[string]string{"probe": region})
	if err != nil {
		t.Fatal(err)
	}
	c.readUntil(t, ev.Seq)
}

// TestStream_EndSessionStreams signs out one session: both of its streams
// close with 1008 "signed out" while the same operator's other session
// and another operator keep theirs.
func TestStream_EndSessionStreams(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	first := dialAs(t, ts.URL, "manila")
	second := dialAs(t, ts.URL, "manila")
	other := dialAs(t, ts.URL, "manila-2")
	cebu := dialAs(t, ts.URL, "cebu")
	for _, c := range []*streamClient{first, second, other, cebu} {
		c.expect(t, "hello", 0)
	}

	ts.api.EndSessionStreams("session-maria")
	for i, c := range []*streamClient{first, second} {
		if code, reason := waitClose(t, c); code != websocket.StatusPolicyViolation || reason != "signed out" {
			t.Errorf("stream %d of the signed-out session closed with %d %q, want 1008 \"signed out\"", i+1, code, reason)
		}
	}
	stillOpen(t, ts.bus, other, "NCR-Manila")
	stillOpen(t, ts.bus, cebu, "Cebu")
	eventually(t, "websocket_clients = 2", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 2
	})
}

// TestStream_EndOperatorStreams ends every stream of one operator, of
// two sessions and an API token, and none of another operator's.
func TestStream_EndOperatorStreams(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	mine := []*streamClient{dialAs(t, ts.URL, "manila"), dialAs(t, ts.URL, "manila-2"), dialAs(t, ts.URL, "manila-token")}
	cebu := dialAs(t, ts.URL, "cebu")
	admin := dialAs(t, ts.URL, "admin")
	for _, c := range append(slices.Clone(mine), cebu, admin) {
		c.expect(t, "hello", 0)
	}

	ts.api.EndOperatorStreams("maria")
	for i, c := range mine {
		if code, reason := waitClose(t, c); code != websocket.StatusPolicyViolation || reason != "signed out" {
			t.Errorf("stream %d of the operator closed with %d %q, want 1008 \"signed out\"", i+1, code, reason)
		}
	}
	stillOpen(t, ts.bus, cebu, "Cebu")
	stillOpen(t, ts.bus, admin, "NCR-Manila")

	// Empty names match nobody.
	ts.api.EndOperatorStreams("")
	ts.api.EndSessionStreams("")
	ts.api.EndTokenStreams(0)
	stillOpen(t, ts.bus, admin, "Cebu")
}

// TestStream_EndTokenStreams ends the stream of a revoked API token and
// none of its operator's session streams.
func TestStream_EndTokenStreams(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	token := dialAs(t, ts.URL, "manila-token")
	session := dialAs(t, ts.URL, "manila")
	token.expect(t, "hello", 0)
	session.expect(t, "hello", 0)

	ts.api.EndTokenStreams(testPrincipals["manila-token"].TokenID)
	if code, reason := waitClose(t, token); code != websocket.StatusPolicyViolation || reason != "signed out" {
		t.Errorf("stream of the revoked token closed with %d %q, want 1008 \"signed out\"", code, reason)
	}
	stillOpen(t, ts.bus, session, "NCR-Manila")
}

func TestRegionScope_EmergencyHealth(t *testing.T) {
	agents := []api.AgentState{
		{ID: "agent-cebu", Region: "Cebu"},
		{ID: "agent-ncr", Region: "NCR-Manila"},
	}
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.Agents = func() []api.AgentState { return slices.Clone(agents) }
	})
	ts.store.update(func(f *fakeStore) {
		for i, region := range []string{"NCR-Manila", "NCR-Manila", "Cebu"} {
			inc := sampleIncident(int64(i+1), fmt.Sprintf("VEH-%d", i), store.StateOpen, testNow.Add(-time.Minute))
			inc.Region = region
			f.incidents = append(f.incidents, inc)
		}
	})
	health := func(who string) (open int, offline []string) {
		code, body := requestAs(t, ts.Client(), ts.URL, who, http.MethodGet, "/api/emergency/health", "")
		var out struct {
			OpenUnacknowledged int      `json:"open_unacknowledged"`
			AgentsOffline      []string `json:"agents_offline"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil || code != http.StatusOK {
			t.Fatalf("emergency health as %s = %d %s", who, code, body)
		}
		return out.OpenUnacknowledged, out.AgentsOffline
	}

	open, offline := health("cebu")
	if open != 1 {
		t.Errorf("open incidents as the Cebu operator = %d, want 1 (Cebu's only)", open)
	}
	if !slices.Equal(offline, []string{"agent-cebu"}) {
		t.Errorf("offline agents as the Cebu operator = %v, want agent-cebu", offline)
	}
	open, offline = health("admin")
	if open != 3 {
		t.Errorf("open incidents as admin = %d, want 3", open)
	}
	if !slices.Equal(offline, []string{"agent-cebu", "agent-ncr"}) {
		t.Errorf("offline agents as admin = %v, want both", offline)
	}
}
