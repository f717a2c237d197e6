package notify

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"net/textproto"
	"strconv"
	"strings"
	"time"
	"unicode"

	mail "github.com/wneessen/go-mail"
)

// TLSMode is the protection of the SMTP sender's connection.
type TLSMode string

// TLS modes.
const (
	// TLSNone sends in clear text. Credentials are then allowed only to a
	// loopback host.
	TLSNone TLSMode = "none"
	// TLSStartTLS connects in clear text and requires STARTTLS before
	// anything else is sent (usually port 587).
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit speaks TLS from the first byte (usually port 465).
	TLSImplicit TLSMode = "tls"
)

// DefaultSMTPTimeout bounds one SMTP exchange, from dial to QUIT.
const DefaultSMTPTimeout = 30 * time.Second

// SMTPConfig configures an SMTP sender.
type SMTPConfig struct {
	// Host is the SMTP server's host name or IP address. Required.
	Host string
	// Port is the server's port. Zero means 25 for TLSNone, 587 for
	// TLSStartTLS and 465 for TLSImplicit.
	Port int
	// Username and Password, when Username is set, log in with SMTP AUTH
	// PLAIN. Load the password from the environment or a file, never
	// from a flag.
	Username string
	Password string
	// From is the sender, e.g. "Xpress Ops Tower <alerts@example.ph>".
	// Required.
	From string
	// TLS is the connection's protection. Empty means TLSStartTLS.
	TLS TLSMode
	// TLSConfig overrides the TLS settings, e.g. to trust a private CA.
	// Nil means the system roots and ServerName = Host.
	TLSConfig *tls.Config
	// Timeout bounds one whole exchange and each command in it. Zero
	// means DefaultSMTPTimeout.
	Timeout time.Duration
	// Logger receives a line per send. Nil means discard.
	Logger *slog.Logger
}

// SMTP sends plain-text email with go-mail, one connection per message.
// It is safe for concurrent use.
type SMTP struct {
	host      string
	port      int
	username  string
	password  string
	fromName  string
	fromAddr  string
	msgDomain string
	mode      TLSMode
	tlsConfig *tls.Config
	timeout   time.Duration
	log       *slog.Logger
}

var _ Sender = (*SMTP)(nil)

