// Package agentapi is the enforcer's local API, for moatctl: JSON over HTTP on a unix socket (by default
// /run/moat/enforcer.sock, mode 0600, so only root on the node may ask). Every path starts with the API version;
// a server answers the versions it knows, and a client names the one it speaks.
//
//	GET  /v1/status      Status
//	GET  /v1/endpoints   []Endpoint
//	GET  /v1/policies    []Policy
//	POST /v1/trace       TraceRequest -> TraceResult
//	GET  /v1/report      who can reach what, from the policy in force, as package report encodes its Report
//	GET  /v1/flows       Flow as JSON lines: the recent ones (?since=5m, ?limit=N), then new ones with ?follow=1;
//	                     filters ?namespace=N and ?verdict=denied
//	GET  /v1/dns         DNSAnswer as JSON lines, like flows; filters ?namespace=N, ?pod=P, ?name=*.example.com
//	                     (a name or an fqdn pattern) and ?rcode=NXDOMAIN
//	GET  /v1/host        HostSafety: this node's safety set as derived now (Kubernetes source only)
//
// Errors are an Error body with an HTTP status: 400 for a bad request, 404 for an unknown namespace or pod.
package agentapi

import "time"

// Version is the API version this build serves and speaks.
const Version = "v1"

// DefaultSocket is where the enforcer listens.
const DefaultSocket = "/run/moat/enforcer.sock"

// Error is the body of every failed request.
type Error struct {
	Error string `json:"error"`
}

// Status is the state of the enforcer and the datapath on this node.
type Status struct {
	Version         string             `json:"version"`
	APIVersion      string             `json:"apiVersion"`
	Started         time.Time          `json:"started"`
	Source          string             `json:"source"`                  // "folder /etc/moat/policies" or "kubernetes"
	ServiceRanges   string             `json:"serviceRanges,omitempty"` // where Service ranges come from (Kubernetes)
	Ready           bool               `json:"ready"`                   // policy is in force and no problem degrades it
	Problems        []string           `json:"problems,omitempty"`
	Warnings        []string           `json:"warnings,omitempty"` // not problems: Ready stays
	AttachModes     map[string]int     `json:"attachModes"`        // tcx, clsact, "" (started without the datapath)
	Generation      uint64             `json:"generation"`
	Applied         time.Time          `json:"applied"` // when the generation in force was applied
	Endpoints       int                `json:"endpoints"`
	Namespaces      int                `json:"namespaces"`
	Policies        int                `json:"policies"`
	InvalidPolicies int                `json:"invalidPolicies"`
	Maps            map[string]MapFill `json:"maps"`
	LostEvents      uint64             `json:"lostEvents"`
	LastErrors      []LogLine          `json:"lastErrors,omitempty"`
}

// MapFill is how full one of the datapath's maps is.
type MapFill struct {
	Entries  int    `json:"entries"`
	Capacity uint32 `json:"capacity"`
}

// LogLine is one error the enforcer logged.
type LogLine struct {
	Time    time.Time         `json:"time"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// Endpoint is one pod interface the datapath guards.
type Endpoint struct {
	Pod         string   `json:"pod"`
	Namespace   string   `json:"namespace"`
	Identity    uint32   `json:"identity"`
	Addresses   []string `json:"addresses"`
	HostVeth    string   `json:"hostVeth"`
	Ifindex     int      `json:"ifindex"`
	ContainerID string   `json:"containerID"`
	Mode        string   `json:"mode"`     // tcx, clsact, or "" when it started without the datapath
	Attached    bool     `json:"attached"` // the datapath has the interface and its programs are attached
	Problem     string   `json:"problem,omitempty"`
}

// Policy is one FirewallPolicy and what became of it.
type Policy struct {
	Name       string   `json:"name"`
	State      string   `json:"state"` // Accepted or Invalid
	Reason     string   `json:"reason,omitempty"`
	Origin     string   `json:"origin,omitempty"` // file:document, or the API object
	Priority   int32    `json:"priority"`
	Mode       string   `json:"mode"`
	Namespaces []string `json:"namespaces"`
	Rules      int      `json:"rules"`
	Warnings   []string `json:"warnings,omitempty"` // e.g. that it selects no namespace
}

// TraceRequest is a hypothetical packet: from a namespace (or one of its pods), to or from a remote.
type TraceRequest struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod,omitempty"`
	Direction string `json:"direction,omitempty"` // egress (default) or ingress
	Protocol  string `json:"protocol,omitempty"`  // tcp (default), udp, icmp, icmpv6, sctp, or a number
	Port      uint16 `json:"port,omitempty"`      // the destination port: the remote's for egress, the pod's for ingress
	// The remote: an address, or a pod (namespace and pod) whose address the enforcer looks up.
	Remote          string `json:"remote,omitempty"`
	RemoteNamespace string `json:"remoteNamespace,omitempty"`
	RemotePod       string `json:"remotePod,omitempty"`
	// RemoteName is a DNS name: the trace answers for the addresses the namespace learned for it, and for one it
	// has not learned yet.
	RemoteName string `json:"remoteName,omitempty"`
}

