package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

type ncOptions struct {
	verbose bool
	udp     bool
	wait    time.Duration // -w: the connect timeout, and how long to wait for more once the input ended; 0: no limit
	host    string
	port    string
}

func parseNC(args []string) (ncOptions, error) {
	var o ncOptions
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-v":
			o.verbose = true
		case "-u":
			o.udp = true
		case "-t":
			o.udp = false
		case "-w":
			if i+1 >= len(args) {
				return o, errors.New("option -w: needs seconds")
			}
			i++
			s, err := strconv.ParseFloat(args[i], 64)
			if err != nil || s < 0 {
				return o, fmt.Errorf("option -w: bad number of seconds %q", args[i])
			}
			o.wait = time.Duration(s * float64(time.Second))
		default:
			if len(a) > 1 && a[0] == '-' {
				return o, fmt.Errorf("option %s: not supported here", a)
			}
			rest = append(rest, a)
		}
	}
	if len(rest) != 2 {
		return o, errors.New("want HOST PORT")
	}
	o.host, o.port = rest[0], rest[1]
	return o, nil
}

// nc sends its input to HOST PORT (each read of it a datagram with -u) and copies what comes back to stdout,
// until the peer closes or, once the input ended, -w seconds pass without anything coming back.
func nc(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseNC(args)
	if err != nil {
		fmt.Fprintf(stderr, "nc: %v\n", err)
		return 1
	}
	network := "tcp"
	if o.udp {
		network = "udp"
	}
	addr := net.JoinHostPort(o.host, o.port)
	conn, err := net.DialTimeout(network, addr, o.wait)
	if err != nil {
		if o.verbose {
			fmt.Fprintf(stderr, "nc: connect to %s port %s (%s) failed: %v\n", o.host, o.port, network, err)
		}
		return 1
	}
	defer conn.Close()
	if o.verbose {
		fmt.Fprintf(stderr, "Connection to %s %s port [%s/*] succeeded!\n", o.host, o.port, network)
	}

	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		buf := make([]byte, 32*1024)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	received := make(chan error, 1)
	go func() {
		buf := make([]byte, 64*1024)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				if _, werr := stdout.Write(buf[:n]); werr != nil {
					received <- werr
					return
				}
				if o.wait > 0 {
					select {
					case <-inputDone:
						conn.SetReadDeadline(time.Now().Add(o.wait))
					default:
					}
				}
			}
			if err != nil {
				received <- err
				return
			}
		}
	}()

	select {
	case err := <-received:
		return ncStatus(err)
	case <-inputDone:
	}
	if o.wait > 0 {
		conn.SetReadDeadline(time.Now().Add(o.wait))
	}
	return ncStatus(<-received)
}

// ncStatus is 0 when the peer closed or went quiet for -w, 1 on a failure (the connection refused on send,
// reset).
func ncStatus(err error) int {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return 0
	}
	return 1
}
