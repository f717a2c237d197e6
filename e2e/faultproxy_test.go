package e2e

import (
	"net"
	"sync"
	"testing"
	"time"
)

// direction is one way through the fault proxy.
type direction int

const (
	// toHub carries bytes from the agent to the hub.
	toHub direction = iota
	// toAgent carries bytes from the hub to the agent.
	toAgent
)

func (d direction) String() string {
	if d == toHub {
		return "agent→hub"
	}
	return "hub→agent"
}

// faultProxy is a TCP proxy on a loopback port that plays the WAN between
// an agent and a hub. Its faults switch at run time:
//
//   - pass: bytes flow unchanged, after any delay set with setDelay;
//   - delay: every chunk read in a direction is written that much later,
//     in order;
//   - drop, one direction or both (blackhole): bytes are read and
//     discarded, so the sender's writes succeed and no RST or FIN is
//     sent, as when a WAN silently loses packets;
//   - reset: every open connection is closed with an RST on both sides.
//
// A direction that dropped bytes of a connection keeps dropping them
// until the connection closes, because the byte stream behind the gap is
// no longer valid MQTT. Connections accepted after pass() work normally.
// A faultProxy is safe for concurrent use and closes everything on
// cleanup.
type faultProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	drop  [2]bool
	delay [2]time.Duration
	conns map[*proxiedConn]struct{}

	wg sync.WaitGroup
}

// startFaultProxy listens on a loopback port and forwards connections to
// target ("host:port"), in pass mode.
func startFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy: listen: %v", err)
	}
	p := &faultProxy{ln: ln, target: target, conns: make(map[*proxiedConn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// addr returns the proxy's listen address; agents connect here.
func (p *faultProxy) addr() string { return p.ln.Addr().String() }

// pass stops dropping and delaying for new bytes.
func (p *faultProxy) pass() { p.set([2]bool{}, [2]time.Duration{}) }

// blackhole drops every byte in both directions.
func (p *faultProxy) blackhole() { p.set([2]bool{true, true}, p.currentDelay()) }

// dropOnly drops the bytes of one direction and passes the other.
func (p *faultProxy) dropOnly(d direction) {
	var drop [2]bool
	drop[d] = true
	p.set(drop, p.currentDelay())
}

// setDelay adds latency to each direction.
func (p *faultProxy) setDelay(up, down time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = [2]time.Duration{toHub: up, toAgent: down}
}

// reset closes every open connection with an RST to both the agent and the hub.
func (p *faultProxy) reset() {
	p.mu.Lock()
	conns := make([]*proxiedConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close(true)
	}
}

func (p *faultProxy) set(drop [2]bool, delay [2]time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop, p.delay = drop, delay
}

func (p *faultProxy) currentDelay() [2]time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delay
}

// fault returns whether bytes of direction d are dropped now, and their delay.
func (p *faultProxy) fault(d direction) (bool, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drop[d], p.delay[d]
}

// close stops accepting, resets every connection and waits for the proxy's goroutines.
func (p *faultProxy) close() {
	p.ln.Close()
	p.reset()
	p.wg.Wait()
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		agentConn, err := p.ln.Accept()
		if err != nil {
			return
		}
		hubConn, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			// The hub is down: refuse the agent the way a closed port does.
			agentConn.(*net.TCPConn).SetLinger(0)
			agentConn.Close()
			continue
		}
		c := &proxiedConn{agent: agentConn.(*net.TCPConn), hub: hubConn.(*net.TCPConn), done: make(chan struct{})}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.mu.Unlock()

		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var pumps sync.WaitGroup
			pumps.Add(2)
			go func() { defer pumps.Done(); p.pump(c, c.agent, c.hub, toHub) }()
			go func() { defer pumps.Done(); p.pump(c, c.hub, c.agent, toAgent) }()
			pumps.Wait()
			c.close(false)
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
}

// chunk is bytes read from one side, due to be written to the other.
type chunk struct {
	data []byte
	due  time.Time
}

// pump copies src to dst in direction d until either side fails, applying
// the proxy's faults to each chunk as it is read. Then it closes the
// connection pair, unless the direction is dropping.
func (p *faultProxy) pump(c *proxiedConn, src, dst net.Conn, d direction) {
	// A dropping direction hides even the end of its stream. The other
	// side gets no FIN, as behind a WAN that lost every packet.
	dropping := false
	defer func() {
		if !dropping {
			c.close(false)
		}
	}()
	queue := make(chan chunk, 64)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for ch := range queue {
			if wait := time.Until(ch.due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-c.done:
					t.Stop()
					return
				}
			}
			if _, err := dst.Write(ch.data); err != nil {
				c.close(false)
				return
			}
		}
	}()
	defer func() {
		close(queue)
		<-writerDone
	}()

	buf := make([]byte, 32<<10)
	var lastDue time.Time
	for {
		n, err := src.Read(buf)
		if n > 0 {
			drop, delay := p.fault(d)
			dropping = dropping || drop
			if !dropping {
				due := time.Now().Add(delay)
				if due.Before(lastDue) {
					due = lastDue
				}
				lastDue = due
				select {
				case queue <- chunk{data: append([]byte(nil), buf[:n]...), due: due}:
				case <-c.done:
					return
				}
			}
		}
		if err != nil {
			drop, _ := p.fault(d)
			dropping = dropping || drop
			return
		}
	}
}

// proxiedConn is one agent connection and its connection to the hub.
type proxiedConn struct {
	agent, hub *net.TCPConn
	done       chan struct{}
	once       sync.Once
}

// close closes both sides once; with rst, each side gets an RST instead of a FIN.
func (c *proxiedConn) close(rst bool) {
	c.once.Do(func() {
		close(c.done)
		if rst {
			c.agent.SetLinger(0)
			c.hub.SetLinger(0)
		}
		// Close errors only repeat that a side is already gone.
		c.agent.Close()
		c.hub.Close()
	})
}
