// Command agent is the program of the e2e suite's test image, moat.test/agent:1: one static binary that serves
// echo, probes a peer, or sleeps.
//
//	agent serve [--tcp PORTS] [--udp PORTS] [--name NAME]
//	agent probe [--timeout 1s] [--proto tcp|udp] [--every 100ms] ADDR:PORT
//	agent resolve [--type A] [--server ADDR[:PORT]] [--proto udp|tcp] [--timeout 2s] NAME
//	agent lookup [--every 200ms] [--count N] [--port 80] [--timeout 900ms] [--unique] [--server ADDR] NAME
//	agent sleep
//
// serve answers every line (TCP) or datagram (UDP) on the listed ports, on every address (IPv4 and IPv6), with
// "NAME LINE", and writes one JSON line per connection or datagram to stdout, naming the client. With no port
// flags it serves TCP 8080; NAME defaults to the host name (a pod's name).
//
// probe sends one line to ADDR:PORT ([ADDR]:PORT for IPv6), waits for its echo and prints one JSON line:
//
//	{"target":"10.0.0.7:8080","proto":"tcp","reached":true,"reply":"web probe 1f2e","error":"","ms":1,"local":"10.0.0.5:40512"}
//
// With --every it probes again at that interval, a line each time, until SIGTERM (then exit 0): a pod's watcher
// of a destination from its first instant. Otherwise it exits 0 when the echo came back, 1 when it did not
// (error then starts with timeout, refused, reset, unreachable, denied, closed, mismatch or failed), 2 on bad
// usage.
//
// resolve asks the pod's resolver (or --server) one question and prints one JSON line with the rcode and the
// addresses and CNAME targets of the answer; exit 0 when an answer came, whatever its rcode, 1 when none did.
//
// lookup resolves NAME (A) and connects to its first address on TCP --port, round after round, one JSON line a
// round ({"round":1,"name":"...","rcode":"NOERROR","addr":"...","reached":true,...}); a timeout under a second
// means a connection that needed a second SYN fails. --unique asks n<i>.NAME in round i. It runs until SIGTERM
// (exit 0), or --count rounds (exit 0 when every round reached its address).
//
// sleep does nothing: a client-only pod. serve and sleep end with exit status 0 on SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage:
  agent serve [--tcp PORTS] [--udp PORTS] [--name NAME]   echo servers (default: --tcp 8080); PORTS like 8080,9090
  agent probe [--timeout 1s] [--proto tcp|udp] [--every D] ADDR:PORT
                                                          one echo exchange; exit 0 reached, 1 not, 2 bad usage;
                                                          --every D: again every D until SIGTERM
  agent resolve [--type A] [--server ADDR[:PORT]] [--proto udp|tcp] [--timeout 2s] NAME
                                                          one DNS question; exit 0 answered (any rcode), 1 not
  agent lookup [--every 200ms] [--count N] [--port 80] [--timeout 900ms] [--unique] [--server ADDR] NAME
                                                          resolve, then connect, round after round
  agent sleep                                             wait for SIGTERM
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command line: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "probe":
		return runProbe(ctx, args[1:], stdout, stderr)
	case "resolve":
		return runResolve(ctx, args[1:], stdout, stderr)
	case "lookup":
		return runLookup(ctx, args[1:], stdout, stderr)
	case "sleep":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "agent: sleep takes no arguments\n%s", usage)
			return 2
		}
		fmt.Fprintln(stderr, "agent: sleeping until SIGTERM")
		<-ctx.Done()
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "agent: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

// badUsage reports a command's bad arguments on stderr (for -h, flag has printed the command's help already) and
// returns the exit status of bad usage.
func badUsage(stderr io.Writer, command string, err error) int {
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "agent: %s: %v\n", command, err)
	}
	return 2
}

// parseInterleaved parses args with fs, flags before and after the positional arguments alike, and returns the
// positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var out []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return out, nil
		}
		out = append(out, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
