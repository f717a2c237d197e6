package notify

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeTwilio is an httptest server that serves the parts of Twilio's
// 2010-04-01 REST API the sender uses: creating and listing Messages and
// Calls. Replies for a destination number can be scripted.
type fakeTwilio struct {
	t          *testing.T
	srv        *httptest.Server
	accountSID string
	authToken  string

	mu       sync.Mutex
	clock    time.Time
	messages []*fakeRecord
	calls    []*fakeRecord
	replies  map[string]fakeReply // by destination number
	pageSize int                  // when positive, caps the PageSize of list replies
	requests []fakeRequest
}

// fakeRecord is a created Message or Call.
type fakeRecord struct {
	Sid            string
	To             string
	From           string
	Body           string
	Twiml          string
	StatusCallback string
	Events         []string
	Created        time.Time
}

// fakeReply scripts the reply to creating a message or call.
type fakeReply struct {
	status     int
	code       int    // Twilio error code in the JSON error body
	retryAfter string // Retry-After header
	rawBody    string // a body that is not Twilio's JSON error
	hang       bool   // never reply; wait for the client to give up
}

// fakeRequest is one request the fake received.
type fakeRequest struct {
	Method string
	Path   string
	Query  url.Values
	Form   url.Values
}

var fakeTwilioPath = regexp.MustCompile(`^/2010-04-01/Accounts/([^/]+)/(Messages|Calls)\.json$`)

func newFakeTwilio(t *testing.T) *fakeTwilio {
	t.Helper()
	f := &fakeTwilio{
		t:          t,
		accountSID: "AC" + randomHex(t, 16),
		authToken:  randomHex(t, 16),
		clock:      time.Date(2026, 12, 4, 14, 3, 0, 0, time.UTC),
		replies:    map[string]fakeReply{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// config returns a sender configuration that reaches only this fake.
func (f *fakeTwilio) config() TwilioConfig {
	return TwilioConfig{
		AccountSID:        f.accountSID,
		AuthToken:         f.authToken,
		From:              "+639170000001",
		BaseURL:           f.srv.URL,
		StatusCallbackURL: "https://hub.example.ph/api/v1/twilio/status",
		HTTPClient:        &http.Client{Transport: loopbackOnly{}},
		Timeout:           5 * time.Second,
	}
}

func (f *fakeTwilio) sender(t *testing.T) *Twilio {
	t.Helper()
	s, err := NewTwilio(f.config())
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	return s
}

func (f *fakeTwilio) setReply(to string, reply fakeReply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies[to] = reply
}

// advance moves the fake's clock, which stamps date_created.
func (f *fakeTwilio) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = f.clock.Add(d)
}

func (f *fakeTwilio) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clock
}

// addMessage stores a message as if an earlier run had sent it.
func (f *fakeTwilio) addMessage(r fakeRecord) *fakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.Sid = "SM" + randomHex(f.t, 16)
	f.messages = append(f.messages, &r)
	return &r
}

func (f *fakeTwilio) addCall(r fakeRecord) *fakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.Sid = "CA" + randomHex(f.t, 16)
	f.calls = append(f.calls, &r)
	return &r
}

func (f *fakeTwilio) snapshotMessages() []fakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fakeRecord, len(f.messages))
	for i, m := range f.messages {
		out[i] = *m
	}
	return out
}

func (f *fakeTwilio) snapshotCalls() []fakeRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fakeRecord, len(f.calls))
	for i, c := range f.calls {
		out[i] = *c
	}
	return out
}

func (f *fakeTwilio) requestLog() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

func (f *fakeTwilio) serve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		f.writeError(w, http.StatusBadRequest, 20001, "bad form: "+err.Error())
		return
	}
	f.mu.Lock()
	f.requests = append(f.requests, fakeRequest{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Form: r.PostForm})
	f.mu.Unlock()

	user, pass, ok := r.BasicAuth()
	if !ok || user != f.accountSID || pass != f.authToken {
		f.writeError(w, http.StatusUnauthorized, 20003, "Authenticate")
		return
	}
	m := fakeTwilioPath.FindStringSubmatch(r.URL.Path)
	if m == nil || m[1] != f.accountSID {
		f.writeError(w, http.StatusNotFound, 20404, "The requested resource "+r.URL.Path+" was not found")
		return
	}
	resource := m[2]

	switch r.Method {
	case http.MethodPost:
		f.create(w, r, resource)
	case http.MethodGet:
		f.list(w, r, resource)
	default:
		f.writeError(w, http.StatusMethodNotAllowed, 20004, "Method not allowed")
	}
}

