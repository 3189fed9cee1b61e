package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Round after round, lookup asks n<i>.NAME (--unique) and reaches the answer's address on the port; a name with no
// address, or an address that does not answer, is a round not reached (exit 1 after --count rounds).
func TestLookup(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				_, _ = c.Write([]byte("echo " + line))
			}()
		}
	}()
	port := echo.Addr().(*net.TCPAddr).Port
	var mu sync.Mutex
	var asked []string
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		mu.Lock()
		asked = append(asked, q.Question[0].Name)
		mu.Unlock()
		if strings.HasSuffix(q.Question[0].Name, ".ok.test.") {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA,
				Class: dns.ClassINET, Ttl: 1}, A: net.ParseIP("127.0.0.1")})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	defer srv.Shutdown()

	lines := func(out *bytes.Buffer) []lookupResult {
		var rs []lookupResult
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var r lookupResult
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			rs = append(rs, r)
		}
		return rs
	}
	var out, errOut bytes.Buffer
	args := []string{"lookup", "--server", pc.LocalAddr().String(), "--port", strconv.Itoa(port), "--every", "10ms",
		"--count", "3", "--unique", "ok.test"}
	if code := run(args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d, want 0: %s%s", code, out.String(), errOut.String())
	}
	rs := lines(&out)
	if len(rs) != 3 {
		t.Fatalf("%d rounds, want 3: %s", len(rs), out.String())
	}
	for i, r := range rs {
		if r.Round != i+1 || r.Name != "n"+strconv.Itoa(i+1)+".ok.test" || r.Rcode != "NOERROR" || r.Addr != "127.0.0.1" || !r.Reached {
			t.Errorf("round %d: %+v", i+1, r)
		}
	}
	mu.Lock()
	if strings.Join(asked, " ") != "n1.ok.test. n2.ok.test. n3.ok.test." {
		t.Errorf("asked %v", asked)
	}
	mu.Unlock()
	out.Reset()
	if code := run([]string{"lookup", "--server", pc.LocalAddr().String(), "--count", "1", "nope.test"}, &out, &errOut); code != 1 {
		t.Errorf("a name with no address: exit %d, want 1: %s", code, out.String())
	}
	if rs := lines(&out); len(rs) != 1 || rs[0].Reached || rs[0].Rcode != "NXDOMAIN" || !strings.HasPrefix(rs[0].Error, "no address") {
		t.Errorf("a name with no address: %+v", rs)
	}
	if code := run([]string{"lookup", "--port", "0", "x.test"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Errorf("port 0: exit %d, want 2", code)
	}
}
