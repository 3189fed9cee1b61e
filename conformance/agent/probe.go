package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// probeResult is probe's one line of output.
type probeResult struct {
	Target  string `json:"target"`
	Proto   string `json:"proto"`
	Reached bool   `json:"reached"`
	Reply   string `json:"reply"`
	Error   string `json:"error"`
	MS      int64  `json:"ms"`
	Local   string `json:"local"`
}

type probeConfig struct {
	target  string
	proto   string
	timeout time.Duration
	every   time.Duration // > 0: probe again at this interval until SIGTERM
}

// parseProbe reads probe's flags, which may come before or after the target.
func parseProbe(args []string, stderr io.Writer) (probeConfig, error) {
	fs := flag.NewFlagSet("agent probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := probeConfig{}
	fs.DurationVar(&c.timeout, "timeout", time.Second, "how long the whole exchange may take")
	fs.StringVar(&c.proto, "proto", "tcp", "tcp or udp")
	fs.DurationVar(&c.every, "every", 0, "probe again at this interval, one line each, until SIGTERM (exit 0)")
	targets, err := parseInterleaved(fs, args)
	if err != nil {
		return probeConfig{}, err
	}
	if len(targets) != 1 {
		return probeConfig{}, fmt.Errorf("want one ADDR:PORT, got %q", targets)
	}
	c.target = targets[0]
	if c.proto != "tcp" && c.proto != "udp" {
		return probeConfig{}, fmt.Errorf("protocol %q: want tcp or udp", c.proto)
	}
	if c.every < 0 {
		return probeConfig{}, fmt.Errorf("every %s: want a positive interval", c.every)
	}
	if c.timeout <= 0 {
		return probeConfig{}, fmt.Errorf("timeout %s: want more than nothing", c.timeout)
	}
	host, port, err := net.SplitHostPort(c.target)
	if err != nil {
		return probeConfig{}, fmt.Errorf("target %q: want ADDR:PORT, [ADDR]:PORT for IPv6: %w", c.target, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return probeConfig{}, fmt.Errorf("target %q: port %q: want a number from 1 to 65535", c.target, port)
	}
	if host == "" {
		return probeConfig{}, fmt.Errorf("target %q: no address", c.target)
	}
	return c, nil
}

func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseProbe(args, stderr)
	if err != nil {
		return badUsage(stderr, "probe", err)
	}
	if c.every > 0 {
		tick := time.NewTicker(c.every)
		defer tick.Stop()
		for {
			b, _ := json.Marshal(probe(ctx, c))
			fmt.Fprintf(stdout, "%s\n", b)
			select {
			case <-ctx.Done():
				return 0
			case <-tick.C:
			}
		}
	}
	r := probe(ctx, c)
	b, _ := json.Marshal(r)
	fmt.Fprintf(stdout, "%s\n", b)
	if !r.Reached {
		return 1
	}
	return 0
}

// probe sends "probe NONCE" to the target and waits, up to the timeout in all, for a line ending in it.
func probe(ctx context.Context, c probeConfig) (r probeResult) {
	start := time.Now()
	r = probeResult{Target: c.target, Proto: c.proto}
	defer func() { r.MS = time.Since(start).Milliseconds() }()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()

	nonce := make([]byte, 6)
	rand.Read(nonce)
	line := "probe " + hex.EncodeToString(nonce)

	var d net.Dialer
	conn, err := d.DialContext(ctx, c.proto, c.target)
	if err != nil {
		r.Error = describe(err)
		return r
	}
	defer conn.Close()
	r.Local = conn.LocalAddr().String()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }) // a signal ends the wait too
	defer stop()
	if _, err := io.WriteString(conn, line+"\n"); err != nil {
		r.Error = describe(err)
		return r
	}
	var reply string
	if c.proto == "udp" {
		buf := make([]byte, maxLine)
		n, err := conn.Read(buf)
		if err != nil {
			r.Error = describe(err)
			return r
		}
		reply = string(buf[:n])
	} else {
		reply, err = bufio.NewReader(io.LimitReader(conn, maxLine)).ReadString('\n')
		if err != nil && (reply == "" || !errors.Is(err, io.EOF)) {
			r.Error = describe(err)
			return r
		}
	}
	r.Reply = strings.TrimRight(reply, "\r\n")
	if !strings.HasSuffix(r.Reply, " "+line) {
		r.Error = fmt.Sprintf("mismatch: sent %q, the answer does not echo it", line)
		return r
	}
	r.Reached = true
	return r
}

// describe is an error's kind, then its text: timeout, refused, reset, unreachable, denied, closed, or failed.
func describe(err error) string {
	var ne net.Error
	kind := "failed"
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		kind = "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		kind = "unreachable"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		kind = "denied"
	case errors.Is(err, io.EOF):
		return "closed: the peer closed the connection without an answer"
	}
	return kind + ": " + err.Error()
}
