package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	maxLine = 64 << 10         // the longest line or datagram answered
	idle    = 60 * time.Second // a TCP connection with nothing to say for this long is closed
)

// ports is a flag of port numbers: comma-separated, and the flag may be repeated.
type ports []int

func (p *ports) String() string {
	var s []string
	for _, n := range *p {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ",")
}

func (p *ports) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("port %q: want a number from 1 to 65535 (0: any free port)", f)
		}
		if slices.Contains(*p, n) && n != 0 {
			return fmt.Errorf("port %d twice", n)
		}
		*p = append(*p, n)
	}
	return nil
}

// serveConfig is what serve was asked for.
type serveConfig struct {
	name     string
	tcp, udp ports
}

func parseServe(args []string, stderr io.Writer) (serveConfig, error) {
	fs := flag.NewFlagSet("agent serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c serveConfig
	fs.Var(&c.tcp, "tcp", "TCP ports to serve, comma-separated (default 8080 when no --udp either)")
	fs.Var(&c.udp, "udp", "UDP ports to serve, comma-separated")
	fs.StringVar(&c.name, "name", "", "the name answers start with (default: the host name)")
	if err := fs.Parse(args); err != nil {
		return serveConfig{}, err
	}
	if fs.NArg() > 0 {
		return serveConfig{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(c.tcp) == 0 && len(c.udp) == 0 {
		c.tcp = ports{8080}
	}
	if c.name == "" {
		h, err := os.Hostname()
		if err != nil {
			return serveConfig{}, fmt.Errorf("host name: %w", err)
		}
		c.name = h
	}
	return c, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseServe(args, stderr)
	if err != nil {
		return badUsage(stderr, "serve", err)
	}
	s, err := listen(c, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "agent: serve: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "agent: %s serving %s\n", c.name, strings.Join(s.addrs(), ", "))
	s.run(ctx)
	fmt.Fprintf(stderr, "agent: %s stopped\n", c.name)
	return 0
}

// server is the echo servers of one serve.
type server struct {
	name string
	log  *connLog
	tcp  []net.Listener
	udp  []net.PacketConn

	mu    sync.Mutex
	conns map[net.Conn]bool // open TCP connections, closed on shutdown
}

// listen binds every port on every address: one dual-stack socket per port (IPv4 only where the kernel has no
// IPv6).
func listen(c serveConfig, stdout io.Writer) (*server, error) {
	s := &server{name: c.name, log: &connLog{w: stdout}, conns: map[net.Conn]bool{}}
	for _, p := range c.tcp {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			s.close()
			return nil, err
		}
		s.tcp = append(s.tcp, l)
	}
	for _, p := range c.udp {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(p))
		if err != nil {
			s.close()
			return nil, err
		}
		s.udp = append(s.udp, pc)
	}
	return s, nil
}

// addrs are the bound sockets, as "tcp [::]:8080".
func (s *server) addrs() []string {
	var a []string
	for _, l := range s.tcp {
		a = append(a, "tcp "+l.Addr().String())
	}
	for _, pc := range s.udp {
		a = append(a, "udp "+pc.LocalAddr().String())
	}
	return a
}

func (s *server) close() {
	for _, l := range s.tcp {
		l.Close()
	}
	for _, pc := range s.udp {
		pc.Close()
	}
}

// run serves until ctx ends, then closes every socket and connection and returns once all are done.
func (s *server) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range s.tcp {
		wg.Go(func() { s.acceptLoop(l, &wg) })
	}
	for _, pc := range s.udp {
		wg.Go(func() { s.udpLoop(pc) })
	}
	<-ctx.Done()
	s.close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	wg.Wait()
}

func (s *server) acceptLoop(l net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // out of file descriptors and the like: try again
			continue
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		wg.Go(func() {
			s.echo(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		})
	}
}

// echo answers every line of a TCP connection with "name line" until the client closes it or stays quiet.
func (s *server) echo(c net.Conn) {
	s.log.write(connEntry{Proto: "tcp", Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String()})
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), maxLine)
	for {
		c.SetDeadline(time.Now().Add(idle))
		if !sc.Scan() {
			return
		}
		if _, err := io.WriteString(c, s.name+" "+sc.Text()+"\n"); err != nil {
			return
		}
	}
}

// udpLoop answers every datagram with "name datagram", the datagram's line ending dropped.
func (s *server) udpLoop(pc net.PacketConn) {
	buf := make([]byte, maxLine)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // an ICMP error about an earlier answer, and the like
		}
		s.log.write(connEntry{Proto: "udp", Remote: from.String(), Local: pc.LocalAddr().String()})
		line := strings.TrimRight(string(buf[:n]), "\r\n")
		pc.WriteTo([]byte(s.name+" "+line+"\n"), from)
	}
}

// connEntry is serve's stdout line about one TCP connection or UDP datagram. Local is the socket's address: for
// UDP, the wildcard it is bound to.
type connEntry struct {
	Proto  string `json:"proto"`
	Remote string `json:"remote"`
	Local  string `json:"local"`
}

// connLog writes whole lines from many goroutines.
type connLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *connLog) write(e connEntry) {
	b, _ := json.Marshal(e)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(append(b, '\n'))
}
