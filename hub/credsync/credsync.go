// Package credsync sends the vehicles' credentials from the hub's store to
// every agent. Each credential is a retained QoS 1 message on
// protocol.VehicleCredentialTopic, published through the hub's agent
// broker: an agent that subscribes to protocol.VehicleCredentialFilter
// gets every credential at once, and each later change as it happens.
// The messages carry argon2id hashes only, never tokens.
//
// The broker keeps retained messages in memory only, so the syncer
// publishes every credential again at start. After that it publishes what
// changed since the highest version it published (see
// store.VehicleCredentialStore): at once when Notify is called after an
// admin change, and every Interval, which also picks up changes made
// through another hub and retries failed publishes. Agents apply a
// message only when its version is newer than what they hold, so a
// repeated or late message is harmless.
//
// NOTE: publishes are not paced per agent as the downlink's are. An agent
// that subscribes gets every retained credential at once, within the hub
// broker's in-flight limit of 65,535 messages per client, so fleets near
// that size need pacing here.
package credsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/syncloop"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultInterval is how often the syncer looks for changes without
	// being notified.
	DefaultInterval = 30 * time.Second
	// DefaultRetryInterval is the wait after a failed sync.
	DefaultRetryInterval = 2 * time.Second
	// DefaultQueryTimeout bounds each store read.
	DefaultQueryTimeout = 10 * time.Second
)

// defaultTiming holds the defaults of Config's durations.
var defaultTiming = syncloop.Timing{Interval: DefaultInterval, RetryInterval: DefaultRetryInterval, QueryTimeout: DefaultQueryTimeout}

// Source reads the credentials that changed after a version;
// store.Store implements it.
type Source interface {
	VehicleCredentialsSince(ctx context.Context, version uint64) ([]store.StoredVehicleCredential, error)
}

// Publisher sends a message to the agents with QoS 1. *ingest.Server
// implements it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// Config configures a Syncer.
type Config struct {
	// Store is read for the credentials. Required.
	Store Source
	// Publisher sends them to the agents. Required.
	Publisher Publisher
	// Interval is how often the syncer looks for changes without being
	// notified. Zero means DefaultInterval (30 s).
	Interval time.Duration
	// RetryInterval is the wait after a failed sync. Zero means
	// DefaultRetryInterval (2 s).
	RetryInterval time.Duration
	// QueryTimeout bounds each store read. Zero means DefaultQueryTimeout (10 s).
	QueryTimeout time.Duration
	// Logger receives the syncer's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the syncer's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
}

// Syncer publishes vehicle credentials to the agents. Start it once and
// Close it once. The zero value is not usable.
type Syncer struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	loop    *syncloop.Loop

	closeOnce sync.Once

	// published is the highest version published. Only the loop's
	// goroutine uses it.
	published uint64
}

// New checks cfg, fills defaults and registers the metrics. It starts nothing.
func New(cfg Config) (*Syncer, error) {
	var errs []error
	if cfg.Store == nil {
		errs = append(errs, errors.New("Store is nil"))
	}
	if cfg.Publisher == nil {
		errs = append(errs, errors.New("Publisher is nil"))
	}

	timing, err := syncloop.Timing{Interval: cfg.Interval, RetryInterval: cfg.RetryInterval, QueryTimeout: cfg.QueryTimeout}.Resolve(defaultTiming)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid credential sync config: %w", err)
	}
	cfg.Interval, cfg.RetryInterval, cfg.QueryTimeout = timing.Interval, timing.RetryInterval, timing.QueryTimeout

	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register credential sync metrics: %w", err)
	}

	s := &Syncer{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "credsync"),
		metrics: m,
	}
	s.loop = syncloop.New(syncloop.Config{
		Interval:      cfg.Interval,
		RetryInterval: cfg.RetryInterval,
		Sync:          s.sync,
		OnError: func(err error) {
			s.metrics.failures.Inc()
			s.log.Error("vehicle credentials not sent to the agents; retrying", "after_version", s.published,
				"retry_in", s.cfg.RetryInterval, "error", err)
		},
		OnFirstSync: func() {
			s.log.Info("vehicle credentials sent to the agents", "version", s.published)
		},
	})
	return s, nil
}

// Start starts the goroutine that publishes every credential and then
// follows the changes. It returns at once.
func (s *Syncer) Start() { s.loop.Start() }

// Notify requests a sync now, after a change to the credentials. It
// never blocks.
func (s *Syncer) Notify() { s.loop.Notify() }

// Synced returns a channel closed once every stored credential has been
// published after Start.
func (s *Syncer) Synced() <-chan struct{} { return s.loop.Synced() }

// Close stops the syncer and waits for its goroutine. Retained messages
// stay on the broker. It is safe to call more than once.
func (s *Syncer) Close() error {
	s.closeOnce.Do(func() {
		s.loop.Close()
		s.metrics.unregister(s.cfg.Registerer)
	})
	return nil
}

// sync publishes every credential changed after the highest version
// published, in version order, and advances that version past each one
// published.
func (s *Syncer) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	changed, err := s.cfg.Store.VehicleCredentialsSince(ctx, s.published)
	cancel()
	if err != nil {
		return err
	}
	for _, c := range changed {
		if err := s.publish(c); err != nil {
			return err
		}
		s.published = c.Version
		s.metrics.version.Set(float64(c.Version))
	}
	return nil
}

func (s *Syncer) publish(c store.StoredVehicleCredential) error {
	msg := Message(c)
	payload, err := protocol.EncodeVehicleCredential(&msg)
	if err != nil {
		// A stored credential the protocol refuses is a bug or a damaged
		// row. Skipping it keeps the others flowing.
		s.metrics.failures.Inc()
		s.log.Error("stored vehicle credential cannot be sent; skipped", "vehicle", c.VehicleID, "version", c.Version, "error", err)
		return nil
	}
	if err := s.cfg.Publisher.Publish(protocol.VehicleCredentialTopic(c.VehicleID), payload, true); err != nil {
		return fmt.Errorf("publish credential of vehicle %s: %w", c.VehicleID, err)
	}
	state := "live"
	if c.Revoked() {
		state = "revoked"
	}
	s.metrics.published.WithLabelValues(state).Inc()
	s.log.Debug("vehicle credential sent", "vehicle", c.VehicleID, "version", c.Version, "revoked", c.Revoked())
	return nil
}

// Message returns the protocol message of a stored credential.
func Message(c store.StoredVehicleCredential) protocol.VehicleCredential {
	msg := protocol.VehicleCredential{
		VehicleID: c.VehicleID,
		Hash:      c.TokenHash,
		Version:   c.Version,
		Revoked:   c.Revoked(),
	}
	if c.PreviousHash != "" {
		msg.PreviousHash, msg.PreviousValidUntil = c.PreviousHash, c.PreviousValidUntil
	}
	return msg
}
