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

// EchoStream is one TCP connection from the pod on which a line goes back and forth every 10 ms, until Stop.
type EchoStream struct {
	done      chan struct{}
	result    chan error
	exchanged atomic.Int64
}

// StreamEcho serves addr in the link's host namespace and starts the stream from the pod.
func StreamEcho(t testing.TB, pl *PodLink, addr string) *EchoStream {
	t.Helper()
	var ln net.Listener
	if err := pl.Host.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
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
	s := &EchoStream{done: make(chan struct{}), result: make(chan error, 1)}
	go func() {
		defer conn.Close()
		rd := bufio.NewReader(conn)
		for i := 0; ; i++ {
			select {
			case <-s.done:
				s.result <- nil
				return
			case <-time.After(10 * time.Millisecond):
			}
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			line := fmt.Sprintf("ping %d\n", i)
			if _, err := conn.Write([]byte(line)); err != nil {
				s.result <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			got, err := rd.ReadString('\n')
			if err != nil || got != line {
				s.result <- fmt.Errorf("echo %d: %q, %v", i, got, err)
				return
			}
			s.exchanged.Add(1)
		}
	}()
	return s
}

// Stop ends the stream and returns how many exchanges succeeded and the first failure.
func (s *EchoStream) Stop() (int64, error) {
	close(s.done)
	err := <-s.result
	return s.exchanged.Load(), err
}
