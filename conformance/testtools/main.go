// Command testtools stands in for the client programs that Kubernetes' networking e2e tests run inside their
// test images through `sh -c`: curl, dig, getent and nc. Upstream's agnhost image gets them from Alpine
// (curl, bind-tools, netcat-openbsd, musl's getent); Moat's images are built from static binaries alone, so this
// one static program provides the subset of each tool's flags that the [sig-network] tests use, chosen by the
// name it is run as (a link /usr/bin/curl -> testtools), or by its first argument:
//
//	curl [-s] [-q] [-g] [-i] [-o FILE] [-w '%{http_code}'] [--connect-timeout S] [--max-time S] [--interface IP] URL
//	dig [+tcp|+notcp] [+noall] [+answer] [+short] [+search] [@SERVER] NAME [TYPE]
//	getent hosts NAME
//	nc [-v] [-t|-u] [-w S] HOST PORT
//
// An option outside that subset is refused with exit status 2, so a test that needs more fails visibly rather
// than on a quietly different behaviour. Exit statuses follow the real tools where the tests read them
// (curl: 6 unresolved, 7 not connected, 28 timed out; getent: 2 not found).
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// tool is one command: its arguments (without the name), standard streams, and its exit status.
type tool func(args []string, stdin io.Reader, stdout, stderr io.Writer) int

var tools = map[string]tool{
	"curl":   curl,
	"dig":    dig,
	"getent": getent,
	"nc":     nc,
}

// Names are the tools, for the image's links.
func Names() []string {
	var names []string
	for n := range tools {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "testtools: no program name")
		return 2
	}
	name, args := filepath.Base(argv[0]), argv[1:]
	if _, ok := tools[name]; !ok && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	t, ok := tools[name]
	if !ok {
		fmt.Fprintf(stderr, "testtools: run as one of %v (a link of that name, or its first argument)\n", Names())
		return 2
	}
	return t(args, stdin, stdout, stderr)
}
