#!/usr/bin/env bash
# Refreshes the vendored libbpf and UAPI headers from Debian's libbpf-dev and linux-libc-dev packages of a
# release whose kernel headers know tcx (trixie: Linux 6.12, libbpf 1.5). The packages are downloaded, not
# installed, through a private apt state, so the machine's own headers stay as they are.
# The datapath builds only against what is committed here, so a fresh machine builds the same objects.
# linux/types.h is Moat's own minimal stand-in (the real one pulls in asm/ headers a BPF target lacks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${SUITE:-trixie}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian $suite main" > "$work/sources.list"
apt=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$work/lists"
  -o Dir::Cache::Archives="$work/archives" -o APT::Sandbox::User=root)
apt-get "${apt[@]}" update >/dev/null
(cd "$work" && apt-get "${apt[@]}" download libbpf-dev linux-libc-dev >/dev/null)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
inc="$work/root/usr/include"
for f in bpf_helpers.h bpf_helper_defs.h bpf_endian.h; do
  install -m 0644 "$inc/bpf/$f" "$here/bpf/$f"
done
for f in bpf.h bpf_common.h if_ether.h; do
  install -m 0644 "$inc/linux/$f" "$here/linux/$f"
done
version() { dpkg-deb -f "$(ls "$work"/"$1"_*.deb)" Version; }
echo "vendored headers from Debian $suite: libbpf-dev $(version libbpf-dev) and linux-libc-dev $(version linux-libc-dev)" > "$here/VERSIONS"
