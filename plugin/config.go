package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
)

// Failure policies: what ADD does when the enforcer's state or the namespace's identity is missing.
const (
	FailClosed = "closed"
	FailOpen   = "open"
)

// NetConf is moat's entry in the conflist.
type NetConf struct {
	types.NetConf
	FailPolicy       string `json:"failPolicy,omitempty"`
	LogLevel         string `json:"logLevel,omitempty"`
	LogFile          string `json:"logFile,omitempty"`
	PinRoot          string `json:"pinRoot,omitempty"`
	SocketPath       string `json:"socketPath,omitempty"`
	DefaultNamespace string `json:"defaultNamespace,omitempty"`
	// AttachMode is how programs hang on host veths: tcx (the default where the kernel has it) or clsact.
	AttachMode string `json:"attachMode,omitempty"`
	// EndpointDir is where endpoint records go (default /run/moat/endpoints); tests point it elsewhere.
	EndpointDir string `json:"endpointDir,omitempty"`

	prevResult *current.Result
}

// K8sArgs are the Kubernetes arguments kubelet (through the runtime) passes in CNI_ARGS.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// configError is a CNI error result with a code and a message that names what is wrong.
func configError(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

// parseConfig decodes and checks stdin; with needPrev it also requires and converts the prevResult.
func parseConfig(stdin []byte, needPrev bool) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, configError(types.ErrDecodingFailure, "moat: cannot decode the network configuration: %v", err)
	}
	if conf.FailPolicy == "" {
		conf.FailPolicy = FailClosed
	}
	if conf.FailPolicy != FailClosed && conf.FailPolicy != FailOpen {
		return nil, configError(types.ErrInvalidNetworkConfig, "moat: failPolicy %q: want %q or %q",
			conf.FailPolicy, FailClosed, FailOpen)
	}
	if conf.LogLevel != "" {
		if _, err := logrus.ParseLevel(conf.LogLevel); err != nil {
			return nil, configError(types.ErrInvalidNetworkConfig, "moat: logLevel %q: %v", conf.LogLevel, err)
		}
	}
	if err := bpf.CheckAttachMode(bpf.AttachMode(conf.AttachMode)); err != nil {
		return nil, configError(types.ErrInvalidNetworkConfig, "moat: attachMode: %v", err)
	}
	if conf.PinRoot == "" {
		conf.PinRoot = bpf.DefaultPinRoot
	}
	if conf.EndpointDir == "" {
		conf.EndpointDir = endpoint.DefaultDir
	}
	if conf.Name != "" && !endpoint.ValidName(conf.Name) {
		return nil, configError(types.ErrInvalidNetworkConfig, "moat: network name %q cannot name a folder", conf.Name)
	}
	if conf.DefaultNamespace != "" {
		if _, err := bpf.NewNamespaceKey(conf.DefaultNamespace); err != nil {
			return nil, configError(types.ErrInvalidNetworkConfig, "moat: defaultNamespace: %v", err)
		}
	}
	if !needPrev {
		return conf, nil
	}
	if conf.RawPrevResult == nil {
		return nil, configError(types.ErrInvalidNetworkConfig,
			"moat: no prevResult: moat must be called as a chained plugin, after the primary network plugin")
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, configError(types.ErrDecodingFailure, "moat: cannot decode prevResult: %v", err)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, configError(types.ErrDecodingFailure, "moat: cannot convert prevResult: %v", err)
	}
	conf.prevResult = prev
	return conf, nil
}

// lifecycle is the endpoint lifecycle at the configured paths.
func (c *NetConf) lifecycle() endpoint.Lifecycle {
	return endpoint.Lifecycle{Store: endpoint.Store{Dir: c.EndpointDir}, PinRoot: c.PinRoot}
}

// key names the pod interface of an invocation.
func (c *NetConf) key(args *skel.CmdArgs) endpoint.Key {
	return endpoint.Key{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// logger writes to the configured log file (never stdout: it carries the CNI result), or stderr.
func (c *NetConf) logger() (*logrus.Entry, func()) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetLevel(logrus.WarnLevel)
	if lvl, err := logrus.ParseLevel(c.LogLevel); err == nil && c.LogLevel != "" {
		l.SetLevel(lvl)
	}
	closer := func() {}
	if c.LogFile != "" {
		if f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			l.SetOutput(f)
			closer = func() { f.Close() }
		}
	} else if c.LogLevel == "" {
		l.SetOutput(io.Discard)
	}
	return l.WithFields(logrus.Fields{"plugin": "moat", "network": c.Name}), closer
}

// podArgs reads the pod's namespace, name and uid from CNI_ARGS.
func podArgs(conf *NetConf, raw string) (namespace, pod, uid string, err error) {
	args := K8sArgs{}
	if err := types.LoadArgs(raw, &args); err != nil {
		return "", "", "", configError(types.ErrInvalidEnvironmentVariables, "moat: CNI_ARGS: %v", err)
	}
	namespace = string(args.K8S_POD_NAMESPACE)
	if namespace == "" {
		if conf.DefaultNamespace == "" {
			return "", "", "", configError(types.ErrInvalidEnvironmentVariables,
				"moat: CNI_ARGS has no K8S_POD_NAMESPACE and the configuration names no defaultNamespace")
		}
		namespace = conf.DefaultNamespace
	}
	if _, err := bpf.NewNamespaceKey(namespace); err != nil || strings.ContainsAny(namespace, "/") {
		return "", "", "", configError(types.ErrInvalidEnvironmentVariables, "moat: K8S_POD_NAMESPACE %q is not a namespace name", namespace)
	}
	return namespace, string(args.K8S_POD_NAME), string(args.K8S_POD_UID), nil
}
