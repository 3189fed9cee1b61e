// Command moat-install copies Moat's CNI binaries and chains moat into the primary conflist. This build is a
// stub: the installer comes with its own issue.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "moat-install: not implemented in this build")
	os.Exit(1)
}
