package notify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	netmail "net/mail"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpServer is a real SMTP server (go-smtp) on 127.0.0.1 port 0 that
// stores what it receives and replies with errors for scripted
// recipients:
//
//	busy@…      451 at RCPT TO
//	nobody@…    550 at RCPT TO
//	greylist@…  451 after the data
//	spam@…      554 after the data
//	hang@…      calls onData, then holds the reply to the data
type smtpServer struct {
	addr     string
	port     int
	username string
	password string
	tlsMode  TLSMode
	certPool *x509.CertPool

	mu          sync.Mutex
	delivered   []smtpDelivery
	connections int
	onData      func()
	release     chan struct{}
}

// smtpDelivery is one message the server accepted.
type smtpDelivery struct {
	From string
	To   []string
	Data []byte
	TLS  bool
	User string
}

type smtpServerOptions struct {
	tlsMode  TLSMode // TLSNone, TLSStartTLS (offered) or TLSImplicit
	username string  // when set, AUTH PLAIN is required
	password string
}

func startSMTPServer(t *testing.T, opts smtpServerOptions) *smtpServer {
	t.Helper()
	s := &smtpServer{username: opts.username, password: opts.password, tlsMode: opts.tlsMode, release: make(chan struct{})}
	be := smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.connections++
		s.mu.Unlock()
		return &smtpSession{server: s, conn: c}, nil
	})
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = opts.tlsMode == TLSNone
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.ErrorLog = testLogger{t}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	if opts.tlsMode != TLSNone {
		cert, pool := selfSignedCert(t)
		s.certPool = pool
		tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if opts.tlsMode == TLSImplicit {
			ln = tls.NewListener(ln, tlsConfig)
		} else {
			srv.TLSConfig = tlsConfig
		}
	}
	s.addr = ln.Addr().String()
	s.port = ln.Addr().(*net.TCPAddr).Port
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		close(s.release)
		_ = srv.Close()
	})
	return s
}

// config returns a sender configuration for this server.
func (s *smtpServer) config() SMTPConfig {
	cfg := SMTPConfig{
		Host:     "127.0.0.1",
		Port:     s.port,
		Username: s.username,
		Password: s.password,
		From:     "Xpress Ops Tower <alerts@ops.example.ph>",
		TLS:      s.tlsMode,
		Timeout:  5 * time.Second,
	}
	if s.certPool != nil {
		cfg.TLSConfig = &tls.Config{RootCAs: s.certPool, MinVersion: tls.VersionTLS12}
	}
	return cfg
}

func (s *smtpServer) sender(t *testing.T) *SMTP {
	t.Helper()
	sender, err := NewSMTP(s.config())
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	return sender
}

func (s *smtpServer) deliveries() []smtpDelivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]smtpDelivery(nil), s.delivered...)
}

func (s *smtpServer) connectionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

type smtpSession struct {
	server *smtpServer
	conn   *smtp.Conn
	user   string
	from   string
	to     []string
}

func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != s.server.username || password != s.server.password {
			return smtp.ErrAuthFailed
		}
		s.user = username
		return nil
	}), nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.server.username != "" && s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "busy@"):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "Mailbox busy, try later"}
	case strings.HasPrefix(to, "nobody@"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	switch {
	case slicesHasPrefix(s.to, "greylist@"):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted, try again"}
	case slicesHasPrefix(s.to, "spam@"):
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Message rejected as spam"}
	case slicesHasPrefix(s.to, "hang@"):
		s.server.mu.Lock()
		onData := s.server.onData
		s.server.mu.Unlock()
		if onData != nil {
			onData()
		}
		<-s.server.release
		return errors.New("released")
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.server.mu.Lock()
	s.server.delivered = append(s.server.delivered, smtpDelivery{From: s.from, To: s.to, Data: data, TLS: isTLS, User: s.user})
	s.server.mu.Unlock()
	return nil
}

func (s *smtpSession) Reset() { s.from, s.to = "", nil }

func (s *smtpSession) Logout() error { return nil }

func slicesHasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

type testLogger struct{ t *testing.T }

func (l testLogger) Printf(format string, v ...any) { l.t.Logf("smtp server: "+format, v...) }
func (l testLogger) Println(v ...any)               { l.t.Log(append([]any{"smtp server:"}, v...)...) }

// selfSignedCert makes a certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSignedCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "notify test SMTP"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("creating certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parsing certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// parsedMail is a received message with its text body decoded.
type parsedMail struct {
	header netmail.Header
	body   string
}

func parseMail(t *testing.T, data []byte) parsedMail {
	t.Helper()
	m, err := netmail.ReadMessage(strings.NewReader(string(data)))
	if err != nil {
		t.Fatalf("received message does not parse: %v\n%s", err, data)
	}
	var r io.Reader = m.Body
	if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		r = quotedprintable.NewReader(m.Body)
	}
	body, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return parsedMail{header: m.Header, body: strings.ReplaceAll(string(body), "\r\n", "\n")}
}

