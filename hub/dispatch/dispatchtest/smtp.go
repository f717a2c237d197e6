package dispatchtest

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	smtp "github.com/emersion/go-smtp"
)

// Mail is one message the SMTP server accepted.
type Mail struct {
	From string
	To   []string
	Data string
}

// SMTPServer is a local SMTP server (emersion/go-smtp) on 127.0.0.1 that
// keeps every accepted message and can reject recipients with scripted
// reply codes.
type SMTPServer struct {
	srv *smtp.Server
	ln  net.Listener

	mu      sync.Mutex
	mails   []Mail
	rejects map[string][]int
	rcpts   map[string]int
}

// NewSMTPServer starts a server without TLS or authentication and closes
// it at cleanup.
func NewSMTPServer(t testing.TB) *SMTPServer {
	t.Helper()
	s := &SMTPServer{rejects: map[string][]int{}, rcpts: map[string]int{}}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &smtpSession{server: s}, nil
	}))
	s.srv.Domain = "localhost"
	s.srv.ReadTimeout = 10 * time.Second
	s.srv.WriteTimeout = 10 * time.Second
	s.srv.MaxMessageBytes = 1 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen for SMTP: %v", err)
	}
	s.ln = ln
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(func() { _ = s.srv.Close() })
	return s
}

// Host and Port return the server's address.
func (s *SMTPServer) Host() string { return "127.0.0.1" }

// Port returns the server's port.
func (s *SMTPServer) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Addr returns host:port.
func (s *SMTPServer) Addr() string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }

// Reject makes the next RCPT TO commands for address fail with the given
// SMTP reply codes, one per command, such as 451 (transient) or 550
// (permanent).
func (s *SMTPServer) Reject(address string, codes ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejects[strings.ToLower(address)] = append(s.rejects[strings.ToLower(address)], codes...)
}

// Mails returns the accepted messages, oldest first.
func (s *SMTPServer) Mails() []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mail(nil), s.mails...)
}

// MailsTo returns the accepted messages with address among the
// recipients.
func (s *SMTPServer) MailsTo(address string) []Mail {
	var out []Mail
	for _, m := range s.Mails() {
		for _, to := range m.To {
			if strings.EqualFold(to, address) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// RcptAttempts returns how many RCPT TO commands named address.
func (s *SMTPServer) RcptAttempts(address string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rcpts[strings.ToLower(address)]
}

type smtpSession struct {
	server *SMTPServer
	from   string
	to     []string
}

func (s *smtpSession) Reset()        { s.from, s.to = "", nil }
func (s *smtpSession) Logout() error { return nil }

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	key := strings.ToLower(to)
	srv := s.server
	srv.mu.Lock()
	srv.rcpts[key]++
	var code int
	if queue := srv.rejects[key]; len(queue) > 0 {
		code, srv.rejects[key] = queue[0], queue[1:]
	}
	srv.mu.Unlock()
	if code != 0 {
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCodeNotSet, Message: "scripted rejection of " + to}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(s.to) == 0 {
		return errors.New("no recipients")
	}
	s.server.mu.Lock()
	s.server.mails = append(s.server.mails, Mail{From: s.from, To: append([]string(nil), s.to...), Data: string(data)})
	s.server.mu.Unlock()
	return nil
}
