package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// lookupResult is one round of lookup: the name asked, its answer, and the connection to its first address.
type lookupResult struct {
	Round     int    `json:"round"`
	Name      string `json:"name"`
	Rcode     string `json:"rcode"`
	Addr      string `json:"addr"`
	Reached   bool   `json:"reached"`
	Error     string `json:"error"`
	DNSMS     int64  `json:"dnsMs"`
	ConnectMS int64  `json:"connectMs"`
}

type lookupConfig struct {
	resolve resolveConfig
	port    int
	every   time.Duration
	count   int  // rounds; 0: until SIGTERM
	unique  bool // round i asks n<i>.NAME, so no cache answers it
}

func parseLookup(args []string, stderr io.Writer) (lookupConfig, error) {
	fs := flag.NewFlagSet("agent lookup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := lookupConfig{}
	fs.IntVar(&c.port, "port", 80, "the TCP port to connect to")
	fs.DurationVar(&c.every, "every", 200*time.Millisecond, "the interval between rounds")
	fs.IntVar(&c.count, "count", 0, "rounds to run (0: until SIGTERM)")
	fs.BoolVar(&c.unique, "unique", false, "round i asks n<i>.NAME")
	timeout := fs.Duration("timeout", 900*time.Millisecond, "how long the question and the exchange may each take "+
		"(under a second: a connection that needs a second SYN fails)")
	server := fs.String("server", "", "ADDR[:PORT] of the resolver (default: the first nameserver of /etc/resolv.conf)")
	names, err := parseInterleaved(fs, args)
	if err != nil {
		return c, err
	}
	if len(names) != 1 {
		return c, fmt.Errorf("want one NAME, got %q", names)
	}
	if c.port < 1 || c.port > 65535 {
		return c, fmt.Errorf("port %d: want 1 to 65535", c.port)
	}
	if c.every <= 0 || *timeout <= 0 || c.count < 0 {
		return c, fmt.Errorf("every %s, timeout %s, count %d: want positive durations and a count of 0 or more", c.every, *timeout, c.count)
	}
	rargs := []string{"--timeout", timeout.String(), names[0]}
	if *server != "" {
		rargs = append([]string{"--server", *server}, rargs...)
	}
	r, err := parseResolve(rargs, stderr)
	if err != nil {
		return c, err
	}
	c.resolve = r
	return c, nil
}

// runLookup resolves and connects, round after round, one JSON line a round, until SIGTERM (exit 0) or --count
// rounds (exit 0 when every round reached its address, 1 otherwise).
func runLookup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseLookup(args, stderr)
	if err != nil {
		return badUsage(stderr, "lookup", err)
	}
	tick := time.NewTicker(c.every)
	defer tick.Stop()
	failed := false
	for i := 1; c.count == 0 || i <= c.count; i++ {
		r := lookupRound(ctx, c, i)
		failed = failed || !r.Reached
		b, _ := json.Marshal(r)
		fmt.Fprintf(stdout, "%s\n", b)
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
	if failed {
		return 1
	}
	return 0
}

func lookupRound(ctx context.Context, c lookupConfig, i int) lookupResult {
	rc := c.resolve
	if c.unique {
		rc.name = "n" + strconv.Itoa(i) + "." + rc.name
	}
	r := lookupResult{Round: i, Name: strings.TrimSuffix(rc.name, ".")}
	answer := resolve(ctx, rc)
	r.Rcode, r.DNSMS = answer.Rcode, answer.MS
	for _, a := range answer.Answers {
		if net.ParseIP(a) != nil {
			r.Addr = a
			break
		}
	}
	if r.Addr == "" {
		r.Error = "no address: " + answer.Error
		return r
	}
	p := probe(ctx, probeConfig{target: net.JoinHostPort(r.Addr, strconv.Itoa(c.port)), proto: "tcp", timeout: rc.timeout})
	r.Reached, r.Error, r.ConnectMS = p.Reached, p.Error, p.MS
	return r
}
