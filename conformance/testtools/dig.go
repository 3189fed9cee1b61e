package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dig's exit statuses.
const (
	digOK      = 0
	digUsage   = 1
	digNoReply = 9
)

// resolvConf is where dig reads the pod's DNS configuration, and dnsPort the servers' port (tests change both).
var (
	resolvConf = "/etc/resolv.conf"
	dnsPort    = "53"
)

type digOptions struct {
	name    string
	qtype   dnsmessage.Type
	tcp     bool
	short   bool
	search  bool
	answers bool // print the answer section (dig prints it unless +noall without +answer)
	server  string
}

var digTypes = map[string]dnsmessage.Type{
	"A": dnsmessage.TypeA, "AAAA": dnsmessage.TypeAAAA, "CNAME": dnsmessage.TypeCNAME,
	"PTR": dnsmessage.TypePTR, "SRV": dnsmessage.TypeSRV, "TXT": dnsmessage.TypeTXT,
	"MX": dnsmessage.TypeMX, "NS": dnsmessage.TypeNS, "SOA": dnsmessage.TypeSOA, "ANY": dnsmessage.TypeALL,
}

func parseDig(args []string) (digOptions, error) {
	o := digOptions{qtype: dnsmessage.TypeA, answers: true}
	typed := false
	for _, a := range args {
		switch {
		case a == "+tcp" || a == "+vc":
			o.tcp = true
		case a == "+notcp" || a == "+novc":
			o.tcp = false
		case a == "+short":
			o.short = true
		case a == "+search":
			o.search = true
		case a == "+nosearch":
			o.search = false
		case a == "+noall":
			o.answers = false
		case a == "+answer":
			o.answers = true
		case strings.HasPrefix(a, "+"):
			return o, fmt.Errorf("option %s: not supported here", a)
		case strings.HasPrefix(a, "@"):
			o.server = a[1:]
		case strings.HasPrefix(a, "-"):
			return o, fmt.Errorf("option %s: not supported here", a)
		default:
			if t, ok := digTypes[strings.ToUpper(a)]; ok && o.name != "" && !typed {
				o.qtype, typed = t, true
				continue
			}
			if o.name != "" {
				return o, fmt.Errorf("one name only (have %q, then %q)", o.name, a)
			}
			o.name = a
		}
	}
	if o.name == "" {
		return o, errors.New("no name to look up")
	}
	return o, nil
}

func dig(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	o, err := parseDig(args)
	if err != nil {
		fmt.Fprintf(stderr, "dig: %v\n", err)
		return digUsage
	}
	conf, err := readResolvConf(resolvConf)
	if err != nil && o.server == "" {
		fmt.Fprintf(stderr, "dig: %v\n", err)
		return digNoReply
	}
	servers := conf.servers
	if o.server != "" {
		servers = []string{net.JoinHostPort(o.server, dnsPort)}
	}
	names := []string{fqdn(o.name)}
	if o.search {
		names = conf.candidates(o.name)
	}
	var last *dnsmessage.Message
	var lastErr error
	for _, n := range names {
		m, err := exchange(servers, n, o.qtype, o.tcp)
		if err != nil {
			lastErr = err
			continue
		}
		last = m
		if m.RCode == dnsmessage.RCodeSuccess && len(m.Answers) > 0 {
			break
		}
	}
	if last == nil {
		fmt.Fprintf(stderr, ";; no reply: %v\n", lastErr)
		return digNoReply
	}
	if o.short || o.answers {
		for _, rr := range last.Answers {
			if o.short {
				fmt.Fprintln(stdout, rdata(rr.Body))
			} else {
				fmt.Fprintf(stdout, "%s\t%d\tIN\t%s\t%s\n", rr.Header.Name, rr.Header.TTL,
					strings.TrimPrefix(rr.Header.Type.String(), "Type"), rdata(rr.Body))
			}
		}
	}
	return digOK
}