// NewSMTP checks cfg and returns a sender. It does not connect.
func NewSMTP(cfg SMTPConfig) (*SMTP, error) {
	if cfg.Host == "" {
		return nil, errors.New("smtp: Host is required")
	}
	mode := cfg.TLS
	if mode == "" {
		mode = TLSStartTLS
	}
	port := cfg.Port
	switch mode {
	case TLSNone:
		if port == 0 {
			port = 25
		}
	case TLSStartTLS:
		if port == 0 {
			port = 587
		}
	case TLSImplicit:
		if port == 0 {
			port = 465
		}
	default:
		return nil, fmt.Errorf("smtp: TLS mode %q is invalid: use %q, %q or %q", cfg.TLS, TLSNone, TLSStartTLS, TLSImplicit)
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("smtp: Port %d is out of range 1-65535", cfg.Port)
	}
	if cfg.Username == "" && cfg.Password != "" {
		return nil, errors.New("smtp: Password is set but Username is empty")
	}
	if cfg.Username != "" && mode == TLSNone && !isLoopbackHost(cfg.Host) {
		return nil, fmt.Errorf("smtp: refusing to send credentials to %s in clear text: set TLS to %q or %q", cfg.Host, TLSStartTLS, TLSImplicit)
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("smtp: From %q is not an email address: %w", truncateForError(cfg.From), err)
	}

	s := &SMTP{
		host:      cfg.Host,
		port:      port,
		username:  cfg.Username,
		password:  cfg.Password,
		fromName:  from.Name,
		fromAddr:  from.Address,
		msgDomain: "xpress.invalid",
		mode:      mode,
		timeout:   cfg.Timeout,
		log:       cfg.Logger,
	}
	if at := strings.LastIndexByte(from.Address, '@'); at >= 0 && at < len(from.Address)-1 {
		s.msgDomain = from.Address[at+1:]
	}
	if cfg.TLSConfig != nil {
		s.tlsConfig = cfg.TLSConfig.Clone()
	} else {
		s.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if s.tlsConfig.ServerName == "" {
		s.tlsConfig.ServerName = cfg.Host
	}
	if s.timeout <= 0 {
		s.timeout = DefaultSMTPTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// MessageID returns the Message-ID, without angle brackets, that the
// sender gives the email with idempotency key key: "xot-", 32 hex digits
// of the key's SHA-256 hash, "@" and the domain of From. Resending the
// same notification repeats the Message-ID, so mail clients can show it
// once.
func (s *SMTP) MessageID(key string) string {
	var id string
	if key == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	} else {
		sum := sha256.Sum256([]byte(key))
		id = hex.EncodeToString(sum[:16])
	}
	return "xot-" + id + "@" + s.msgDomain
}

// Send emails msg.Text as a plain-text body with msg.Subject to msg.To.
// SMTP replies 4xx are transient errors and 5xx permanent ones, with the
// reply code in Error.Code. The ProviderID is the Message-ID in angle brackets.
func (s *SMTP) Send(ctx context.Context, msg Message) (Result, error) {
	res, err := s.send(ctx, msg)
	if err != nil {
		attrs := []any{"key", msg.Key, "permanent", IsPermanent(err), "unknown_outcome", IsUnknownOutcome(err), "err", err}
		var e *Error
		if errors.As(err, &e) {
			attrs = append(attrs, "code", e.Code)
		}
		s.log.Warn("smtp send failed", attrs...)
		return Result{}, err
	}
	s.log.Info("smtp accepted notification", "key", msg.Key, "message_id", res.ProviderID)
	return res, nil
}

func (s *SMTP) send(ctx context.Context, msg Message) (Result, error) {
	if msg.Channel != ChannelEmail {
		return Result{}, invalidMessage("smtp: cannot send channel %q: use %q", msg.Channel, ChannelEmail)
	}
	to, err := netmail.ParseAddress(msg.To)
	if err != nil {
		return Result{}, invalidMessage("smtp: recipient %q is not an email address: %w", truncateForError(msg.To), err)
	}
	if strings.TrimSpace(msg.Text) == "" {
		return Result{}, invalidMessage("smtp: email to %s has no text", to.Address)
	}

	m := mail.NewMsg(mail.WithNoDefaultUserAgent())
	if err := m.FromFormat(s.fromName, s.fromAddr); err != nil {
		return Result{}, invalidMessage("smtp: sender %q: %w", s.fromAddr, err)
	}
	if err := m.AddToFormat(to.Name, to.Address); err != nil {
		return Result{}, invalidMessage("smtp: recipient %q: %w", to.Address, err)
	}
	subject := headerText(msg.Subject)
	if subject == "" {
		subject = "Xpress Ops Tower notification"
	}
	m.Subject(subject)
	messageID := s.MessageID(msg.Key)
	m.SetMessageIDWithValue(messageID)
	m.SetDate()
	// RFC 3834: an automatic message, so auto-responders stay quiet.
	m.SetGenHeader(mail.Header("Auto-Submitted"), "auto-generated")
	m.SetBodyString(mail.TypeTextPlain, msg.Text)

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var stopClose func() bool
	defer func() {
		if stopClose != nil {
			stopClose()
		}
	}()
	dial := func(dialCtx context.Context, network, address string) (net.Conn, error) {
		var dialer net.Dialer
		raw, err := dialer.DialContext(dialCtx, network, address)
		if err != nil {
			return nil, err
		}
		// go-mail watches ctx only while dialing, so closing the connection
		// ends a later command when ctx is done.
		stopClose = context.AfterFunc(ctx, func() { _ = raw.Close() })
		if s.mode != TLSImplicit {
			return raw, nil
		}
		conn := tls.Client(raw, s.tlsConfig)
		if err := conn.HandshakeContext(dialCtx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return conn, nil
	}

	opts := []mail.Option{
		mail.WithPort(s.port),
		mail.WithTimeout(s.timeout),
		mail.WithTLSConfig(s.tlsConfig),
		mail.WithDialContextFunc(dial),
	}
	switch s.mode {
	case TLSNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case TLSStartTLS:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case TLSImplicit:
		opts = append(opts, mail.WithSSL(), mail.WithTLSPolicy(mail.NoTLS))
	}
	if s.username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthPlain), mail.WithUsername(s.username), mail.WithPassword(s.password))
	}
	client, err := mail.NewClient(s.host, opts...)
	if err != nil {
		return Result{}, &Error{Permanent: true, Err: fmt.Errorf("smtp: configuring client for %s: %w", s.host, err)}
	}

	err = client.DialAndSendWithContext(ctx, m)
	if m.IsDelivered() {
		// The server accepted the message. A failed RSET or QUIT after
		// that does not undo the delivery.
		return Result{ProviderID: "<" + messageID + ">", Status: "accepted"}, nil
	}
	if err == nil {
		return Result{}, &Error{Unknown: true, Err: fmt.Errorf("smtp: email to %s via %s: go-mail reported neither success nor an error", to.Address, s.host)}
	}
	e := classifySMTP(fmt.Sprintf("smtp: email to %s via %s", to.Address, s.server()), err)
	if ctxErr := ctx.Err(); ctxErr != nil {
		// go-mail reports only the closed connection, so add the reason.
		e.Err = fmt.Errorf("%w (%w)", e.Err, ctxErr)
	}
	return Result{}, e
}

