#!/bin/sh
# Installs what the side-by-side comparison runs (iperf3, sockperf, iptables-legacy/-nft, nft, taskset) when it is
# missing; running it again changes nothing.
set -eu
missing=""
command -v iperf3 >/dev/null 2>&1 || missing="$missing iperf3"
command -v sockperf >/dev/null 2>&1 || missing="$missing sockperf"
command -v iptables-legacy-restore >/dev/null 2>&1 || missing="$missing iptables"
command -v iptables-nft-restore >/dev/null 2>&1 || case "$missing" in *iptables*) ;; *) missing="$missing iptables" ;; esac
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
if [ -z "$missing" ]; then
	exit 0
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
