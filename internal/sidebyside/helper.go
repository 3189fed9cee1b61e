package sidebyside

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"time"
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

// helperMain runs a role: "server ADDR" echoes 64-byte messages on every connection; "crr ADDR DURATION" opens, exchanges once and closes connections; "probe
// ADDR" makes one exchange within a second.
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

func serve(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, msgSize)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

func exchange(c net.Conn, buf []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

// connectionRate opens connections for d, each with one 64-byte exchange, and counts the ones that complete.
func connectionRate(addr string, d time.Duration) (crrResult, error) {
	buf := make([]byte, msgSize)
	var done, errs int
	start := time.Now()
	for end := start.Add(d); time.Now().Before(end); {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			errs++
			continue
		}
		if err := exchange(c, buf, time.Now().Add(time.Second)); err != nil {
			errs++
		} else {
			done++
		}
		c.Close()
	}
	if done == 0 {
		return crrResult{}, fmt.Errorf("no connection completed (%d failed)", errs)
	}
	return crrResult{PerSec: float64(done) / time.Since(start).Seconds(), Errors: errs}, nil
}
