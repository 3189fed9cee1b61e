package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain runs the agent itself when a test starts this binary with AGENT_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("AGENT_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// entries are serve's stdout lines, each of which must be a connEntry.
func entries(t *testing.T, out string) []connEntry {
	t.Helper()
	var es []connEntry
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var e connEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("serve's line %q is not a connection entry: %v", line, err)
		}
		es = append(es, e)
	}
	return es
}

// startServe runs serve in the test on a free TCP and a free UDP port and returns the ports and its stdout.
func startServe(t *testing.T, name string) (tcpPort, udpPort int, stdout *syncBuffer) {
	t.Helper()
	stdout = &syncBuffer{}
	s, err := listen(serveConfig{name: name, tcp: ports{0}, udp: ports{0}}, stdout)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s.tcp[0].Addr().(*net.TCPAddr).Port, s.udp[0].LocalAddr().(*net.UDPAddr).Port, stdout
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func TestServeAndProbe(t *testing.T) {
	tcpPort, udpPort, stdout := startServe(t, "web")
	var want []connEntry
	for _, c := range []struct{ proto, host string }{
		{"tcp", "127.0.0.1"}, {"udp", "127.0.0.1"}, {"tcp", "::1"}, {"udp", "::1"},
	} {
		if strings.Contains(c.host, ":") && !hasIPv6Loopback() {
			t.Logf("no ::1 here: %s over IPv6 not probed", c.proto)
			continue
		}
		port := tcpPort
		if c.proto == "udp" {
			port = udpPort
		}
		target := net.JoinHostPort(c.host, strconv.Itoa(port))
		r := probe(context.Background(), probeConfig{target: target, proto: c.proto, timeout: 5 * time.Second})
		if !r.Reached || r.Error != "" || r.Target != target || r.Proto != c.proto {
			t.Fatalf("probe %s %s: %+v", c.proto, target, r)
		}
		if !regexp.MustCompile(`^web probe [0-9a-f]{12}$`).MatchString(r.Reply) {
			t.Errorf("probe %s %s: reply %q, want web and the line sent", c.proto, target, r.Reply)
		}
		host, _, err := net.SplitHostPort(r.Local)
		if err != nil || host != c.host {
			t.Errorf("probe %s %s: local %q, want an address of %s", c.proto, target, r.Local, c.host)
		}
		want = append(want, connEntry{Proto: c.proto, Remote: r.Local})
	}
	// serve logged each exchange with the client's address, which is the probe's local one.
	var got []connEntry
	for _, e := range entries(t, stdout.String()) {
		if e.Local == "" {
			t.Errorf("entry %+v has no local address", e)
		}
		got = append(got, connEntry{Proto: e.Proto, Remote: e.Remote})
	}
	if !slices.Equal(got, want) {
		t.Errorf("serve logged\n%v\nwant\n%v", got, want)
	}
}

// TestServeLines: a TCP connection is answered line by line, the last line even without its newline.
func TestServeLines(t *testing.T) {
	tcpPort, _, _ := startServe(t, "db")
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "one\r\ntwo words\nlast"); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "db one\ndb two words\ndb last\n"; string(b) != want {
		t.Errorf("answers %q, want %q", b, want)
	}
}

// listenUnanswered is a TCP listener on loopback that completes handshakes but never accepts: a peer that
// never answers.
func listenUnanswered(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// listenFull is a TCP listener on loopback whose accept queue is full, so that the kernel drops further SYNs:
// a connect to it hangs as one to a blackholed address does, without any traffic leaving loopback.
func listenFull(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // a queue of one connection
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
		if i == 10 {
			t.Fatal("the accept queue never fills")
		}
	}
	return addr
}

// closedPort is a loopback port nothing listens on, for proto.
func closedPort(t *testing.T, proto string) string {
	t.Helper()
	var addr string
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	} else {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	return addr
}

// tcpPeer serves one connection on loopback with answer, which gets the connection after the probe's line.
func tcpPeer(t *testing.T, answer func(c *net.TCPConn)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			answer(c.(*net.TCPConn))
		}
	}()
	return l.Addr().String()
}

