package dispatchtest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
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
	"strings"
	"sync"
	"testing"
	"time"
)

// Reply scripts the fake's reply to one create request for a number.
type Reply struct {
	// Status is the HTTP status of an error reply, such as 429 or 500.
	// Zero creates the message or call and replies 201.
	Status int
	// Code is the Twilio error code of an error reply, such as 21211.
	Code int
	// RetryAfter is the Retry-After header of an error reply.
	RetryAfter string
	// Hold creates the message or call, then holds the reply until
	// Release is called or the client goes away, as when a reply is lost
	// or the sender crashes before reading it.
	Hold bool
	// Hang creates nothing and never replies, until the client goes away.
	Hang bool
}

// Record is a message or call the fake created.
type Record struct {
	SID            string
	To             string
	From           string
	Body           string
	Twiml          string
	StatusCallback string
	Created        time.Time
}

// Twilio is a fake of the parts of Twilio's 2010-04-01 REST API that
// notify.Twilio uses: creating and listing Messages and Calls with
// HTTP basic auth. It listens on 127.0.0.1.
type Twilio struct {
	t          testing.TB
	srv        *httptest.Server
	AccountSID string
	AuthToken  string

	mu       sync.Mutex
	now      func() time.Time
	messages []*Record
	calls    []*Record
	replies  map[string][]Reply
	creates  map[string]int
	held     chan struct{}
	release  chan struct{}
}

var fakePath = regexp.MustCompile(`^/2010-04-01/Accounts/([^/]+)/(Messages|Calls)\.json$`)

// NewTwilio starts a fake Twilio with a random account SID and auth
// token, stamped by now (nil means time.Now), and closes it at cleanup.
func NewTwilio(t testing.TB, now func() time.Time) *Twilio {
	t.Helper()
	if now == nil {
		now = time.Now
	}
	f := &Twilio{
		t:          t,
		AccountSID: "AC" + RandomHex(t, 16),
		AuthToken:  RandomHex(t, 16),
		now:        now,
		replies:    map[string][]Reply{},
		creates:    map[string]int{},
		held:       make(chan struct{}, 16),
		release:    make(chan struct{}),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.Release()
		f.srv.Close()
	})
	return f
}

// URL returns the fake's base URL, for notify.TwilioConfig.BaseURL.
func (f *Twilio) URL() string { return f.srv.URL }

// Script queues replies for the next create requests to number; once
// they are used up, creates succeed.
func (f *Twilio) Script(number string, replies ...Reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies[number] = append(f.replies[number], replies...)
}

// Held returns a channel that receives once for every create reply that
// Hold keeps back, after the message or call was created.
func (f *Twilio) Held() <-chan struct{} { return f.held }

// Release lets every held reply go. It is safe to call more than once.
func (f *Twilio) Release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.release:
	default:
		close(f.release)
	}
}

// Messages returns the messages created, oldest first.
func (f *Twilio) Messages() []Record { return f.snapshot(&f.messages) }

// Calls returns the calls created, oldest first.
func (f *Twilio) Calls() []Record { return f.snapshot(&f.calls) }

// MessagesTo returns the messages created to number.
func (f *Twilio) MessagesTo(number string) []Record {
	var out []Record
	for _, m := range f.Messages() {
		if m.To == number {
			out = append(out, m)
		}
	}
	return out
}

// CallsTo returns the calls created to number.
func (f *Twilio) CallsTo(number string) []Record {
	var out []Record
	for _, c := range f.Calls() {
		if c.To == number {
			out = append(out, c)
		}
	}
	return out
}

// Creates returns how many create requests for number arrived, whatever
// their reply.
func (f *Twilio) Creates(number string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates[number]
}

func (f *Twilio) snapshot(list *[]*Record) []Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Record, len(*list))
	for i, r := range *list {
		out[i] = *r
	}
	return out
}

func (f *Twilio) serve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		f.writeError(w, http.StatusBadRequest, 20001, "bad form: "+err.Error())
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok || user != f.AccountSID || pass != f.AuthToken {
		f.writeError(w, http.StatusUnauthorized, 20003, "Authenticate")
		return
	}
	m := fakePath.FindStringSubmatch(r.URL.Path)
	if m == nil || m[1] != f.AccountSID {
		f.writeError(w, http.StatusNotFound, 20404, "The requested resource "+r.URL.Path+" was not found")
		return
	}
	switch r.Method {
	case http.MethodPost:
		f.create(w, r, m[2])
	case http.MethodGet:
		f.list(w, r, m[2])
	default:
		f.writeError(w, http.StatusMethodNotAllowed, 20004, "Method not allowed")
	}
}

