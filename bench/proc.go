package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/xpress-ops/tower/agent/broker"
)

// subprocessLogTail is how many log lines of a subprocess are kept for error messages.
const subprocessLogTail = 40

// subprocessStartTimeout bounds the wait for a subprocess's start log line.
const subprocessStartTimeout = 60 * time.Second

// subprocess is an xpress subprocess logging JSON to its stderr.
type subprocess struct {
	name string
	cmd  *exec.Cmd
	// started holds the string attributes of its start log line, such as
	// the addresses it listens on.
	started map[string]string
	done    chan struct{}
	waitErr error

	mu   sync.Mutex
	tail []string
}

// xpressExe returns the xpress binary to run: exe, or this process's own
// executable when exe is empty.
func xpressExe(exe string) (string, error) {
	if exe != "" {
		return exe, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the xpress binary: %w (pass --exe)", err)
	}
	return self, nil
}

// startSubprocess runs exe with args and extra environment, stops it on
// close, and waits for its JSON log line whose msg is startedMsg.
func (e *runEnv) startSubprocess(ctx context.Context, name, exe string, args, env []string, startedMsg string) (*subprocess, error) {
	cmd := exec.Command(exe, append(args, "--log-format", "json", "--log-level", "info")...)
	cmd.Env = append(os.Environ(), env...)
	if e.opts.cpuProfile != "" {
		cmd.Env = append(cmd.Env, "XPRESS_CPUPROFILE="+e.opts.cpuProfile+"."+name)
	}
	cmd.Stdout = io.Discard
	setParentDeathSignal(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", exe, name, err)
	}
	p := &subprocess{name: name, cmd: cmd, done: make(chan struct{})}
	started := make(chan map[string]string, 1)
	go p.readLog(stderr, startedMsg, started)
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	e.onClose(p.stop)

	timer := time.NewTimer(subprocessStartTimeout)
	defer timer.Stop()
	select {
	case p.started = <-started:
	case <-p.done:
		return nil, fmt.Errorf("%s subprocess exited before it started: %v\n%s", name, p.waitErr, p.logTail())
	case <-timer.C:
		return nil, fmt.Errorf("%s subprocess did not start within %s\n%s", name, subprocessStartTimeout, p.logTail())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	e.log.Info("subprocess started", "process", name, "pid", cmd.Process.Pid, "log", p.started)
	return p, nil
}

// readLog keeps the tail of the subprocess's log and sends the string
// attributes of its first line whose msg is startedMsg.
func (p *subprocess) readLog(r io.Reader, startedMsg string, started chan<- map[string]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sent := false
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.tail = append(p.tail, line)
		if len(p.tail) > subprocessLogTail {
			p.tail = p.tail[1:]
		}
		p.mu.Unlock()
		if sent {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != startedMsg {
			continue
		}
		attrs := map[string]string{}
		for k, v := range rec {
			if s, ok := v.(string); ok {
				attrs[k] = s
			}
		}
		started <- attrs
		sent = true
	}
}

func (p *subprocess) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// addr returns a listen address from the start log line, made dialable on loopback.
func (p *subprocess) addr(key string) (string, error) {
	a := p.started[key]
	if a == "" {
		return "", fmt.Errorf("%s subprocess logged no %q address when it started", p.name, key)
	}
	return loopbackHostPort(a), nil
}

// stop sends SIGTERM, waits up to 20 s for the subprocess to exit, then kills it.
func (p *subprocess) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s subprocess %d: %w", p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s subprocess %d did not exit within 20s of SIGTERM and was killed", p.name, p.cmd.Process.Pid)
	}
}

// hubProcess is an `xpress hub` subprocess.
type hubProcess struct {
	*subprocess
	httpAddr string
	mqttAddr string
}

// startHubProcess runs `xpress hub` on loopback ports chosen by the
// kernel, with its store in the database at databaseURL, accepting up to
// maxConns HTTP connections. The database URL and the admin token go in
// the environment, never on the command line.
func (e *runEnv) startHubProcess(ctx context.Context, exe, databaseURL string, maxConns int) (*hubProcess, error) {
	exe, err := xpressExe(exe)
	if err != nil {
		return nil, err
	}
	args := []string{"hub",
		"--http-addr", "127.0.0.1:0",
		"--agent-mqtt-addr", "127.0.0.1:0",
		"--data-dir", filepath.Join(e.dir, "hub-process"),
		"--http-max-conns", strconv.Itoa(maxConns),
	}
	sp, err := e.startSubprocess(ctx, "hub", exe, args,
		[]string{"XPRESS_DATABASE_URL=" + databaseURL, "XPRESS_ADMIN_TOKEN=" + e.adminToken}, "hub started")
	if err != nil {
		return nil, err
	}
	h := &hubProcess{subprocess: sp}
	if h.httpAddr, err = sp.addr("http"); err != nil {
		return nil, err
	}
	if h.mqttAddr, err = sp.addr("agent_mqtt"); err != nil {
		return nil, err
	}
	e.noteHub(h.mqttAddr, databaseURL)
	return h, nil
}

// agentProcess is an `xpress agent` subprocess.
type agentProcess struct {
	*subprocess
	mqttAddr string
	httpAddr string
}

// startAgentProcess runs `xpress agent` on loopback ports chosen by the
// kernel, forwarding to the hub at hubAddr (host:port).
func (e *runEnv) startAgentProcess(ctx context.Context, exe, id, hubAddr string) (*agentProcess, error) {
	exe, err := xpressExe(exe)
	if err != nil {
		return nil, err
	}
	args := []string{"agent",
		"--id", id,
		"--region", "NCR-Manila",
		"--mqtt-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0",
		"--hub-url", "tcp://" + hubAddr,
		"--data-dir", filepath.Join(e.dir, "agent-process-"+id),
		// Throughput scenarios measure the pipeline, not vehicle
		// credentials, and every simulated vehicle connects from one
		// address (see docs/benchmarks.md).
		"--vehicle-auth", "off",
		"--vehicle-connect-rate", strconv.Itoa(broker.MaxConnectRate),
		"--vehicle-connect-burst", strconv.Itoa(broker.MaxConnectBurst),
	}
	token, err := e.agentToken(ctx, hubAddr, id)
	if err != nil {
		return nil, err
	}
	sp, err := e.startSubprocess(ctx, "agent", exe, args, []string{"XPRESS_AGENT_TOKEN=" + token}, "agent started")
	if err != nil {
		return nil, err
	}
	a := &agentProcess{subprocess: sp}
	if a.mqttAddr, err = sp.addr("mqtt_addr"); err != nil {
		return nil, err
	}
	if a.httpAddr, err = sp.addr("http_addr"); err != nil {
		return nil, err
	}
	return a, nil
}

// waitUplinkConnected polls the agent's /metrics until its uplink is connected to the hub.
func (a *agentProcess) waitUplinkConnected(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	url := "http://" + a.httpAddr + "/metrics"
	for {
		m, err := scrape(ctx, url)
		if err != nil {
			return err
		}
		if v, _ := m.value("xpress_agent_uplink_connected"); v == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent subprocess's uplink did not connect to the hub within %s\n%s", timeout, a.logTail())
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}