func (p parsedMail) decoded(t *testing.T, name string) string {
	t.Helper()
	v, err := new(mime.WordDecoder).DecodeHeader(p.header.Get(name))
	if err != nil {
		t.Fatalf("decoding header %s: %v", name, err)
	}
	return v
}

func TestSMTPSendPlainText(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSNone})
	s := srv.sender(t)

	d := sampleAlert()
	d.Audience = AudienceContacts
	d.Note = "Nasa Parañaque, malapit sa terminal"
	subject, body := RenderAlertEmail(Filipino, d)
	key := "incident-12/email/maria@example.ph"
	msg := Message{Channel: ChannelEmail, To: "Maria Santos <maria@example.ph>", Subject: subject, Text: body, Key: key}

	res, err := s.Send(context.Background(), msg)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.deliveries()
	if len(got) != 1 {
		t.Fatalf("server accepted %d messages, want 1", len(got))
	}
	if got[0].From != "alerts@ops.example.ph" || len(got[0].To) != 1 || got[0].To[0] != "maria@example.ph" {
		t.Errorf("envelope MAIL FROM %q RCPT TO %v", got[0].From, got[0].To)
	}
	mail := parseMail(t, got[0].Data)
	if s := mail.decoded(t, "Subject"); s != subject {
		t.Errorf("Subject = %q, want %q", s, subject)
	}
	if from := mail.decoded(t, "From"); !strings.Contains(from, "alerts@ops.example.ph") || !strings.Contains(from, "Xpress Ops Tower") {
		t.Errorf("From = %q", from)
	}
	if to := mail.decoded(t, "To"); !strings.Contains(to, "maria@example.ph") {
		t.Errorf("To = %q", to)
	}
	wantID := "<" + s.MessageID(key) + ">"
	if mail.header.Get("Message-ID") != wantID || res.ProviderID != wantID {
		t.Errorf("Message-ID = %q, ProviderID = %q, want %q", mail.header.Get("Message-ID"), res.ProviderID, wantID)
	}
	if !strings.HasPrefix(wantID, "<xot-") || !strings.HasSuffix(wantID, "@ops.example.ph>") {
		t.Errorf("Message-ID %q is not xot-<hash>@<From domain>", wantID)
	}
	if mail.header.Get("Auto-Submitted") != "auto-generated" {
		t.Errorf("Auto-Submitted = %q", mail.header.Get("Auto-Submitted"))
	}
	if ct := mail.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || !strings.Contains(strings.ToLower(ct), "utf-8") {
		t.Errorf("Content-Type = %q, want text/plain in UTF-8", ct)
	}
	if mail.header.Get("Date") == "" {
		t.Error("no Date header")
	}
	if strings.TrimSpace(mail.body) != strings.TrimSpace(body) {
		t.Errorf("body =\n%s\nwant\n%s", mail.body, body)
	}
	if got[0].TLS || got[0].User != "" {
		t.Errorf("TLS=%v user=%q on a plain connection without credentials", got[0].TLS, got[0].User)
	}

	// Sending the same notification again repeats its Message-ID.
	if _, err := s.Send(context.Background(), msg); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	again := parseMail(t, srv.deliveries()[1].Data)
	if again.header.Get("Message-ID") != wantID {
		t.Errorf("resent Message-ID = %q, want %q", again.header.Get("Message-ID"), wantID)
	}
}

