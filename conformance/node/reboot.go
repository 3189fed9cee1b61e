package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Reboot stands for the node's machine losing power and starting again. Every process of the node is SIGKILLed
// (its containerd, kubelet and kube-proxy, the containers' shims and the containers, Moat's among them) and what
// lives in memory goes: the pods' network namespaces (and with them their veths and the programs attached
// there), every mount the node's components made (containers' root filesystems, the kubelet's volumes), the
// node's bpf filesystem (every pin), /run/moat and containerd's state. What a disk keeps stays, as on a real
// node: the CNI configuration and plugins (Moat's included), containerd's images and records, the kubelet's
// folder, the IPAM leases. The node's network namespace and its links stay too: they stand for the machine's
// network cards and the datacenter network. Then the components start again; it returns once the node is Ready
// (its pods come back at the kubelet's pace), with how long the restart took.
func (n *Node) Reboot(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	n.logf("reboot: killing every process and container, dropping the runtime state")
	for i := len(n.procs) - 1; i >= 0; i-- {
		n.procs[i].Kill()
	}
	n.procs = nil
	var errs []error
	errs = append(errs, killShims(n.sock), removeCgroups(n.Name))
	errs = append(errs, n.dropRuntimeMounts())
	for _, dir := range []string{filepath.Dir(n.sock), n.backing("/run/moat"), n.backing(bpffsPath)} {
		errs = append(errs, emptyDir(dir))
	}
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	if err := makeCgroup(n.Name); err != nil {
		return 0, err
	}
	if err := n.start(ctx); err != nil {
		return 0, fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	took := time.Since(start)
	n.logf("reboot: Ready again %s after the power went", took.Round(100*time.Millisecond))
	return took, nil
}

// dropRuntimeMounts unmounts, inside the node's mount namespace, what its components mounted at run time
// (containerd's and the kubelet's mounts, the pods' network namespaces) and removes the network namespaces'
// files. Only mounts of the node's own namespace are touched: another node's network namespace files share
// /run/netns but are mounted in its namespace only.
func (n *Node) dropRuntimeMounts() error {
	prefixes := []string{n.dir + "/containerd/", n.dir + "/kubelet/", filepath.Dir(n.sock) + "/", "/run/netns/cni-"}
	script := fmt.Sprintf(`mounts=$(awk '{print $5}' /proc/self/mountinfo | grep -E '^(%s)' | sort -r)
for m in $mounts; do umount -l "$m" || exit 1; done
for m in $mounts; do case "$m" in /run/netns/cni-*) rm -f "$m" ;; esac; done
`, strings.Join(quoteRegexps(prefixes), "|"))
	out, err := exec.Command("nsenter", "--mount="+n.mountNSPath(), "--", "sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("unmount %s's runtime mounts: %v: %s", n.Name, err, out)
	}
	return nil
}

func quoteRegexps(prefixes []string) []string {
	var q []string
	for _, p := range prefixes {
		q = append(q, strings.NewReplacer(".", `\.`, "+", `\+`).Replace(p))
	}
	return q
}

// emptyDir removes what a folder holds (every pin, on a bpf filesystem), keeping the folder.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == "maps.debug" || e.Name() == "progs.debug" {
			continue // a bpf filesystem's own (the kernel's preloaded iterators): not a pin, never removable
		}
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