func TestProbeNotReached(t *testing.T) {
	for _, c := range []struct {
		name      string
		proto     string
		target    func(t *testing.T) string
		wantError string
		wantLocal bool // the probe got as far as a connected socket
		wantReply string
	}{
		{"tcp closed port", "tcp", func(t *testing.T) string { return closedPort(t, "tcp") }, "refused: ", false, ""},
		{"udp closed port", "udp", func(t *testing.T) string { return closedPort(t, "udp") }, "refused: ", true, ""},
		{"tcp blackhole", "tcp", listenFull, "timeout: ", false, ""},
		{"tcp never answers", "tcp", listenUnanswered, "timeout: ", true, ""},
		{"udp never answers", "udp", func(t *testing.T) string {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			return pc.LocalAddr().String()
		}, "timeout: ", true, ""},
		{"tcp reset", "tcp", func(t *testing.T) string {
			return tcpPeer(t, func(c *net.TCPConn) { c.SetLinger(0) })
		}, "reset: ", true, ""},
		{"tcp closed without answer", "tcp", func(t *testing.T) string {
			return tcpPeer(t, func(c *net.TCPConn) {})
		}, "closed: ", true, ""},
		{"tcp wrong answer", "tcp", func(t *testing.T) string {
			return tcpPeer(t, func(c *net.TCPConn) { io.WriteString(c, "web something else\n") })
		}, "mismatch: ", true, "web something else"},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := c.target(t)
			timeout := 200 * time.Millisecond
			r := probe(context.Background(), probeConfig{target: target, proto: c.proto, timeout: timeout})
			if r.Reached || !strings.HasPrefix(r.Error, c.wantError) || r.Reply != c.wantReply || (r.Local != "") != c.wantLocal {
				t.Errorf("probe: %+v, want not reached, error %q..., reply %q, a local address %v", r, c.wantError, c.wantReply, c.wantLocal)
			}
			if c.wantError == "timeout: " && r.MS < timeout.Milliseconds() {
				t.Errorf("a timeout after %d ms, before the %s deadline", r.MS, timeout)
			}
		})
	}
}

