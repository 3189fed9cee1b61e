package enforcer

import (
	"errors"
	"sort"

	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
)

// endpointList is every recorded pod, checked against the datapath and the host's links.
func (s *Server) endpointList() []agentapi.Endpoint {
	records, err := s.Store.List("")
	if err != nil {
		return nil
	}
	tagged, _ := s.E.dp.Endpoints()
	out := make([]agentapi.Endpoint, 0, len(records))
	for _, r := range records {
		ep := agentapi.Endpoint{Pod: r.Pod, Namespace: r.Namespace, Identity: r.Identity, Addresses: r.Addresses,
			HostVeth: r.HostIfname, Ifindex: r.HostIfindex, ContainerID: r.ContainerID, Mode: r.State()}
		dpEp, inMap := tagged[uint32(r.HostIfindex)]
		if inMap {
			ep.Identity = dpEp.Identity
		}
		l, lerr := s.links().LinkByIndex(r.HostIfindex)
		switch {
		case lerr != nil || l.Attrs().Name != r.HostIfname:
			ep.Problem = "host veth gone (the next reconcile removes it)"
		case r.AttachMode == "":
			ep.Problem = "started without the datapath (failPolicy open): not enforced until adopted"
		case !inMap:
			ep.Problem = "attached but not in the endpoint map: every packet is dropped"
		default: // the attachment's own check, the one CHECK and reconcile make
			err := r.CheckAttachment(s.E.dp)
			ep.Attached = err == nil || errors.Is(err, bpf.ErrOtherPrograms)
			if err != nil {
				ep.Problem = "programs not as this enforcer's: " + err.Error()
			}
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out
}

func (s *Server) links() *netlink.Handle {
	if s.Links == nil {
		return &netlink.Handle{}
	}
	return s.Links
}