func TestSMTPSendSTARTTLSWithAuth(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSStartTLS, username: "ops", password: randomHex(t, 12)})
	s := srv.sender(t)
	if _, err := s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Subject: "SOS", Text: "body", Key: "k"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.deliveries()
	if len(got) != 1 || !got[0].TLS || got[0].User != "ops" {
		t.Fatalf("deliveries = %+v, want one over TLS as user ops", got)
	}
}

func TestSMTPSendImplicitTLSWithAuth(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSImplicit, username: "ops", password: randomHex(t, 12)})
	s := srv.sender(t)
	if _, err := s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Subject: "SOS", Text: "body", Key: "k"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.deliveries()
	if len(got) != 1 || !got[0].TLS || got[0].User != "ops" {
		t.Fatalf("deliveries = %+v, want one over TLS as user ops", got)
	}
}

func TestSMTPSendReplyCodes(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSNone})
	s := srv.sender(t)
	cases := []struct {
		to        string
		permanent bool
		code      int
	}{
		{"busy@example.ph", false, 451},
		{"nobody@example.ph", true, 550},
		{"greylist@example.ph", false, 451},
		{"spam@example.ph", true, 554},
	}
	for _, c := range cases {
		t.Run(c.to, func(t *testing.T) {
			_, err := s.Send(context.Background(), Message{Channel: ChannelEmail, To: c.to, Subject: "SOS", Text: "body"})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Send = %v, want *Error", err)
			}
			if e.Permanent != c.permanent || e.Code != c.code {
				t.Errorf("Error = {Permanent:%v Code:%d}, want {%v %d}: %v", e.Permanent, e.Code, c.permanent, c.code, err)
			}
			if e.Unknown {
				t.Errorf("a reply code was received, yet Unknown is set: %v", err)
			}
			if !strings.Contains(err.Error(), c.to) {
				t.Errorf("error %q does not name the recipient", err)
			}
		})
	}
	if n := len(srv.deliveries()); n != 0 {
		t.Errorf("server stored %d rejected messages", n)
	}
}

func TestSMTPSendWrongPassword(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSStartTLS, username: "ops", password: randomHex(t, 12)})
	cfg := srv.config()
	cfg.Password = "wrong"
	s, err := NewSMTP(cfg)
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Text: "body"})
	var e *Error
	if !errors.As(err, &e) || !e.Permanent || e.Code != 535 {
		t.Fatalf("Send with a wrong password = %v, want a permanent 535", err)
	}
}

func TestSMTPSendUntrustedCertificate(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSStartTLS})
	cfg := srv.config()
	cfg.TLSConfig = nil // system roots do not know the test certificate
	s, err := NewSMTP(cfg)
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Text: "body"})
	if !IsPermanent(err) {
		t.Fatalf("Send to an untrusted certificate = %v, want a permanent error", err)
	}
	if n := len(srv.deliveries()); n != 0 {
		t.Errorf("server stored %d messages over an untrusted connection", n)
	}
}

func TestSMTPSendConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s, err := NewSMTP(SMTPConfig{Host: "127.0.0.1", Port: port, From: "alerts@ops.example.ph", TLS: TLSNone, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Text: "body"})
	var e *Error
	if !errors.As(err, &e) || e.Permanent || e.Unknown {
		t.Fatalf("Send to a closed port = %v, want a transient error with a known outcome", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:"+strconv.Itoa(port)) {
		t.Errorf("error %q does not name the server", err)
	}
}

func TestSMTPSendSilentServerTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			// Accept and never greet.
			t.Cleanup(func() { conn.Close() })
		}
	}()
	s, err := NewSMTP(SMTPConfig{Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port, From: "alerts@ops.example.ph", TLS: TLSNone, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Text: "body"})
	if err == nil || IsPermanent(err) || IsUnknownOutcome(err) {
		t.Fatalf("Send to a silent server = %v, want a transient error with a known outcome", err)
	}
}

func TestSMTPSendCanceledAfterData(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSNone})
	s := srv.sender(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.mu.Lock()
	srv.onData = cancel // the server has the whole message, then the sender gives up
	srv.mu.Unlock()

	_, err := s.Send(ctx, Message{Channel: ChannelEmail, To: "hang@example.ph", Text: "body"})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Send = %v, want *Error", err)
	}
	if e.Permanent || !e.Unknown {
		t.Errorf("canceled while waiting for the reply to the data: Permanent=%v Unknown=%v, want transient with an unknown outcome (%v)", e.Permanent, e.Unknown, err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v does not match context.Canceled", err)
	}
}

