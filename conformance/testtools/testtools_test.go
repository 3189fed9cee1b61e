package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func runTool(t *testing.T, stdin string, argv ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(argv, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDispatch(t *testing.T) {
	if code, _, errOut := runTool(t, "", "/usr/bin/wget", "x"); code != 2 || !strings.Contains(errOut, "curl") {
		t.Errorf("unknown name: status %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runTool(t, "", "/testtools", "curl", "--data", "x"); code != curlUsage ||
		!strings.Contains(errOut, "--data") {
		t.Errorf("first argument names the tool: status %d, stderr %q", code, errOut)
	}
}

func TestCurl(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "pod-1 %s", r.URL.RawQuery)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	code, out, _ := runTool(t, "", "curl", "-g", "-q", "-s", "--max-time", "15", "--connect-timeout", "1",
		"http://"+host+"/hostName?x=1")
	if code != 0 || out != "pod-1 x=1" {
		t.Errorf("get: status %d, body %q", code, out)
	}
	if code, out, _ = runTool(t, "", "curl", "--silent", host+"/h"); code != 0 || out != "pod-1 " {
		t.Errorf("no scheme: status %d, body %q", code, out)
	}
	code, out, _ = runTool(t, "", "curl", "-g", "-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", srv.URL+"/missing")
	if code != 0 || out != "404" {
		t.Errorf("-w: status %d, out %q", code, out)
	}
	if code, out, _ = runTool(t, "", "curl", "-i", "-q", "-s", srv.URL+"/"); code != 0 ||
		!strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(out, "\r\n\r\npod-1 ") {
		t.Errorf("-i: status %d, out %q", code, out)
	}
	if code, _, _ = runTool(t, "", "curl", "-s", "--interface", "127.0.0.1", srv.URL); code != 0 {
		t.Errorf("--interface: status %d", code)
	}

	closed := closedPort(t)
	code, out, _ = runTool(t, "", "curl", "-s", "-w", "%{http_code}", "--connect-timeout", "1", "http://"+closed+"/")
	if code != curlConnect || out != "000" {
		t.Errorf("refused: status %d (want %d), out %q", code, curlConnect, out)
	}
}

// closedPort is a local TCP address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// fakeDNS answers A queries for the names in records over UDP and TCP on one port; other names get NXDOMAIN.
func fakeDNS(t *testing.T, records map[string]string) string {
	t.Helper()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := udp.LocalAddr().(*net.UDPAddr).Port
	tcp, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		udp.Close()
		t.Skipf("TCP port %d taken: %v", port, err)
	}
	t.Cleanup(func() { udp.Close(); tcp.Close() })
	answer := func(q []byte) []byte {
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
			return nil
		}
		m.Response = true
		qn := m.Questions[0].Name
		if ip, ok := records[qn.String()]; ok {
			var a [4]byte
			copy(a[:], net.ParseIP(ip).To4())
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: qn, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 30},
				Body:   &dnsmessage.AResource{A: a},
			}}
		} else {
			m.RCode = dnsmessage.RCodeNameError
		}
		b, _ := m.Pack()
		return b
	}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(answer(buf[:n]), from)
		}
	}()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			var size [2]byte
			if _, err := io.ReadFull(c, size[:]); err == nil {
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err == nil {
					r := answer(q)
					c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(r))), r...))
				}
			}
			c.Close()
		}
	}()
	return fmt.Sprint(port)
}

func TestDig(t *testing.T) {
	port := fakeDNS(t, map[string]string{
		"kubernetes.default.svc.cluster.local.": "10.96.0.1",
		"example.test.":                         "192.0.2.7",
	})
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("# a pod's\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\n"+
		"nameserver 127.0.0.1\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	oldConf, oldPort := resolvConf, dnsPort
	resolvConf, dnsPort = conf, port
	t.Cleanup(func() { resolvConf, dnsPort = oldConf, oldPort })

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"+notcp", "+noall", "+answer", "+search", "kubernetes.default", "A"},
			"kubernetes.default.svc.cluster.local.\t30\tIN\tA\t10.96.0.1\n"},
		{[]string{"+tcp", "+noall", "+answer", "+search", "kubernetes.default.svc", "A"},
			"kubernetes.default.svc.cluster.local.\t30\tIN\tA\t10.96.0.1\n"},
		{[]string{"+short", "example.test", "A"}, "192.0.2.7\n"},
		{[]string{"+notcp", "+noall", "+answer", "+search", "nothere.default", "A"}, ""},
		{[]string{"+short", "kubernetes.default", "A"}, ""}, // no +search: asked as it is
	} {
		code, out, errOut := runTool(t, "", append([]string{"dig"}, tc.args...)...)
		if code != 0 || out != tc.want {
			t.Errorf("dig %v: status %d, out %q (want %q), stderr %q", tc.args, code, out, tc.want, errOut)
		}
	}
	if code, _, _ := runTool(t, "", "dig", "+trace", "x"); code != digUsage {
		t.Errorf("unsupported option: status %d", code)
	}
}

func TestDNSCandidates(t *testing.T) {
	c := dnsConfig{search: []string{"a.svc", "svc"}, ndots: 2}
	for name, want := range map[string]string{
		"x":       "x.a.svc. x.svc. x.",
		"x.y.z":   "x.y.z. x.y.z.a.svc. x.y.z.svc.",
		"x.y.z.":  "x.y.z.",
		"x.y":     "x.y.a.svc. x.y.svc. x.y.",
		"host-1x": "host-1x.a.svc. host-1x.svc. host-1x.",
	} {
		if got := strings.Join(c.candidates(name), " "); got != want {
			t.Errorf("candidates(%q) = %s, want %s", name, got, want)
		}
	}
}

func TestNC(t *testing.T) {
	// TCP: the server answers the line and closes.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			line := make([]byte, 64)
			n, _ := c.Read(line)
			fmt.Fprintf(c, "pod-1 got %s", line[:n])
			c.Close()
		}
	}()
	host, port, _ := net.SplitHostPort(l.Addr().String())
	code, out, errOut := runTool(t, "hostName\n", "nc", "-v", "-t", "-w", "2", host, port)
	if code != 0 || out != "pod-1 got hostName\n" || !strings.Contains(errOut, "succeeded") {
		t.Errorf("tcp: status %d, out %q, stderr %q", code, out, errOut)
	}

	// UDP: one datagram back; nc waits -w after its input for more.
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo([]byte("pod-2 "+string(buf[:n])), from)
		}
	}()
	host, port, _ = net.SplitHostPort(u.LocalAddr().String())
	start := time.Now()
	code, out, _ = runTool(t, "hostName\n", "nc", "-w", "1", "-u", host, port)
	if code != 0 || out != "pod-2 hostName\n" {
		t.Errorf("udp: status %d, out %q", code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("udp: took %v with -w 1", d)
	}

	closedHost, closedPort, _ := net.SplitHostPort(closedPort(t))
	if code, _, _ = runTool(t, "x\n", "nc", "-w", "1", closedHost, closedPort); code != 1 {
		t.Errorf("refused: status %d, want 1", code)
	}
}

func TestGetentUsage(t *testing.T) {
	if code, _, _ := runTool(t, "", "getent", "passwd", "root"); code != 1 {
		t.Errorf("getent passwd: status %d, want 1", code)
	}
	if code, out, _ := runTool(t, "", "getent", "hosts", "localhost"); code != 0 || !strings.Contains(out, "localhost") {
		t.Errorf("getent hosts localhost: status %d, out %q", code, out)
	}
}