// TraceResult is the reference evaluator's verdict, the same the datapath is checked against.
type TraceResult struct {
	Verdict         string `json:"verdict"` // allowed, denied or audit
	Reason          string `json:"reason"`
	Policy          string `json:"policy,omitempty"`
	Rule            string `json:"rule,omitempty"`
	AuditPolicy     string `json:"auditPolicy,omitempty"` // an Audit policy's rule that matched first and is reported
	AuditRule       string `json:"auditRule,omitempty"`
	Identity        uint32 `json:"identity"`
	Remote          string `json:"remote"` // the remote address traced
	RemoteClass     string `json:"remoteClass"`
	RemoteNamespace string `json:"remoteNamespace,omitempty"`
	// Between two pods, the other pod's namespace judges the packet too (its ingress for egress, and the other
	// way round); Verdict is then the stricter of the two.
	PeerVerdict string `json:"peerVerdict,omitempty"`
	PeerPolicy  string `json:"peerPolicy,omitempty"`
	PeerRule    string `json:"peerRule,omitempty"`
	Explanation string `json:"explanation"`
	// For a name (TraceRequest.RemoteName): the name, and each address the namespace learned for it now, traced.
	Name      string        `json:"name,omitempty"`
	Addresses []TraceResult `json:"addresses,omitempty"`
}

// Flow is one flow event, as in the flow log.
type Flow struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"direction"`
	Verdict   string    `json:"verdict"`
	Reason    string    `json:"reason"`
	Proto     string    `json:"proto"`
	Src       string    `json:"src"`
	Sport     uint16    `json:"sport"`
	Dst       string    `json:"dst"`
	Dport     uint16    `json:"dport"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	Remote    string    `json:"remote"` // the remote's namespace, or its class (world, node, metadata, cluster)
	Policy    string    `json:"policy,omitempty"`
	Rule      string    `json:"rule,omitempty"` // "egress[0]": the rule's place in its policy
}

// FlowFilter selects flows.
type FlowFilter struct {
	Namespace string
	Verdict   string
	Since     time.Duration // 0: every flow still in memory
	Limit     int           // at most this many past flows (the latest); 0: no limit
	Follow    bool
}

// DNSAnswer is one DNS answer a pod got: from a trusted resolver, or from Moat for a name the namespace may not
// resolve.
type DNSAnswer struct {
	Time      time.Time `json:"time"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	Name      string    `json:"name"`  // as asked, without the root's dot
	Type      string    `json:"type"`  // A, AAAA, HTTPS, ..., TYPE4242
	Rcode     string    `json:"rcode"` // NOERROR, NXDOMAIN, SERVFAIL, ...
	// Answer says who answered: "resolver", "moat" (NXDOMAIN, or a reset over TCP, for a dnsDeny name), or "audit"
	// (a dnsDeny name an Audit policy only reports: the resolver answered).
	Answer    string   `json:"answer"`
	Policy    string   `json:"policy,omitempty"` // the dnsDeny rule of a "moat" or "audit" answer
	Rule      string   `json:"rule,omitempty"`
	Addresses []string `json:"addresses,omitempty"` // the answer's A and AAAA records for the name (at most 8)
	Records   int      `json:"records"`             // records in the answer section
	// LatencyMicros runs from the query leaving the pod to the answer reaching it, on the node; 0 when the query
	// was not seen.
	LatencyMicros int64  `json:"latencyMicros,omitempty"`
	Resolver      string `json:"resolver"`
	Proto         string `json:"proto"` // udp or tcp
	// FQDN are the namespace's fqdn patterns the name is: its addresses were learned.
	FQDN []string `json:"fqdn,omitempty"`
	// ToAgent: the datapath could not read the answer in place, so the agent learned from it (and gave it back).
	ToAgent   bool `json:"toAgent,omitempty"`
	Truncated bool `json:"truncated,omitempty"` // TC: the pod asks again over TCP
	Partial   bool `json:"partial,omitempty"`   // not every record was read: Addresses are the first ones
}

// DNSFilter selects DNS answers.
type DNSFilter struct {
	Namespace string
	Pod       string
	Name      string // a name or an fqdn pattern (*.example.com, **.example.com), case-insensitive
	Rcode     string // NOERROR, NXDOMAIN, ...; case-insensitive
	Since     time.Duration
	Limit     int
	Follow    bool
}

// HostSafety is a node's safety set: what the host firewall keeps open on it whatever its host policy says, each
// entry limited by source, as derived from the cluster now.
type HostSafety struct {
	Node     string `json:"node"`
	Enforced bool   `json:"enforced"` // false: this version does not enforce the host firewall yet
	// Warnings say what is wide open or could not be learned.
	Warnings []string      `json:"warnings,omitempty"`
	Entries  []SafetyEntry `json:"entries"`
}

// SafetyEntry is one entry of a node's safety set.
type SafetyEntry struct {
	Name        string         `json:"name"` // apiserver, etcd, kubelet, scheduler, controller-manager, ssh, node
	What        string         `json:"what"`
	Ports       string         `json:"ports"` // tcp/6443, udp/51820-51821, icmpv6/133-137
	Learned     string         `json:"learned"`
	Overridable bool           `json:"overridable"` // FirewallConfig lets a host rule that names the port take it over
	Sources     []SafetySource `json:"sources"`
}

// SafetySource is a range that may reach an entry, and where it came from.
type SafetySource struct {
	Prefix string `json:"prefix"`
	From   string `json:"from"`
}
