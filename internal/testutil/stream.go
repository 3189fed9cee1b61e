package testutil

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// EchoStream is one TCP connection from the pod on which a line goes back and forth every 10 ms, until Stop or
// until an exchange fails.
type EchoStream struct {
	done      chan struct{}
	ended     chan struct{} // closed when the stream ends, err set
	err       error
	exchanged atomic.Int64
}

// StreamEcho serves addr in the link's host namespace and starts the stream from the pod.
func StreamEcho(t testing.TB, pl *PodLink, addr string) *EchoStream {
	t.Helper()
	ln, err := ListenTCP(pl.Host, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	var conn net.Conn
	if err := pl.Pod.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("open the allowed stream: %v", err)
	}
	s := &EchoStream{done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(s.ended)
		defer conn.Close()
		rd := bufio.NewReader(conn)
		for i := 0; ; i++ {
			select {
			case <-s.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			line := fmt.Sprintf("ping %d\n", i)
			if _, err := conn.Write([]byte(line)); err != nil {
				s.err = fmt.Errorf("write %d: %w", i, err)
				return
			}
			got, err := rd.ReadString('\n')
			if err != nil || got != line {
				s.err = fmt.Errorf("echo %d: %q, %v", i, got, err)
				return
			}
			s.exchanged.Add(1)
		}
	}()
	return s
}

// Exchanged is how many exchanges have succeeded so far.
func (s *EchoStream) Exchanged() int64 { return s.exchanged.Load() }

// Ended is closed once the stream has ended: stopped, or an exchange failed.
func (s *EchoStream) Ended() <-chan struct{} { return s.ended }

// Stop ends the stream and returns how many exchanges succeeded and the first failure.
func (s *EchoStream) Stop() (int64, error) {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	<-s.ended
	return s.exchanged.Load(), s.err
}
