// Command moat-ipam is Moat's IPAM shim: it delegates to the real IPAM plugin and keeps an address from being
// handed out while an old identity still holds it. This build is a stub: the shim comes with its own issue.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	moatversion "github.com/moatfw/moat/internal/version"
)

func notYet(_ *skel.CmdArgs) error {
	return types.NewError(types.ErrInternal, "moat-ipam: this build of the shim does not implement the command yet", "")
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: notYet, Del: notYet, Check: notYet},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "moat-ipam "+moatversion.Version)
}