func (f *Twilio) create(w http.ResponseWriter, r *http.Request, resource string) {
	to := r.PostForm.Get("To")
	f.mu.Lock()
	f.creates[to]++
	var reply Reply
	if queue := f.replies[to]; len(queue) > 0 {
		reply, f.replies[to] = queue[0], queue[1:]
	}
	f.mu.Unlock()

	switch {
	case reply.Hang:
		<-r.Context().Done()
		return
	case reply.Status != 0:
		if reply.RetryAfter != "" {
			w.Header().Set("Retry-After", reply.RetryAfter)
		}
		f.writeError(w, reply.Status, reply.Code, fmt.Sprintf("scripted error %d for %s", reply.Code, to))
		return
	}

	rec := &Record{
		To:             to,
		From:           r.PostForm.Get("From"),
		Body:           r.PostForm.Get("Body"),
		Twiml:          r.PostForm.Get("Twiml"),
		StatusCallback: r.PostForm.Get("StatusCallback"),
		Created:        f.now(),
	}
	f.mu.Lock()
	if resource == "Messages" {
		rec.SID = "SM" + RandomHex(f.t, 16)
		f.messages = append(f.messages, rec)
	} else {
		rec.SID = "CA" + RandomHex(f.t, 16)
		f.calls = append(f.calls, rec)
	}
	f.mu.Unlock()

	if reply.Hold {
		select {
		case f.held <- struct{}{}:
		default:
		}
		select {
		case <-f.release:
		case <-r.Context().Done():
			return
		}
	}
	f.writeJSON(w, http.StatusCreated, f.recordJSON(resource, rec))
}

func (f *Twilio) list(w http.ResponseWriter, r *http.Request, resource string) {
	q := r.URL.Query()
	f.mu.Lock()
	records := f.messages
	if resource == "Calls" {
		records = f.calls
	}
	var matched []*Record
	for _, rec := range records {
		if (q.Get("To") == "" || rec.To == q.Get("To")) && (q.Get("From") == "" || rec.From == q.Get("From")) {
			matched = append(matched, rec)
		}
	}
	f.mu.Unlock()

	// Twilio lists newest first.
	sort.SliceStable(matched, func(i, j int) bool { return matched[i].Created.After(matched[j].Created) })
	size, _ := strconv.Atoi(q.Get("PageSize"))
	if size <= 0 {
		size = 50
	}
	page, _ := strconv.Atoi(q.Get("Page"))
	start := min(page*size, len(matched))
	end := min(start+size, len(matched))

	items := []map[string]any{}
	for _, rec := range matched[start:end] {
		items = append(items, f.recordJSON(resource, rec))
	}
	base := fmt.Sprintf("/2010-04-01/Accounts/%s/%s.json", f.AccountSID, resource)
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
		next = base + "?" + nq.Encode()
	}
	key := strings.ToLower(resource)
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

func (f *Twilio) recordJSON(resource string, rec *Record) map[string]any {
	created := rec.Created.UTC().Format(time.RFC1123Z)
	out := map[string]any{
		"sid":          rec.SID,
		"account_sid":  f.AccountSID,
		"to":           rec.To,
		"from":         rec.From,
		"status":       "queued",
		"date_created": created,
		"date_updated": created,
		"api_version":  "2010-04-01",
		"direction":    "outbound-api",
	}
	if resource == "Messages" {
		out["body"] = rec.Body
		out["num_segments"] = "1"
	}
	return out
}

func (f *Twilio) writeError(w http.ResponseWriter, status, code int, message string) {
	f.writeJSON(w, status, map[string]any{
		"code":      code,
		"message":   message,
		"more_info": fmt.Sprintf("https://www.twilio.com/docs/errors/%d", code),
		"status":    status,
	})
}

func (f *Twilio) writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// SignTwilio returns the X-Twilio-Signature Twilio sends with a POST of
// form to fullURL: the Base64 HMAC-SHA1, keyed with the auth token, of
// the URL followed by each parameter's name and first value in name
// order.
func SignTwilio(authToken, fullURL string, form url.Values) string {
	names := make([]string, 0, len(form))
	for name := range form {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(fullURL)
	for _, name := range names {
		b.WriteString(name)
		if v := form[name]; len(v) > 0 {
			b.WriteString(v[0])
		}
	}
	mac := hmac.New(sha1.New, []byte(authToken))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// LoopbackClient returns an HTTP client whose transport refuses every
// host but a loopback address, so that no test reaches a real provider.
func LoopbackClient() *http.Client { return &http.Client{Transport: loopbackOnly{}} }

type loopbackOnly struct{}

func (loopbackOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Hostname()
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, errors.New("test transport rejects non-loopback host " + host)
	}
	return http.DefaultTransport.RoundTrip(req)
}

// RandomHex returns n random bytes in hex.
func RandomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("crypto/rand: %v", err)
	}
	return hex.EncodeToString(b)
}