func TestSMTPSendRejectsBadMessage(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSNone})
	s := srv.sender(t)
	cases := []struct {
		name string
		msg  Message
		want string
	}{
		{"not an address", Message{Channel: ChannelEmail, To: "maria at example", Text: "x"}, "not an email address"},
		{"two addresses", Message{Channel: ChannelEmail, To: "a@example.ph, b@example.ph", Text: "x"}, "not an email address"},
		{"no text", Message{Channel: ChannelEmail, To: "a@example.ph", Text: " \n"}, "has no text"},
		{"SMS channel", Message{Channel: ChannelSMS, To: "a@example.ph", Text: "x"}, `cannot send channel "sms"`},
	}
	for _, c := range cases {
		_, err := s.Send(context.Background(), c.msg)
		if !IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Send = %v, want a permanent error containing %q", c.name, err, c.want)
		}
	}
	if n := srv.connectionCount(); n != 0 {
		t.Errorf("sender opened %d connections for messages that cannot be sent", n)
	}
}

func TestSMTPSendSubjectCannotInjectHeaders(t *testing.T) {
	srv := startSMTPServer(t, smtpServerOptions{tlsMode: TLSNone})
	s := srv.sender(t)
	_, err := s.Send(context.Background(), Message{Channel: ChannelEmail, To: "ops@example.ph", Subject: "SOS\r\nBcc: thief@example.com", Text: "body"})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.deliveries()
	mail := parseMail(t, got[0].Data)
	if mail.header.Get("Bcc") != "" || len(got[0].To) != 1 {
		t.Errorf("subject injected a header: Bcc=%q recipients=%v", mail.header.Get("Bcc"), got[0].To)
	}
	if s := mail.decoded(t, "Subject"); s != "SOS Bcc: thief@example.com" {
		t.Errorf("Subject = %q, want the line break turned into a space", s)
	}
}

func TestNewSMTPRejectsBadConfig(t *testing.T) {
	good := SMTPConfig{Host: "smtp.example.ph", From: "alerts@ops.example.ph"}
	cases := []struct {
		name   string
		change func(*SMTPConfig)
		want   string
	}{
		{"no host", func(c *SMTPConfig) { c.Host = "" }, "Host is required"},
		{"bad mode", func(c *SMTPConfig) { c.TLS = "ssl" }, `TLS mode "ssl" is invalid`},
		{"bad port", func(c *SMTPConfig) { c.Port = 70000 }, "out of range"},
		{"password without user", func(c *SMTPConfig) { c.Password = "x" }, "Username is empty"},
		{"credentials in clear", func(c *SMTPConfig) { c.TLS, c.Username, c.Password = TLSNone, "u", "p" }, "refusing to send credentials"},
		{"bad from", func(c *SMTPConfig) { c.From = "alerts" }, "not an email address"},
	}
	for _, c := range cases {
		cfg := good
		c.change(&cfg)
		if _, err := NewSMTP(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: NewSMTP error = %v, want one containing %q", c.name, err, c.want)
		}
	}

	s, err := NewSMTP(good)
	if err != nil {
		t.Fatalf("NewSMTP(good): %v", err)
	}
	if s.mode != TLSStartTLS || s.port != 587 {
		t.Errorf("defaults: mode %q port %d, want starttls 587", s.mode, s.port)
	}
	for mode, port := range map[TLSMode]int{TLSNone: 25, TLSImplicit: 465} {
		cfg := good
		cfg.TLS = mode
		s, err := NewSMTP(cfg)
		if err != nil || s.port != port {
			t.Errorf("mode %q: port %d, err %v; want %d", mode, s.port, err, port)
		}
	}
	// Credentials in clear text are allowed to a loopback relay.
	if _, err := NewSMTP(SMTPConfig{Host: "127.0.0.1", From: "a@b.ph", TLS: TLSNone, Username: "u", Password: "p"}); err != nil {
		t.Errorf("loopback relay with credentials: %v", err)
	}
}
