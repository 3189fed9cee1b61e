package hostile

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

// stream is one TCP connection from a pod to a server of the stand-in Internet, both ends in the test's hands,
// so the server can speak first: a packet from the world into a pod whose namespace denies world ingress passes
// only on the connection's conntrack entry.
type stream struct {
	pod, server  net.Conn
	podRd, srvRd *bufio.Reader
	podPort      uint16
	serverAddr   netip.AddrPort
}

// openStream listens on a World address of the Internet namespace and connects the pod to it.
func openStream(t *testing.T, e *env, p *simnode.Pod, port uint16) *stream {
	t.Helper()
	s := &stream{serverAddr: netip.AddrPortFrom(simnode.WorldAddr(0), port)}
	ln, err := testutil.ListenTCP(e.node.Internet, s.serverAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	if err := p.Net.Do(func(ns.NetNS) error {
		var err error
		s.pod, err = net.DialTimeout("tcp", s.serverAddr.String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect %s -> %s: %v", p.Addr, s.serverAddr, err)
	}
	s.server = <-accepted
	if s.server == nil {
		t.Fatal("the server accepted nothing")
	}
	t.Cleanup(func() { s.pod.Close(); s.server.Close() })
	s.podPort = uint16(s.pod.LocalAddr().(*net.TCPAddr).Port)
	s.podRd, s.srvRd = bufio.NewReader(s.pod), bufio.NewReader(s.server)
	return s
}

// exchange sends a line from the server to the pod first, then one back; nil if both arrive in time.
func (s *stream) exchange(line string, within time.Duration) error {
	deadline := time.Now().Add(within)
	_ = s.pod.SetDeadline(deadline)
	_ = s.server.SetDeadline(deadline)
	if _, err := fmt.Fprintf(s.server, "%s\n", line); err != nil {
		return fmt.Errorf("server writes: %w", err)
	}
	got, err := s.podRd.ReadString('\n')
	if err != nil || got != line+"\n" {
		return fmt.Errorf("the pod reads %q: %w", got, err)
	}
	if _, err := fmt.Fprintf(s.pod, "%s\n", line); err != nil {
		return fmt.Errorf("pod writes: %w", err)
	}
	got, err = s.srvRd.ReadString('\n')
	if err != nil || got != line+"\n" {
		return fmt.Errorf("the server reads %q: %w", got, err)
	}
	return nil
}
