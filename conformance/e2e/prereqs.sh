#!/usr/bin/env bash
# What the end-to-end node needs from Debian: containerd and runc (the CRI and its runtime), iptables (kube-proxy
# and the portmap plugin), iproute2 (the node's network). Installs what is missing; changes nothing else.
set -euo pipefail
need=()
for pkg in containerd runc iptables iproute2; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "e2e: installing ${need[*]} from Debian"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# the Debian package may start its own containerd under an init system: the suite runs its own, on its own socket
