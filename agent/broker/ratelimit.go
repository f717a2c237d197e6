package broker

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the per-address connection limits (see Config).
const (
	// DefaultConnectRate is the CONNECT attempts per second one address
	// may make. It is generous because vehicles on mobile networks share
	// carrier NAT addresses.
	DefaultConnectRate = 20
	// DefaultConnectBurst is how many CONNECT attempts one address may
	// make at once, as after a cell tower outage.
	DefaultConnectBurst = 100
	// DefaultAuthFailures is how many failed authentications one address
	// may have per minute before it is refused for AuthBlock.
	DefaultAuthFailures = 10
	// DefaultAuthBlock is how long an address that failed authentication
	// too often is refused.
	DefaultAuthBlock = time.Minute
)

// Ranges of the per-address connection limits that Config.Validate
// accepts besides zero, which selects the default.
const (
	MinConnectRate  = 1
	MaxConnectRate  = 100000
	MinConnectBurst = 1
	MaxConnectBurst = 1000000
	MinAuthFailures = 1
	MaxAuthFailures = 100000
	MinAuthBlock    = time.Second
	MaxAuthBlock    = 24 * time.Hour
)

const (
	// addrIdle is how long an address's state is kept after its last
	// CONNECT, when its buckets are full again.
	addrIdle = 10 * time.Minute
	// sweepEvery is how often idle addresses are forgotten.
	sweepEvery = time.Minute
	// logEvery is the least time between two refusal log lines of one address.
	logEvery = time.Minute
)

// addrLimits keeps, per remote address, a token bucket of CONNECT
// attempts and one of failed authentications. An address that empties
// its failure bucket is refused until its block ends.
type addrLimits struct {
	connectRate  rate.Limit
	connectBurst int
	failRate     rate.Limit
	failBurst    int
	block        time.Duration
	now          func() time.Time

	mu        sync.Mutex
	addrs     map[string]*addrState
	lastSweep time.Time
}

type addrState struct {
	connect      *rate.Limiter
	failures     *rate.Limiter
	blockedUntil time.Time
	lastSeen     time.Time
	lastLogged   time.Time
}

func newAddrLimits(cfg *Config) *addrLimits {
	return &addrLimits{
		connectRate:  rate.Limit(cfg.ConnectRate),
		connectBurst: cfg.ConnectBurst,
		failRate:     rate.Every(time.Minute / time.Duration(cfg.AuthFailures)),
		failBurst:    cfg.AuthFailures,
		block:        cfg.AuthBlock,
		now:          time.Now,
		addrs:        make(map[string]*addrState),
	}
}

// limitResult is whether the per-address limits let a CONNECT through to
// authentication.
type limitResult int

const (
	allowed limitResult = iota
	// rateExceeded: the address made too many CONNECT attempts.
	rateExceeded
	// blocked: the address failed authentication too often.
	blocked
)

// hostOf returns the IP address of a remote address "host:port", or the
// whole string when it has no port.
func hostOf(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// state returns the state of addr, creating it, with mu held.
func (l *addrLimits) state(addr string, now time.Time) *addrState {
	if now.Sub(l.lastSweep) >= sweepEvery {
		for a, st := range l.addrs {
			if now.Sub(st.lastSeen) >= addrIdle && !now.Before(st.blockedUntil) {
				delete(l.addrs, a)
			}
		}
		l.lastSweep = now
	}
	st, ok := l.addrs[addr]
	if !ok {
		st = &addrState{
			connect:  rate.NewLimiter(l.connectRate, l.connectBurst),
			failures: rate.NewLimiter(l.failRate, l.failBurst),
		}
		l.addrs[addr] = st
	}
	st.lastSeen = now
	return st
}

// connect takes a CONNECT attempt from addr and returns whether the
// limits let it through.
func (l *addrLimits) connect(addr string) limitResult {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(addr, now)
	switch {
	case !st.connect.AllowN(now, 1):
		return rateExceeded
	case now.Before(st.blockedUntil):
		return blocked
	}
	return allowed
}

// shouldLog reports whether a refusal of addr is to be logged: at most
// once per address per logEvery.
func (l *addrLimits) shouldLog(addr string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(addr, now)
	if now.Sub(st.lastLogged) < logEvery {
		return false
	}
	st.lastLogged = now
	return true
}

// failed records a failed authentication from addr and reports whether
// it starts a block of the address.
func (l *addrLimits) failed(addr string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(addr, now)
	if st.failures.AllowN(now, 1) {
		return false
	}
	st.blockedUntil = now.Add(l.block)
	return true
}
