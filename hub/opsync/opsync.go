// Package opsync sends the operator accounts from the hub's store to the
// agents, so operators sign in on an agent's regional page with their hub
// passwords while the hub is unreachable.
//
// Each agent with a credential (store.AgentCredentialStore) gets one
// retained QoS 1 message on protocol.AgentOperatorsTopic, published
// through the hub's agent broker. The message is a protocol.OperatorList
// of every enabled operator who may act in the agent's region (admins,
// operators of all regions and operators of that region), with the
// argon2id hash of the password. Each message contains the whole list, so
// a deletion or a disable reaches the agent without tombstones. The hub's
// broker lets an agent subscribe to its own list only.
//
// The broker keeps retained messages in memory only, so the syncer
// publishes every agent's list at start. After that it builds the lists
// at once when Notify is called after an admin change, and every
// Interval, which also picks up changes made through another hub or the
// command line and retries failed publishes; it publishes an agent's list
// only when it differs from the last one published. An agent whose
// credential was revoked gets its retained list cleared.
package opsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/syncloop"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultInterval is how often the syncer builds the lists without
	// being notified.
	DefaultInterval = 30 * time.Second
	// DefaultRetryInterval is the wait after a failed sync.
	DefaultRetryInterval = 2 * time.Second
	// DefaultQueryTimeout bounds the store reads of one sync.
	DefaultQueryTimeout = 10 * time.Second
)

// defaultTiming holds the defaults of Config's durations.
var defaultTiming = syncloop.Timing{Interval: DefaultInterval, RetryInterval: DefaultRetryInterval, QueryTimeout: DefaultQueryTimeout}

// Source reads the agents and the operator accounts; store.Store
// implements it.
type Source interface {
	AgentCredentials(ctx context.Context) ([]store.AgentCredential, error)
	Operators(ctx context.Context) ([]store.Operator, error)
	Operator(ctx context.Context, username string) (store.StoredOperator, error)
}

// Publisher sends a message to the agents with QoS 1; *ingest.Server
// implements it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// Config configures a Syncer.
type Config struct {
	// Store is read for the agents and operators. Required.
	Store Source
	// Publisher sends the lists to the agents. Required.
	Publisher Publisher
	// Interval is how often the syncer builds the lists without being
	// notified. Zero means DefaultInterval (30 s).
	Interval time.Duration
	// RetryInterval is the wait after a failed sync. Zero means
	// DefaultRetryInterval (2 s).
	RetryInterval time.Duration
	// QueryTimeout bounds the store reads of one sync. Zero means
	// DefaultQueryTimeout (10 s).
	QueryTimeout time.Duration
	// Now is the hub clock of OperatorList.IssuedAt. Nil means time.Now.
	Now func() time.Time
	// Logger receives the syncer's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the syncer's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
}

// Syncer publishes each agent's operator list. Start it once and Close
// it once; the zero value is not usable.
type Syncer struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	loop    *syncloop.Loop

	closeOnce sync.Once

	// published maps each agent to the operators of the last list
	// published to it, encoded without IssuedAt; it belongs to the loop's
	// goroutine.
	published map[string][]byte
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
		return nil, fmt.Errorf("invalid operator sync config: %w", err)
	}
	cfg.Interval, cfg.RetryInterval, cfg.QueryTimeout = timing.Interval, timing.RetryInterval, timing.QueryTimeout

	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register operator sync metrics: %w", err)
	}

	s := &Syncer{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "opsync"),
		metrics:   m,
		published: make(map[string][]byte),
	}
	s.loop = syncloop.New(syncloop.Config{
		Interval:      cfg.Interval,
		RetryInterval: cfg.RetryInterval,
		Sync:          s.sync,
		OnError: func(err error) {
			s.metrics.failures.Inc()
			s.log.Error("operator accounts not sent to the agents; retrying", "retry_in", s.cfg.RetryInterval, "error", err)
		},
		OnFirstSync: func() {
			s.log.Info("operator accounts sent to the agents", "agents", len(s.published))
		},
	})
	return s, nil
}

// Start starts the goroutine that publishes every agent's list and then
// follows the changes. It returns at once.
func (s *Syncer) Start() { s.loop.Start() }

// Notify requests a sync now, after a change to the operator accounts or
// the agents. It never blocks.
func (s *Syncer) Notify() { s.loop.Notify() }

// Synced returns a channel closed once every agent's list has been
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

