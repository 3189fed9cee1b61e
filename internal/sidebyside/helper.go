package sidebyside

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// The request-response and connection-rate endpoints run as processes of their own, pinned with taskset: the
// binary that imports this package re-executes itself with helperEnv naming the role, and init runs the role
// and exits before anything else (a test binary never reaches its tests).
const helperEnv = "MOAT_SIDEBYSIDE_HELPER"

const msgSize = 64

func init() {
	role := os.Getenv(helperEnv)
	if role == "" {
		return
	}
	if err := helperMain(role, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "sidebyside %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperCommand is the command line that runs role with args in namespace n pinned to cpu.
func helperCommand(n, cpu, role string, args ...string) ([]string, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	return inNS(n, cpu, append([]string{exe}, args...)...), append(os.Environ(), helperEnv+"="+role), nil
}

// crrResult is what the connection-rate client prints.
type crrResult struct {
	PerSec float64 `json:"per_sec"`
	Errors int     `json:"errors"`
}

// helperMain runs a role: "server ADDR" echoes 64-byte messages on every connection; "crr ADDR DURATION" opens,
// exchanges once and closes connections; "probe ADDR" makes one exchange within a second.
func helperMain(role string, args []string, out io.Writer) error {
	if len(args) < 1 {
		return fmt.Errorf("no address")
	}
	addr := args[0]
	var d time.Duration
	if role == "crr" {
		if len(args) < 2 {
			return fmt.Errorf("no duration")
		}
		var err error
		if d, err = time.ParseDuration(args[1]); err != nil {
			return err
		}
	}
	switch role {
	case "server":
		return serve(addr)
	case "crr":
		r, err := connectionRate(addr, d)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(r)
	case "probe":
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		return exchange(c, make([]byte, msgSize), time.Now().Add(time.Second))
	}
	return fmt.Errorf("unknown role %q", role)
}

// serve echoes 64-byte messages, one connection at a time (the clients here are sequential), through blocking
// system calls on one thread: no Go scheduler or netpoller between a packet and its answer.
func serve(addr string) error {
	sa, err := sockaddr(addr)
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(l, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(l, sa); err != nil {
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := unix.Listen(l, 1024); err != nil {
		return err
	}
	buf := make([]byte, msgSize)
	for {
		c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			return err
		}
		_ = setTimeouts(c, 2*time.Second)
		for readFull(c, buf) == nil && writeAll(c, buf) == nil {
		}
		unix.Close(c)
	}
}

// sockaddr is an IPv4 "address:port" as a socket address.
func sockaddr(addr string) (*unix.SockaddrInet4, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("address %q: want IPv4 address:port", addr)
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

// setTimeouts bounds every blocking send, receive and connect on fd.
func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

func readFull(fd int, buf []byte) error {
	for got := 0; got < len(buf); {
		n, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.EOF
		}
		got += n
	}
	return nil
}

func writeAll(fd int, buf []byte) error {
	for sent := 0; sent < len(buf); {
		n, err := unix.Write(fd, buf[sent:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		sent += n
	}
	return nil
}

func exchange(c net.Conn, buf []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

// connectionRate opens connections for d, each with one 64-byte exchange, and counts the ones that complete. Like
// the server it uses blocking system calls on one thread, so that a connection costs what the kernel (and the
// filter) make it cost; the client closes first, as an HTTP/1.0 client does.
func connectionRate(addr string, d time.Duration) (crrResult, error) {
	sa, err := sockaddr(addr)
	if err != nil {
		return crrResult{}, err
	}
	runtime.LockOSThread()
	buf := make([]byte, msgSize)
	var done, errs int
	var last error
	start := time.Now()
	for end := start.Add(d); time.Now().Before(end); {
		if last = connectOnce(sa, buf); last != nil {
			errs++
		} else {
			done++
		}
	}
	if done == 0 {
		return crrResult{}, fmt.Errorf("no connection completed (%d failed, the last: %v)", errs, last)
	}
	return crrResult{PerSec: float64(done) / time.Since(start).Seconds(), Errors: errs}, nil
}

func connectOnce(sa *unix.SockaddrInet4, buf []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := setTimeouts(fd, time.Second); err != nil {
		return err
	}
	if err := unix.Connect(fd, sa); err != nil {
		return err
	}
	if err := writeAll(fd, buf); err != nil {
		return err
	}
	return readFull(fd, buf)
}
