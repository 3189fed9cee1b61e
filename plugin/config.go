package main

import (
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
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
)

// config is one invocation's configuration: moat's entry, and the prevResult of the commands that have one.
type config struct {
	*cniconfig.NetConf
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
func parseConfig(stdin []byte, needPrev bool) (*config, error) {
	netConf, err := cniconfig.Parse(stdin)
	if err != nil {
		return nil, err
	}
	conf := &config{NetConf: netConf}
	if !needPrev {
		return conf, nil
	}
	if conf.RawPrevResult == nil {
		return nil, configError(types.ErrInvalidNetworkConfig,
			"moat: no prevResult: moat must be called as a chained plugin, after the primary network plugin")
	}
	if err := version.ParsePrevResult(&conf.NetConf.NetConf); err != nil {
		return nil, configError(types.ErrDecodingFailure, "moat: cannot decode prevResult: %v", err)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, configError(types.ErrDecodingFailure, "moat: cannot convert prevResult: %v", err)
	}
	conf.prevResult = prev
	return conf, nil
}

// key names the pod interface of an invocation.
func (c *config) key(args *skel.CmdArgs) endpoint.Key {
	return endpoint.Key{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// logger writes to the configured log file (never stdout: it carries the CNI result), or stderr.
func (c *config) logger() (*logrus.Entry, func()) {
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
func podArgs(conf *config, raw string) (namespace, pod, uid string, err error) {
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