func (f *fakeTwilio) create(w http.ResponseWriter, r *http.Request, resource string) {
	to := r.PostForm.Get("To")
	f.mu.Lock()
	reply, scripted := f.replies[to]
	f.mu.Unlock()
	if scripted {
		switch {
		case reply.hang:
			<-r.Context().Done()
			return
		case reply.rawBody != "":
			if reply.retryAfter != "" {
				w.Header().Set("Retry-After", reply.retryAfter)
			}
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(reply.status)
			_, _ = w.Write([]byte(reply.rawBody))
			return
		default:
			if reply.retryAfter != "" {
				w.Header().Set("Retry-After", reply.retryAfter)
			}
			f.writeError(w, reply.status, reply.code, fmt.Sprintf("scripted error %d for %s", reply.code, to))
			return
		}
	}

	rec := fakeRecord{
		To:             to,
		From:           r.PostForm.Get("From"),
		Body:           r.PostForm.Get("Body"),
		Twiml:          r.PostForm.Get("Twiml"),
		StatusCallback: r.PostForm.Get("StatusCallback"),
		Events:         r.PostForm["StatusCallbackEvent"],
		Created:        f.now(),
	}
	var stored *fakeRecord
	if resource == "Messages" {
		stored = f.addMessage(rec)
	} else {
		stored = f.addCall(rec)
	}
	f.writeJSON(w, http.StatusCreated, f.recordJSON(resource, stored))
}

func (f *fakeTwilio) list(w http.ResponseWriter, r *http.Request, resource string) {
	q := r.URL.Query()
	f.mu.Lock()
	records := f.messages
	if resource == "Calls" {
		records = f.calls
	}
	var matched []*fakeRecord
	for _, rec := range records {
		if (q.Get("To") == "" || rec.To == q.Get("To")) && (q.Get("From") == "" || rec.From == q.Get("From")) {
			matched = append(matched, rec)
		}
	}
	limit := f.pageSize
	f.mu.Unlock()

	// Twilio lists newest first.
	sort.SliceStable(matched, func(i, j int) bool { return matched[i].Created.After(matched[j].Created) })
	size, _ := strconv.Atoi(q.Get("PageSize"))
	if size <= 0 {
		size = 50
	}
	if limit > 0 && size > limit {
		size = limit
	}
	page, _ := strconv.Atoi(q.Get("Page"))
	start := min(page*size, len(matched))
	end := min(start+size, len(matched))

	items := []map[string]any{}
	for _, rec := range matched[start:end] {
		items = append(items, f.recordJSON(resource, rec))
	}
	base := fmt.Sprintf("/2010-04-01/Accounts/%s/%s.json", f.accountSID, resource)
	var next any
	if end < len(matched) {
		nq := url.Values{}
		for _, k := range []string{"To", "From"} {
			if q.Get(k) != "" {
				nq.Set(k, q.Get(k))
			}
		}
		nq.Set("PageSize", strconv.Itoa(size))
		nq.Set("Page", strconv.Itoa(page+1))
		nq.Set("PageToken", fmt.Sprintf("PA%d", end))
		next = base + "?" + nq.Encode()
	}
	key := "messages"
	if resource == "Calls" {
		key = "calls"
	}
	f.writeJSON(w, http.StatusOK, map[string]any{
		key:              items,
		"next_page_uri":  next,
		"page":           page,
		"page_size":      size,
		"start":          start,
		"end":            max(end-1, 0),
		"uri":            r.URL.RequestURI(),
		"first_page_uri": base + "?PageSize=" + strconv.Itoa(size) + "&Page=0",
	})
}

func (f *fakeTwilio) recordJSON(resource string, rec *fakeRecord) map[string]any {
	created := rec.Created.Format(time.RFC1123Z)
	out := map[string]any{
		"sid":          rec.Sid,
		"account_sid":  f.accountSID,
		"to":           rec.To,
		"from":         rec.From,
		"status":       "queued",
		"date_created": created,
		"date_updated": created,
		"api_version":  "2010-04-01",
	}
	if resource == "Messages" {
		out["body"] = rec.Body
		out["direction"] = "outbound-api"
		out["num_segments"] = "1"
		out["date_sent"] = nil
		out["error_code"] = nil
	} else {
		out["direction"] = "outbound-api"
		out["start_time"] = nil
	}
	return out
}

// writeError writes Twilio's JSON error shape.
func (f *fakeTwilio) writeError(w http.ResponseWriter, status, code int, message string) {
	f.writeJSON(w, status, map[string]any{
		"code":      code,
		"message":   message,
		"more_info": fmt.Sprintf("https://www.twilio.com/docs/errors/%d", code),
		"status":    status,
	})
}

func (f *fakeTwilio) writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(body); err != nil {
		f.t.Errorf("fake Twilio: writing reply: %v", err)
	}
}

// loopbackOnly is a transport that refuses every host but loopback, so
// that no test can reach the real Twilio API.
type loopbackOnly struct{}

func (loopbackOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Hostname()
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, errors.New("test transport refuses non-loopback host " + host)
	}
	return http.DefaultTransport.RoundTrip(req)
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("crypto/rand: %v", err)
	}
	return hex.EncodeToString(b)
}
