#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries that Moat's tests run (a real etcd, kube-apiserver,
# kube-controller-manager), from the Go module proxy alone, into a cache kept between runs:
#
#   ${MOAT_KUBE_CACHE:-/var/cache/moat/kube}/v1.37.2/bin/
#
# Usage: conformance/kube/build.sh [--print-dir] [COMPONENT...]   (GO=path/to/go to choose the toolchain)
#   COMPONENT: etcd kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy
#              e2e.test agnhost coredns
#              (default: etcd kube-apiserver kube-controller-manager kubectl)
#   --print-dir: print the bin directory and exit, building nothing.
#
# The last three are the conformance pass's (`make conformance-bins`, conformance/upstream): e2e.test is
# Kubernetes' end-to-end test binary cut down to the [sig-network] tests (k8s/e2e, `go test -c`), agnhost the
# test image's program (k8s.io/kubernetes/test/images/agnhost), both of the same Kubernetes version as the
# node; coredns is CoreDNS from its own wrapper module (coredns/), the cluster's DNS.
#
# A binary already present and executable is not rebuilt (delete it, or the whole version directory, to force
# a rebuild). Each binary is built under a temporary name and renamed into place, so an interrupted or concurrent
# run never leaves a partial binary. The wrapper modules beside this script (k8s/, etcd/, coredns/) pin the
# versions; they are nested modules, not part of github.com/moatfw/moat.
# Cold build of the default set on 2 cores: ~6-9 min, ~2.7 GB RAM peak, ~1.3 GB module cache and ~5 GB of
# Go build cache; kube-scheduler, kubelet and kube-proxy then add well under a minute.
set -euo pipefail

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
COREDNS_VERSION=v1.15.0 # also in coredns/go.mod
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_dir="${MOAT_KUBE_CACHE:-/var/cache/moat/kube}/${KUBE_VERSION}/bin"

components=()
for arg in "$@"; do
	case "$arg" in
	--print-dir)
		echo "$bin_dir"
		exit 0
		;;
	-h | --help)
		sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	etcd | kube-apiserver | kube-controller-manager | kubectl | kube-scheduler | kubelet | kube-proxy | \
		e2e.test | agnhost | coredns)
		components+=("$arg")
		;;
	*)
		echo "build.sh: unknown component or flag '$arg' (see --help)" >&2
		exit 2
		;;
	esac
done
if [ ${#components[@]} -eq 0 ]; then
	components=(etcd kube-apiserver kube-controller-manager kubectl)
fi

GO=${GO:-go}
if ! command -v "$GO" >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	GO=/usr/local/go/bin/go
fi
mkdir -p "$bin_dir"

# What the Kubernetes release build stamps in; without it the binaries report v0.0.0-master+$Format:%H$.
version_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
kube_ldflags="-s -w"
for p in "${version_pkgs[@]}"; do
	kube_ldflags+=" -X ${p}.gitVersion=${KUBE_VERSION}"
	kube_ldflags+=" -X ${p}.gitMajor=$(echo "${KUBE_VERSION#v}" | cut -d. -f1)"
	kube_ldflags+=" -X ${p}.gitMinor=$(echo "${KUBE_VERSION#v}" | cut -d. -f2)"
	kube_ldflags+=" -X ${p}.gitTreeState=clean"
done
etcd_ldflags="-s -w"
coredns_ldflags="-s -w"

# Builds package $3 from wrapper module $2 into $bin_dir/$1; with a sixth argument "test", the package's test
# binary (go test -c).
build_one() {
	local name=$1 module_dir=$2 pkg=$3 ldflags=$4 version=$5 kind=${6:-}
	local out="$bin_dir/$name"
	if [ -x "$out" ] && [ -f "$out" ]; then
		echo "$name $version: cached at $out"
		return 0
	fi
	# A private directory beside the target: the rename into place is atomic (same file system).
	local tmp
	tmp=$(mktemp -d "$bin_dir/.build-${name}.XXXXXX")
	# shellcheck disable=SC2064 # expand $tmp now
	trap "rm -rf '$tmp'" EXIT
	echo "building $name $version ..."
	local start=$SECONDS
	local verb=(build)
	if [ "$kind" = test ]; then
		verb=(test -c)
	fi
	(
		cd "$module_dir"
		CGO_ENABLED=0 GOWORK=off "$GO" "${verb[@]}" -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$pkg"
	)
	mv -f "$tmp/$name" "$out"
	rm -rf "$tmp"
	trap - EXIT
	echo "built $name $version in $((SECONDS - start))s"
}

total_start=$SECONDS
for c in "${components[@]}"; do
	case "$c" in
	etcd) build_one etcd "$here/etcd" go.etcd.io/etcd/server/v3 "$etcd_ldflags" "$ETCD_VERSION" ;;
	e2e.test) build_one e2e.test "$here/k8s" ./e2e "$kube_ldflags" "$KUBE_VERSION" test ;;
	agnhost) build_one agnhost "$here/k8s" k8s.io/kubernetes/test/images/agnhost "$kube_ldflags" "$KUBE_VERSION" ;;
	coredns) build_one coredns "$here/coredns" github.com/coredns/coredns "$coredns_ldflags" "$COREDNS_VERSION" ;;
	*) build_one "$c" "$here/k8s" "k8s.io/kubernetes/cmd/$c" "$kube_ldflags" "$KUBE_VERSION" ;;
	esac
done
echo "kube binaries ready in $bin_dir ($((SECONDS - total_start))s)"
