package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/testutil"
)

// invocation is one direct run of the moat binary, as a runtime would make it.
type invocation struct {
	env   map[string]string
	stdin string
}

// run executes moat in the node's host namespace and returns its CNI error code (0 on success) and output.
func (n *node) run(t testing.TB, inv invocation) (uint, string) {
	t.Helper()
	return n.runBinary(t, "moat", inv)
}

// runBinary executes one of the built plugins in the node's host namespace.
func (n *node) runBinary(t testing.TB, name string, inv invocation) (uint, string) {
	t.Helper()
	var out bytes.Buffer
	var errOut bytes.Buffer
	err := n.inHost(func() error {
		cmd := exec.Command(filepath.Join(binDir, name))
		for k, v := range inv.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Stdin = strings.NewReader(inv.stdin)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		return cmd.Run()
	})
	if err == nil {
		return 0, out.String()
	}
	var res types.Error
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
		t.Fatalf("%s failed (%v) without a CNI error result on stdout: %q (stderr %q)", name, err, out.String(), errOut.String())
	}
	return res.Code, out.String()
}

func TestBadInput(t *testing.T) {
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")}, nil)
	n := newNodeIn(t, pl.Host, true)
	prev := func(ifname string) string {
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "interfaces": [{"name": %q, "sandbox": %q}],
			"ips": [{"address": "10.250.0.2/24", "interface": 0}]}`, ifname, pl.Pod.Path())
	}
	conf := func(extra string, prevResult string) string {
		c := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "moattest", "type": "moat", "pinRoot": %q, "endpointDir": %q%s`,
			n.pinRoot, filepath.Join(n.state, "endpoints"), extra)
		if prevResult != "" {
			c += `, "prevResult": ` + prevResult
		}
		return c + "}"
	}
	env := func(change func(map[string]string)) map[string]string {
		e := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-bad", "CNI_NETNS": pl.Pod.Path(),
			"CNI_IFNAME": "eth0", "CNI_PATH": binDir,
			"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + testNamespace + ";K8S_POD_NAME=bad"}
		if change != nil {
			change(e)
		}
		return e
	}
	good := invocation{env: env(nil), stdin: conf("", prev("eth0"))}
	goodTCX := invocation{env: env(nil), stdin: conf(`, "attachMode": "tcx"`, prev("eth0"))} // links pinned at ADD

	cases := []struct {
		name  string
		inv   invocation
		code  uint
		setup func() func()
	}{
		{"malformed JSON", invocation{env(nil), `{"cniVersion": "1.0.0", "name": `}, types.ErrDecodingFailure, nil},
		{"no prevResult", invocation{env(nil), conf("", "")}, types.ErrInvalidNetworkConfig, nil},
		{"unknown cniVersion", invocation{env(nil), strings.Replace(conf("", prev("eth0")), `"1.0.0", "name"`, `"9.9.9", "name"`, 1)},
			types.ErrIncompatibleCNIVersion, nil},
		{"prevResult without the interface", invocation{env(nil), conf("", prev("eth1"))}, types.ErrInvalidNetworkConfig, nil},
		{"prevResult not decodable", invocation{env(nil), conf("", `{"cniVersion": "1.0.0", "ips": "no"}`)}, types.ErrDecodingFailure, nil},
		{"bad failPolicy", invocation{env(nil), conf(`, "failPolicy": "maybe"`, prev("eth0"))}, types.ErrInvalidNetworkConfig, nil},
		{"no K8S args", invocation{env(func(e map[string]string) { e["CNI_ARGS"] = "IgnoreUnknown=1" }), conf("", prev("eth0"))},
			types.ErrInvalidEnvironmentVariables, nil},
		{"no container id", invocation{env(func(e map[string]string) { delete(e, "CNI_CONTAINERID") }), conf("", prev("eth0"))},
			types.ErrInvalidEnvironmentVariables, nil},
		{"a netns that does not exist", invocation{env(func(e map[string]string) { e["CNI_NETNS"] = "/var/run/netns/moat-none" }), conf("", prev("eth0"))},
			types.ErrInvalidNetNS, nil},
		{"namespace without identity", invocation{env(func(e map[string]string) {
			e["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=unknown;K8S_POD_NAME=bad"
		}), conf("", prev("eth0"))}, types.ErrTryAgainLater, nil},
		{"enforcer state missing", invocation{env(nil), strings.Replace(conf("", prev("eth0")), n.pinRoot, n.pinRoot+"-none", 1)},
			types.ErrTryAgainLater, nil},
		{"pin folder unusable, after the endpoint was written and the links attached", goodTCX, types.ErrInternal, func() func() {
			blocker := filepath.Join(n.pinRoot, "endpoints", "moattest")
			if err := os.MkdirAll(filepath.Dir(blocker), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(blocker, nil, 0o600); err == nil {
				return func() { os.Remove(blocker) }
			}
			// bpffs holds no plain files: a pinned map of that name blocks the folder just as well
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Pin(blocker); err != nil {
				t.Fatal(err)
			}
			return func() { m.Unpin(); m.Close() }
		}},
		{"host veth vanished", good, types.ErrInternal, func() func() {
			// move the host side into another namespace: the pod's peer ifindex names nothing here any more
			elsewhere := testutil.NewNS(t)
			moveLink(t, pl.Host, pl.HostIfname, elsewhere)
			return func() { moveLink(t, elsewhere, pl.HostIfname, pl.Host) }
		}},
	}
	for _, c := range cases {
		var undo func()
		if c.setup != nil {
			undo = c.setup()
		}
		code, out := n.run(t, c.inv)
		if undo != nil {
			undo()
		}
		if code != c.code {
			t.Errorf("%s: code %d, want %d (%s)", c.name, code, c.code, out)
		}
		n.requireClean(t)
		n.requireNoLinks(t, pl.HostIfindex)
	}

	// the same invocation, whole, works: the corpus fails for the reasons it names
	if code, out := n.run(t, good); code != 0 {
		t.Fatalf("good ADD: code %d: %s", code, out)
	}
	del := good
	del.env = env(func(e map[string]string) { e["CNI_COMMAND"] = "DEL" })
	if code, out := n.run(t, del); code != 0 {
		t.Fatalf("DEL: code %d: %s", code, out)
	}
	n.requireClean(t)
}

func moveLink(t *testing.T, from ns.NetNS, name string, to ns.NetNS) {
	t.Helper()
	err := from.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(l, int(to.Fd())); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("move %s: %v", name, err)
	}
	if err := to.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatalf("bring %s up: %v", name, err)
	}
}