func (s *SMTP) server() string {
	return net.JoinHostPort(s.host, strconv.Itoa(s.port))
}

// classifySMTP turns a go-mail error into an *Error. Reply codes 4xx are
// transient and 5xx permanent. Certificate failures are permanent because
// they need a configuration change. Other failures (refused connection,
// timeout) are transient.
func classifySMTP(operation string, err error) *Error {
	wrapped := fmt.Errorf("%s: %w", operation, err)

	var sendErr *mail.SendError
	if errors.As(err, &sendErr) {
		code := sendErr.ErrorCode()
		switch {
		case code >= 500:
			return &Error{Permanent: true, Code: code, Err: wrapped}
		case code >= 400:
			return &Error{Code: code, Err: wrapped}
		case sendErr.Reason == mail.ErrGetSender || sendErr.Reason == mail.ErrGetRcpts || sendErr.Reason == mail.ErrNoUnencoded:
			return &Error{Permanent: true, Err: wrapped}
		default:
			// The connection broke. After the end of DATA the server may
			// have taken the message without our hearing its reply.
			return &Error{Unknown: sendErr.Reason == mail.ErrSMTPDataClose, Err: wrapped}
		}
	}

	var protoErr *textproto.Error
	if errors.As(err, &protoErr) {
		if protoErr.Code >= 500 {
			return &Error{Permanent: true, Code: protoErr.Code, Err: wrapped}
		}
		return &Error{Code: protoErr.Code, Err: wrapped}
	}

	var (
		unknownAuthority x509.UnknownAuthorityError
		hostnameErr      x509.HostnameError
		invalidCert      x509.CertificateInvalidError
		verifyErr        *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostnameErr) ||
		errors.As(err, &invalidCert) || errors.As(err, &verifyErr) {
		return &Error{Permanent: true, Err: wrapped}
	}
	return &Error{Err: wrapped}
}

// headerText makes s safe for a one-line header: control characters,
// line breaks included, become spaces, and runs of spaces collapse.
func headerText(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