func TestParseProbe(t *testing.T) {
	for _, c := range []struct {
		args []string
		want probeConfig
	}{
		{[]string{"10.0.0.1:80"}, probeConfig{"10.0.0.1:80", "tcp", time.Second, 0}},
		{[]string{"--timeout", "250ms", "--proto", "udp", "[fd00::1]:53"}, probeConfig{"[fd00::1]:53", "udp", 250 * time.Millisecond, 0}},
		{[]string{"web.e2e.svc:8080", "-proto=udp", "-timeout=2s"}, probeConfig{"web.e2e.svc:8080", "udp", 2 * time.Second, 0}},
		{[]string{"--every", "100ms", "10.0.0.1:80"}, probeConfig{"10.0.0.1:80", "tcp", time.Second, 100 * time.Millisecond}},
	} {
		got, err := parseProbe(c.args, io.Discard)
		if err != nil || got != c.want {
			t.Errorf("parseProbe(%q) = %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
	for _, args := range [][]string{
		nil, {"a:1", "b:2"}, {"--proto", "sctp", "a:1"}, {"--timeout", "0s", "a:1"}, {"--timeout", "soon", "a:1"}, {"--every", "-1s", "a:1"},
		{"10.0.0.1"}, {"fd00::1:80"}, {":80"}, {"a:0"}, {"a:65536"}, {"a:http"}, {"--bogus", "a:1"},
	} {
		if _, err := parseProbe(args, io.Discard); err == nil {
			t.Errorf("parseProbe(%q): no error", args)
		}
	}
}

func TestParseServe(t *testing.T) {
	host, _ := os.Hostname()
	for _, c := range []struct {
		args []string
		want serveConfig
	}{
		{nil, serveConfig{name: host, tcp: ports{8080}}},
		{[]string{"--udp", "5353"}, serveConfig{name: host, udp: ports{5353}}},
		{[]string{"--tcp", "8080,9090", "--tcp", "7070", "--udp", "53,5353", "--name", "web"},
			serveConfig{name: "web", tcp: ports{8080, 9090, 7070}, udp: ports{53, 5353}}},
	} {
		got, err := parseServe(c.args, io.Discard)
		if err != nil || got.name != c.want.name || !slices.Equal(got.tcp, c.want.tcp) || !slices.Equal(got.udp, c.want.udp) {
			t.Errorf("parseServe(%q) = %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
	for _, args := range [][]string{{"--tcp", "80,80"}, {"--tcp", "http"}, {"--udp", "70000"}, {"--tcp", "-1"}, {"extra"}, {"--tcp"}} {
		if _, err := parseServe(args, io.Discard); err == nil {
			t.Errorf("parseServe(%q): no error", args)
		}
	}
}

// agentCmd is this test binary started as the agent.
func agentCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "AGENT_TEST_MAIN=1")
	return cmd
}

// startAgent starts the agent with args, stops it at the end of the test if still running, and returns it with
// its stdout and stderr.
func startAgent(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer, io.Reader) {
	t.Helper()
	cmd := agentCmd(t, args...)
	stdout := &syncBuffer{}
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, stdout, stderr
}

// exitCode runs the agent and returns its exit status and stdout.
func exitCode(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := agentCmd(t, args...)
	out, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("agent %q: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// stopWithSIGTERM sends SIGTERM and wants exit status 0.
func stopWithSIGTERM(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("agent %q after SIGTERM: %v, want exit status 0", cmd.Args[1:], err)
	}
}

// TestCommand runs the agent as a program: serve, probe's exit statuses and output, sleep, SIGTERM.
func TestCommand(t *testing.T) {
	serve, stdout, stderr := startAgent(t, "serve", "--tcp", "0", "--udp", "0", "--name", "sub")
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil {
		t.Fatalf("serve said nothing: %v", err)
	}
	m := regexp.MustCompile(`^agent: sub serving tcp \S*:(\d+), udp \S*:(\d+)\n$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("serve's first line %q", line)
	}
	for i, proto := range []string{"tcp", "udp"} {
		code, out := exitCode(t, "probe", "--proto", proto, "127.0.0.1:"+m[i+1])
		var r probeResult
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.Reached || !strings.HasPrefix(r.Reply, "sub probe ") ||
			strings.Count(out, "\n") != 1 {
			t.Errorf("probe %s: exit %d, %q (%v)", proto, code, out, err)
		}
	}
	if code, out := exitCode(t, "probe", "--timeout", "500ms", closedPort(t, "tcp")); code != 1 || !strings.Contains(out, `"reached":false`) {
		t.Errorf("probe of a closed port: exit %d, %q; want 1", code, out)
	}
	for _, args := range [][]string{{}, {"bogus"}, {"probe"}, {"probe", "--proto", "icmp", "127.0.0.1:1"}, {"serve", "--tcp", "x"}, {"sleep", "5"}} {
		if code, out := exitCode(t, args...); code != 2 || out != "" {
			t.Errorf("agent %q: exit %d, stdout %q; want 2 and nothing", args, code, out)
		}
	}
	stopWithSIGTERM(t, serve)
	if es := entries(t, stdout.String()); len(es) != 2 || es[0].Proto != "tcp" || es[1].Proto != "udp" {
		t.Errorf("serve's stdout: %+v, want a tcp and a udp entry", es)
	}

	sleep, _, sleepErr := startAgent(t, "sleep")
	if line, err := bufio.NewReader(sleepErr).ReadString('\n'); err != nil || line != "agent: sleeping until SIGTERM\n" {
		t.Fatalf("sleep said %q (%v)", line, err)
	}
	stopWithSIGTERM(t, sleep)
}

// probe --every goes on, a line each time, until its context ends (SIGTERM), and then exits 0.
func TestProbeEvery(t *testing.T) {
	tcpPort, _, _ := startServe(t, "web")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- runProbe(ctx, []string{"--every", "20ms", "127.0.0.1:" + strconv.Itoa(tcpPort)}, out, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if got := <-code; got != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", got)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("%d lines, want at least 3:\n%s", len(lines), out.String())
	}
	var r probeResult
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil || !r.Reached {
		t.Errorf("first line %q: %+v %v, want reached", lines[0], r, err)
	}
}