// sync builds every agent's list and publishes those that changed. A
// failed publish leaves that agent's entry as it was, so the next sync
// tries again.
func (s *Syncer) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	agents, err := s.cfg.Store.AgentCredentials(ctx)
	if err != nil {
		return fmt.Errorf("list agents: %w", err)
	}
	operators, err := s.eligible(ctx)
	if err != nil {
		return err
	}
	var errs []error
	live := make(map[string]bool, len(agents))
	for _, a := range agents {
		live[a.AgentID] = true
		list := ListFor(a, operators)
		key, err := listKey(list)
		if err != nil {
			// An account the protocol refuses is a bug or a damaged row;
			// the agent keeps its previous list.
			s.metrics.failures.Inc()
			s.log.Error("operator list cannot be sent to the agent; it keeps its previous list", "agent", a.AgentID, "error", err)
			continue
		}
		if old, ok := s.published[a.AgentID]; ok && bytes.Equal(old, key) {
			continue
		}
		list.IssuedAt = s.cfg.Now().UTC()
		payload, err := protocol.EncodeOperatorList(&list)
		if err != nil {
			s.metrics.failures.Inc()
			s.log.Error("operator list cannot be sent to the agent; it keeps its previous list", "agent", a.AgentID, "error", err)
			continue
		}
		if err := s.cfg.Publisher.Publish(protocol.AgentOperatorsTopic(a.AgentID), payload, true); err != nil {
			errs = append(errs, fmt.Errorf("publish operator list of agent %s: %w", a.AgentID, err))
			continue
		}
		s.published[a.AgentID] = key
		s.metrics.published.Inc()
		s.log.Info("operator list sent to agent", "agent", a.AgentID, "region", a.Region, "operators", len(list.Operators))
	}
	for id := range s.published {
		if live[id] {
			continue
		}
		// An empty retained message clears the list of an agent that no
		// longer has a credential.
		if err := s.cfg.Publisher.Publish(protocol.AgentOperatorsTopic(id), nil, true); err != nil {
			errs = append(errs, fmt.Errorf("clear operator list of agent %s: %w", id, err))
			continue
		}
		delete(s.published, id)
		s.log.Info("operator list of an agent without credential cleared", "agent", id)
	}
	s.metrics.agents.Set(float64(len(s.published)))
	return errors.Join(errs...)
}

// eligible returns the operators that are not disabled, with their
// password hashes, ordered by user name.
func (s *Syncer) eligible(ctx context.Context) ([]store.StoredOperator, error) {
	list, err := s.cfg.Store.Operators(ctx)
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", err)
	}
	out := make([]store.StoredOperator, 0, len(list))
	for _, o := range list {
		if o.Disabled {
			continue
		}
		full, err := s.cfg.Store.Operator(ctx, o.Username)
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue // deleted since the listing
		case err != nil:
			return nil, fmt.Errorf("read operator %s: %w", o.Username, err)
		case full.Disabled:
			continue
		}
		out = append(out, full)
	}
	return out, nil
}

// ListFor returns the list of agent a: the operators who may act in its
// region, that is admins and operators whose regions hold store.AllRegions
// or the agent's region, leaving out disabled ones. IssuedAt is left zero.
func ListFor(a store.AgentCredential, operators []store.StoredOperator) protocol.OperatorList {
	list := protocol.OperatorList{Agent: a.AgentID, Region: a.Region, Operators: []protocol.OperatorCredential{}}
	for _, o := range operators {
		if o.Disabled || !MayActIn(o.Operator, a.Region) {
			continue
		}
		list.Operators = append(list.Operators, protocol.OperatorCredential{
			Username: o.Username, DisplayName: o.DisplayName, Role: o.Role, Hash: o.PasswordHash,
		})
	}
	slices.SortFunc(list.Operators, func(x, y protocol.OperatorCredential) int {
		switch {
		case x.Username < y.Username:
			return -1
		case x.Username > y.Username:
			return 1
		}
		return 0
	})
	return list
}

// MayActIn reports whether operator o may act in region: an admin, or an
// operator whose regions hold store.AllRegions or region.
func MayActIn(o store.Operator, region string) bool {
	return o.Role == store.OperatorRoleAdmin || slices.Contains(o.Regions, store.AllRegions) || slices.Contains(o.Regions, region)
}

// listKey encodes what an agent's list carries besides IssuedAt, so two
// syncs compare their lists.
func listKey(l protocol.OperatorList) ([]byte, error) {
	l.IssuedAt = time.Time{}
	return protocol.EncodeOperatorList(&l)
}
