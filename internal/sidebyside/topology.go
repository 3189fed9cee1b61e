package sidebyside

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
)

// The addresses of the topology: client (the pod) -> router (the host, where the filter sits) -> server (the
// Internet). They live only in the namespaces a topology creates.
const (
	clientAddr   = "10.77.1.2"
	routerPodGW  = "10.77.1.1"
	routerUpAddr = "10.77.2.1"
	serverLink   = "10.77.2.2"
	serverAddr   = "198.51.100.1"
	serverNet    = "198.51.100.0/24"
	podIfname    = "sbspod" // the pod veth's host end, in the router namespace
	upIfname     = "sbsup"  // the router's link to the server
	iperfPort    = 5201
	rrPort       = 5202 // sockperf
	crrPort      = 5203 // the connection-rate echo server
	lastPort     = crrPort
)

// Placement is where the processes of a run sit on this machine's CPUs.
const Placement = "iperf3 client on CPU 0 and server on CPU 1 (taskset); the request-response client and server " +
	"(sockperf ping-pong) and the connection-rate client and echo server all on CPU 1, so a round trip has no cross-CPU wakeup and a filter's cost is not lost in " +
	"it; a veth hands a packet to the peer namespace on the sending CPU, so the router's forwarding and the filter " +
	"run in softirq on the CPU of whichever side sends"

const (
	clientCPU = "0" // iperf3 -c
	serverCPU = "1" // iperf3 -s
	echoCPU   = "1" // the request-response and connection-rate clients and servers, together
)

// topology is three network namespaces joined by two veths, made with ip(8) and removed by close.
type topology struct {
	client, router, server string // namespace names, under /run/netns
}

func newTopology(ctx context.Context) (t *topology, err error) {
	tag := fmt.Sprintf("sbs%d-%04x", os.Getpid(), rand.IntN(1<<16))
	t = &topology{client: tag + "-client", router: tag + "-router", server: tag + "-server"}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	for _, n := range []string{t.client, t.router, t.server} {
		if err := run(ctx, "ip", "netns", "add", n); err != nil {
			return t, err
		}
		if err := run(ctx, "ip", "-n", n, "link", "set", "lo", "up"); err != nil {
			return t, err
		}
	}
	steps := [][]string{
		{"ip", "-n", t.router, "link", "add", podIfname, "type", "veth", "peer", "name", "eth0", "netns", t.client},
		{"ip", "-n", t.router, "link", "add", upIfname, "type", "veth", "peer", "name", "eth0", "netns", t.server},
		{"ip", "-n", t.router, "addr", "add", routerPodGW + "/24", "dev", podIfname},
		{"ip", "-n", t.router, "addr", "add", routerUpAddr + "/24", "dev", upIfname},
		{"ip", "-n", t.router, "link", "set", podIfname, "up"},
		{"ip", "-n", t.router, "link", "set", upIfname, "up"},
		{"ip", "-n", t.router, "route", "add", serverNet, "via", serverLink},
		{"ip", "netns", "exec", t.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "-n", t.client, "addr", "add", clientAddr + "/24", "dev", "eth0"},
		{"ip", "-n", t.client, "link", "set", "eth0", "up"},
		{"ip", "-n", t.client, "route", "add", "default", "via", routerPodGW},
		// the connection rate opens tens of thousands of connections to one server port
		{"ip", "netns", "exec", t.client, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"},
		{"ip", "netns", "exec", t.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"},
		{"ip", "-n", t.server, "addr", "add", serverLink + "/24", "dev", "eth0"},
		{"ip", "-n", t.server, "addr", "add", serverAddr + "/32", "dev", "lo"},
		{"ip", "-n", t.server, "link", "set", "eth0", "up"},
		{"ip", "-n", t.server, "route", "add", "default", "via", routerUpAddr},
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return t, err
		}
	}
	return t, nil
}

// close removes the namespaces, and with them the veths and any iptables or nft state made in them.
func (t *topology) close() error {
	var errs []string
	for _, n := range []string{t.client, t.router, t.server} {
		if _, err := os.Stat("/run/netns/" + n); err != nil {
			continue
		}
		if err := run(context.Background(), "ip", "netns", "del", n); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove namespaces: %s", strings.Join(errs, "; "))
	}
	return nil
}

// inNS is the command line that runs argv in namespace n pinned to cpu ("" leaves it unpinned).
func inNS(n, cpu string, argv ...string) []string {
	out := []string{"ip", "netns", "exec", n}
	if cpu != "" {
		out = append(out, "taskset", "-c", cpu)
	}
	return append(out, argv...)
}

// run runs a command and returns its error with its output.
func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, nil, name, args...)
	return err
}

// output runs a command with stdin and returns its standard output.
func output(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
