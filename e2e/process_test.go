package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// xpressBin is the path of the xpress binary built once for this package.
var xpressBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xpress-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		os.Exit(1)
	}
	xpressBin = filepath.Join(dir, "xpress")
	build := exec.Command("go", "build", "-race", "-o", xpressBin, "../cmd/xpress")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build xpress:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// process is an xpress subprocess.
type process struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan struct{}
}

// startProcess runs xpress with args and extra environment, keeping its
// output for failure messages. Cleanup kills it if still running.
func startProcess(t testing.TB, name string, env []string, args ...string) *process {
	t.Helper()
	return startProcessIn(t, name, "", env, args...)
}

// startProcessIn is startProcess with dir as the working directory.
func startProcessIn(t testing.TB, name, dir string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(xpressBin, args...)
	cmd.Dir = dir
	// Every hub process takes the tests' admin token; other programs
	// ignore it.
	cmd.Env = append(append(os.Environ(), "XPRESS_ADMIN_TOKEN="+adminToken), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		scanner := bufio.NewScanner(stderr)
		scanner.Buffer(make([]byte, 64<<10), 1<<20)
		for scanner.Scan() {
			p.mu.Lock()
			p.log.WriteString(scanner.Text() + "\n")
			p.mu.Unlock()
		}
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// exitCode waits for the process to exit and returns its exit code.
func (p *process) exitCode(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not exit within 60 s", p.name)
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill sends sig and waits for the process to exit.
func (p *process) kill(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitHTTP polls url until it returns status 200.
func waitHTTP(t testing.TB, p *process, url string) {
	t.Helper()
	waitFor(t, 60*time.Second, p.name+" at "+url, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited early:\n%s", p.name, p.output())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := newGet(ctx, url)
		resp, err := httpClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}
