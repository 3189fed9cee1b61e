package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolveResult is resolve's one line of output.
type resolveResult struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Server  string   `json:"server"`
	Proto   string   `json:"proto"`
	Rcode   string   `json:"rcode"`   // NOERROR, NXDOMAIN, ...; empty when no answer came
	Answers []string `json:"answers"` // the addresses of A and AAAA records, and CNAME targets
	Error   string   `json:"error"`
	MS      int64    `json:"ms"`
}

type resolveConfig struct {
	name, qtype, server, proto string
	timeout                    time.Duration
}

func parseResolve(args []string, stderr io.Writer) (resolveConfig, error) {
	fs := flag.NewFlagSet("agent resolve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := resolveConfig{}
	fs.StringVar(&c.qtype, "type", "A", "the query type: A, AAAA, HTTPS, TXT, ...")
	fs.StringVar(&c.server, "server", "", "ADDR[:PORT] of the resolver (default: the first nameserver of /etc/resolv.conf)")
	fs.StringVar(&c.proto, "proto", "udp", "udp or tcp")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "how long to wait for the answer")
	names, err := parseInterleaved(fs, args)
	if err != nil {
		return c, err
	}
	if len(names) != 1 {
		return c, fmt.Errorf("want one NAME, got %q", names)
	}
	c.name = dns.Fqdn(names[0])
	if _, ok := dns.StringToType[strings.ToUpper(c.qtype)]; !ok {
		return c, fmt.Errorf("type %q: not a DNS type", c.qtype)
	}
	if c.proto != "udp" && c.proto != "tcp" {
		return c, fmt.Errorf("protocol %q: want udp or tcp", c.proto)
	}
	if c.server == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			return c, fmt.Errorf("no --server and no nameserver in /etc/resolv.conf: %v", err)
		}
		c.server = conf.Servers[0]
	}
	if _, _, err := net.SplitHostPort(c.server); err != nil {
		c.server = net.JoinHostPort(c.server, "53")
	}
	return c, nil
}

// runResolve asks one question and prints one JSON line: exit 0 when an answer came (whatever its rcode), 1 when
// none did, 2 on bad usage.
func runResolve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseResolve(args, stderr)
	if err != nil {
		return badUsage(stderr, "resolve", err)
	}
	r := resolve(ctx, c)
	b, _ := json.Marshal(r)
	fmt.Fprintf(stdout, "%s\n", b)
	if r.Rcode == "" {
		return 1
	}
	return 0
}

func resolve(ctx context.Context, c resolveConfig) (r resolveResult) {
	start := time.Now()
	r = resolveResult{Name: c.name, Type: strings.ToUpper(c.qtype), Server: c.server, Proto: c.proto, Answers: []string{}}
	defer func() { r.MS = time.Since(start).Milliseconds() }()
	m := new(dns.Msg)
	m.SetQuestion(c.name, dns.StringToType[r.Type])
	client := &dns.Client{Net: c.proto, Timeout: c.timeout}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	in, _, err := client.ExchangeContext(ctx, m, c.server)
	if err != nil {
		r.Error = describe(err)
		return r
	}
	r.Rcode = dns.RcodeToString[in.Rcode]
	for _, rr := range in.Answer {
		switch v := rr.(type) {
		case *dns.A:
			r.Answers = append(r.Answers, v.A.String())
		case *dns.AAAA:
			r.Answers = append(r.Answers, v.AAAA.String())
		case *dns.CNAME:
			r.Answers = append(r.Answers, v.Target)
		}
	}
	return r
}