// rdata is a record's data as dig prints it.
func rdata(b dnsmessage.ResourceBody) string {
	switch r := b.(type) {
	case *dnsmessage.AResource:
		return net.IP(r.A[:]).String()
	case *dnsmessage.AAAAResource:
		return net.IP(r.AAAA[:]).String()
	case *dnsmessage.CNAMEResource:
		return r.CNAME.String()
	case *dnsmessage.PTRResource:
		return r.PTR.String()
	case *dnsmessage.NSResource:
		return r.NS.String()
	case *dnsmessage.MXResource:
		return fmt.Sprintf("%d %s", r.Pref, r.MX)
	case *dnsmessage.SRVResource:
		return fmt.Sprintf("%d %d %d %s", r.Priority, r.Weight, r.Port, r.Target)
	case *dnsmessage.TXTResource:
		q := make([]string, len(r.TXT))
		for i, t := range r.TXT {
			q[i] = strconv.Quote(t)
		}
		return strings.Join(q, " ")
	case *dnsmessage.SOAResource:
		return fmt.Sprintf("%s %s %d %d %d %d %d", r.NS, r.MBox, r.Serial, r.Refresh, r.Retry, r.Expire, r.MinTTL)
	default:
		return fmt.Sprintf("%v", b)
	}
}

func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// dnsConfig is what dig reads of resolv.conf.
type dnsConfig struct {
	servers []string // host:port
	search  []string
	ndots   int
}

func readResolvConf(path string) (dnsConfig, error) {
	c := dnsConfig{ndots: 1}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("read resolver configuration: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if net.ParseIP(fields[1]) != nil {
				c.servers = append(c.servers, net.JoinHostPort(fields[1], dnsPort))
			}
		case "search", "domain":
			c.search = fields[1:]
		case "options":
			for _, opt := range fields[1:] {
				if v, ok := strings.CutPrefix(opt, "ndots:"); ok {
					if n, err := strconv.Atoi(v); err == nil && n >= 0 {
						c.ndots = n
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("read %s: %w", path, err)
	}
	if len(c.servers) == 0 {
		c.servers = []string{net.JoinHostPort("127.0.0.1", dnsPort)}
	}
	return c, nil
}

// candidates are the names a search tries, in order: the name as given first when it has at least ndots dots,
// else after the search domains.
func (c dnsConfig) candidates(name string) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	var searched []string
	for _, d := range c.search {
		searched = append(searched, fqdn(name+"."+strings.TrimSuffix(d, ".")))
	}
	if strings.Count(name, ".") >= c.ndots {
		return append([]string{fqdn(name)}, searched...)
	}
	return append(searched, fqdn(name))
}

// exchange asks each server in turn until one answers (two tries each over UDP).
func exchange(servers []string, name string, qtype dnsmessage.Type, tcp bool) (*dnsmessage.Message, error) {
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, fmt.Errorf("name %q: %w", name, err)
	}
	id := uint16(rand.Uint32())
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: qtype, Class: dnsmessage.ClassINET}},
	}
	packed, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	tries := 2
	if tcp {
		tries = 1
	}
	var lastErr error
	for _, s := range servers {
		for range tries {
			m, err := roundTrip(s, packed, id, tcp, 3*time.Second)
			if err == nil {
				return m, nil
			}
			lastErr = err
		}
	}
	return nil, lastErr
}

func roundTrip(server string, query []byte, id uint16, tcp bool, timeout time.Duration) (*dnsmessage.Message, error) {
	network := "udp"
	if tcp {
		network = "tcp"
	}
	conn, err := net.DialTimeout(network, server, timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	var reply []byte
	if tcp {
		framed := binary.BigEndian.AppendUint16(nil, uint16(len(query)))
		if _, err := conn.Write(append(framed, query...)); err != nil {
			return nil, err
		}
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return nil, err
		}
		reply = make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(conn, reply); err != nil {
			return nil, err
		}
	} else {
		if _, err := conn.Write(query); err != nil {
			return nil, err
		}
		buf := make([]byte, 65535)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return nil, err
			}
			if n >= 2 && binary.BigEndian.Uint16(buf) == id {
				reply = buf[:n]
				break
			}
		}
	}
	var m dnsmessage.Message
	if err := m.Unpack(reply); err != nil {
		return nil, fmt.Errorf("reply from %s: %w", server, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("reply from %s: id %d, asked %d", server, m.ID, id)
	}
	return &m, nil
}
