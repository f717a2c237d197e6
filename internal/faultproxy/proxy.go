// Package faultproxy is a TCP proxy for tests that plays an unreliable WAN
// between an agent and a hub: pass, delay, bandwidth limit, silent drop
// and reset.
package faultproxy

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Direction is one way through a Proxy.
type Direction int

const (
	// ToHub carries bytes from the agent to the hub.
	ToHub Direction = iota
	// ToAgent carries bytes from the hub to the agent.
	ToAgent
)

// Proxy is a TCP proxy on a loopback port that plays the WAN between the
// agent and a hub. Its faults switch at run time: Pass, Delay, Throttle
// (a bandwidth limit per direction), Drop (one direction), Blackhole
// (both directions) and Reset. Dropped bytes are
// read and discarded, so the sender's writes succeed and no RST or FIN is
// sent, as when a WAN silently loses packets. A direction that dropped
// bytes of a connection keeps dropping them until the connection closes,
// because the byte stream behind the gap is no longer valid MQTT. A Proxy
// is safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	drop  [2]bool
	delay [2]time.Duration
	// rate is each direction's bandwidth limit in bytes per second, 0 for none.
	rate  [2]int
	conns map[*proxiedConn]struct{}

	wg sync.WaitGroup
}

// Start listens on a loopback port and forwards each connection to
// target ("host:port"), in pass mode. It closes everything on cleanup.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[*proxiedConn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL returns the proxy's address as an MQTT URL.
func (p *Proxy) URL() string { return "tcp://" + p.ln.Addr().String() }

// Addr returns the proxy's address as host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pass stops dropping, delaying and throttling bytes read from now on.
func (p *Proxy) Pass() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop, p.delay, p.rate = [2]bool{}, [2]time.Duration{}, [2]int{}
}

// Blackhole drops every byte in both directions.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop = [2]bool{true, true}
}

// Drop drops the bytes of direction d and passes the other direction.
func (p *Proxy) Drop(d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop = [2]bool{}
	p.drop[d] = true
}

// Delay adds latency to each chunk of bytes read in each direction.
func (p *Proxy) Delay(toHub, toAgent time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = [2]time.Duration{ToHub: toHub, ToAgent: toAgent}
}

// Throttle limits the bandwidth of direction d to bytesPerSecond, like a
// slow WAN link: each byte takes 1/bytesPerSecond to pass, after the
// bytes read before it, and then the direction's Delay. The proxy
// buffers at most throttleBuffer of the time to send them per connection
// and reads no more until the link drained, so a fast sender fills its
// own TCP send buffer as behind a real slow link. Zero or a negative
// value removes the limit.
func (p *Proxy) Throttle(d Direction, bytesPerSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate[d] = max(0, bytesPerSecond)
}

// throttleBuffer is the most sending time a throttled direction buffers
// ahead of the link.
const throttleBuffer = 100 * time.Millisecond

// Reset closes every open connection with an RST to both sides.
func (p *Proxy) Reset() {
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

// Close stops accepting, resets every connection and waits for the
// proxy's goroutines. It is safe to call more than once.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Reset()
	p.wg.Wait()
}

func (p *Proxy) fault(d Direction) (bool, time.Duration, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drop[d], p.delay[d], p.rate[d]
}

func (p *Proxy) accept() {
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
			go func() { defer pumps.Done(); p.pump(c, c.agent, c.hub, ToHub) }()
			go func() { defer pumps.Done(); p.pump(c, c.hub, c.agent, ToAgent) }()
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

// pump copies src to dst in direction d until either side fails,
// applying the proxy's faults to each chunk as it is read. Then it closes
// the connection pair, unless the direction is dropping.
func (p *Proxy) pump(c *proxiedConn, src, dst net.Conn, d Direction) {
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
	// lastDue is when the previous chunk is written; linkFree is when a
	// throttled link has sent every byte read so far.
	var lastDue, linkFree time.Time
	for {
		_, _, rate := p.fault(d)
		n, err := src.Read(buf[:readSize(rate, len(buf))])
		if n > 0 {
			drop, delay, rate := p.fault(d)
			dropping = dropping || drop
			if !dropping {
				now := time.Now()
				sent := now
				if rate > 0 {
					linkFree = later(now, linkFree).Add(time.Duration(n) * time.Second / time.Duration(rate))
					sent = linkFree
				}
				due := later(sent.Add(delay), lastDue)
				lastDue = due
				select {
				case queue <- chunk{data: append([]byte(nil), buf[:n]...), due: due}:
				case <-c.done:
					return
				}
				if rate > 0 && !waitUntil(linkFree.Add(-throttleBuffer), c.done) {
					return
				}
			}
		}
		if err != nil {
			drop, _, _ := p.fault(d)
			dropping = dropping || drop
			return
		}
	}
}

// readSize is how many bytes a pump reads at once: up to 10 ms of a
// throttled link's time, at least 256 bytes, so a throttled stream moves
// in small steps as on a real link.
func readSize(rate, bufSize int) int {
	if rate <= 0 {
		return bufSize
	}
	return min(bufSize, max(256, rate/100))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitUntil sleeps until t and reports false when done closed first.
func waitUntil(t time.Time, done <-chan struct{}) bool {
	wait := time.Until(t)
	if wait <= 0 {
		return true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
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
