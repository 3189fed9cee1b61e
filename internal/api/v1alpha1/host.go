package v1alpha1

// HostFirewallConfig configures the nodes' own firewall. The safety set it describes is what a node keeps open
// before any host rule, limited by source (docs/policy.md, "The node's safety set"): the API server, etcd, the
// kubelet, the scheduler and the controller manager, SSH, and what a node needs to stay a node.
type HostFirewallConfig struct {
	// Enabled, false, turns the host firewall off on every node whatever the host policies say; true (default)
	// turns it on for the nodes a host policy selects, and only those.
	Enabled *bool `json:"enabled,omitempty"`
	// AdminCIDRs may reach the API server and SSH (TCP 22) from outside the cluster; nodes always may. Omitted:
	// every address may (as without a host firewall; the status warns).
	// +kubebuilder:validation:MaxItems=256
	AdminCIDRs []CIDR `json:"adminCIDRs,omitempty"`
	// EtcdPeers replace the addresses that may reach etcd's client and peer ports, which are otherwise learned:
	// the API servers (the kubernetes Service's endpoints) and the control-plane nodes.
	// +kubebuilder:validation:MaxItems=256
	EtcdPeers []CIDR `json:"etcdPeers,omitempty"`
	// Overrides are the safety entries a host rule may take over by naming its port and protocol explicitly
	// (without it here, such a rule does not touch the entry): apiserver, etcd, kubelet, scheduler,
	// controller-manager, ssh, node.
	// +kubebuilder:validation:MaxItems=7
	// +kubebuilder:validation:items:Enum=apiserver;etcd;kubelet;scheduler;controller-manager;ssh;node
	Overrides []SafetyEntry `json:"overrides,omitempty"`
	// ProbationSeconds is how long a new host policy runs before the datapath goes back to the previous one,
	// unless the enforcer confirmed it (its own connection to the API server still works); default 10.
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=300
	ProbationSeconds *int32 `json:"probationSeconds,omitempty"`
	// Ports of the control plane where a cluster moved them from the defaults: etcd's client and peer ports
	// (2379, 2380), the scheduler's (10259) and the controller manager's (10257). The API server's port is
	// learned from the kubernetes Service's endpoints and the kubelet's from each Node's status.
	Ports *ControlPlanePorts `json:"ports,omitempty"`
}

// ControlPlanePorts are the control plane's ports that cannot be learned from the API.
type ControlPlanePorts struct {
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EtcdClient *int32 `json:"etcdClient,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EtcdPeer *int32 `json:"etcdPeer,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Scheduler *int32 `json:"scheduler,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	ControllerManager *int32 `json:"controllerManager,omitempty"`
}

// SafetyEntry names one entry of a node's safety set.
// +kubebuilder:validation:Enum=apiserver;etcd;kubelet;scheduler;controller-manager;ssh;node
type SafetyEntry string

// The entries of a node's safety set.
const (
	SafetyAPIServer         SafetyEntry = "apiserver"
	SafetyEtcd              SafetyEntry = "etcd"
	SafetyKubelet           SafetyEntry = "kubelet"
	SafetyScheduler         SafetyEntry = "scheduler"
	SafetyControllerManager SafetyEntry = "controller-manager"
	SafetySSH               SafetyEntry = "ssh"
	SafetyNode              SafetyEntry = "node" // DHCP, neighbour discovery, the CNI's tunnels and BGP between nodes
)

// Default ports of the control plane.
const (
	DefaultAPIServerPort         = 6443
	DefaultEtcdClientPort        = 2379
	DefaultEtcdPeerPort          = 2380
	DefaultKubeletPort           = 10250
	DefaultSchedulerPort         = 10259
	DefaultControllerManagerPort = 10257
	DefaultProbationSeconds      = 10
)
