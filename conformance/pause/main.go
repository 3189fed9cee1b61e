// Command pause is the e2e node's sandbox container program, moat.test/pause:1 (the kubelet's pod infra image):
// what Kubernetes' own pause does. It holds the pod's namespaces open by doing nothing, reaps the zombies that
// end up its children (it is PID 1 of the sandbox, so a shared process namespace's orphans are its children), and
// exits 0 on SIGINT or SIGTERM, which a PID 1 would otherwise ignore.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is what -v prints.
const version = "pause (moat conformance) 1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version)
		os.Exit(0)
	}
	os.Exit(run(os.Stderr))
}

// run waits for SIGINT or SIGTERM, reaping children on every SIGCHLD, and returns the exit status.
func run(stderr io.Writer) int {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		fmt.Fprintln(stderr, "pause: warning: not PID 1, so orphans are not reparented to me")
	}
	reap() // children that ended before the handler was there
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(stderr, "pause: shutting down, got signal: %v\n", sig)
		return 0
	}
	return 0
}

// reap waits for every child that has ended, without blocking, and returns how many there were. SIGCHLDs that
// arrive together are delivered once, so it loops until none is left.
func reap() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return n
		}
		n++
	}
}
