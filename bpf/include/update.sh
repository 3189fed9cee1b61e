#!/usr/bin/env bash
# Refreshes the vendored libbpf and UAPI headers from the Debian packages libbpf-dev and linux-libc-dev.
# The datapath builds only against what is committed here, so a fresh machine builds the same objects.
# linux/types.h is Moat's own minimal stand-in (the real one pulls in asm/ headers a BPF target lacks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for f in bpf_helpers.h bpf_helper_defs.h bpf_endian.h; do
  install -m 0644 "/usr/include/bpf/$f" "$here/bpf/$f"
done
for f in bpf.h bpf_common.h; do
  install -m 0644 "/usr/include/linux/$f" "$here/linux/$f"
done
echo "vendored headers from libbpf-dev $(dpkg-query -W -f='${Version}' libbpf-dev) and linux-libc-dev $(dpkg-query -W -f='${Version}' linux-libc-dev)" > "$here/VERSIONS"
