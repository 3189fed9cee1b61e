// Command moat is Moat's chained CNI plugin: it tags a pod with its namespace identity and attaches the pinned
// datapath to the pod's host veth. This build is a stub: the plugin comes with its own issue.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	moatversion "github.com/moatfw/moat/internal/version"
)

func notYet(_ *skel.CmdArgs) error {
	return types.NewError(types.ErrInternal, "moat: this build of the plugin does not implement the command yet", "")
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: notYet, Del: notYet, Check: notYet},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "moat "+moatversion.Version)
}
