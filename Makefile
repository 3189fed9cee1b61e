# Moat's build. `make test` runs every test that passes on a fresh machine as root, privileged ones included.
SHELL := /bin/bash
GO ?= go
GOBIN ?= $(shell $(GO) env GOPATH)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/moatfw/moat/internal/version.Version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
CLANG ?= clang
CLANG_MAJOR := 14
FUZZTIME ?= 60s
TEST_FLAGS ?=

BINARIES := moat moat-ipam moat-enforcer moatctl moat-install
pkg_moat := ./plugin
pkg_moat-ipam := ./ipam-shim
pkg_moat-enforcer := ./enforcer
pkg_moatctl := ./moatctl
pkg_moat-install := ./install

.PHONY: all build generate test lint fmt fuzz bench scale clean check-clang bpffs kube-bins e2e $(addprefix bin/,$(BINARIES)) demo image \
	conformance-bins conformance-list conformance e2e-bins conformance-debs

all: build

build: $(addprefix bin/,$(BINARIES))

$(addprefix bin/,$(BINARIES)):
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ $(pkg_$(notdir $@))
	@if [ "$(notdir $@)" = moatctl ]; then ln -sf moatctl bin/kubectl-moat; fi

# The container image, built without a daemon into an OCI image layout archive (install/image, docs/image.md). The
# manifests run IMAGE with imagePullPolicy IfNotPresent: `ctr -n k8s.io images import bin/moat-image.tar` puts it
# on a node. The builder runs on this machine (GOOS= GOARCH=) and labels the image with the binaries' GOARCH.
IMAGE ?= moatfw/moat:v0.1.0
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
image: build
	GOOS= GOARCH= $(GO) run ./install/image -bin bin -out bin/moat-image.tar -tag '$(IMAGE)' \
		-arch "$$($(GO) env GOARCH)" -version '$(VERSION)' -source-date-epoch '$(SOURCE_DATE_EPOCH)'

# The datapath objects, the API deepcopy and the CRDs are committed; regenerating needs clang $(CLANG_MAJOR) and
# never reads the running kernel.
generate: check-clang
	$(GO) generate ./bpf/ ./internal/api/v1alpha1/ ./install/kubernetes/

check-clang:
	@v=$$($(CLANG) --version | sed -n 's/.*clang version \([0-9]*\)\..*/\1/p' | head -1); \
	if [ "$$v" != "$(CLANG_MAJOR)" ]; then \
		echo "make generate needs clang $(CLANG_MAJOR) (found '$$v'): the committed objects were built with it" >&2; exit 1; fi

# Privileged tests need a bpf filesystem; each test mounts its own, but tools and the enforcer use /sys/fs/bpf.
bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# Every package runs under the race detector (it needs cgo: gcc). On 2 cores at the same load, the whole run took
# 5m23s with -race against 4m00s without (bpf 37 s -> 53 s, install/image 9 s -> 51 s, sidebyside 56 s -> 76 s,
# plugin 69 s -> 70 s), replacing the plain run rather than adding to it. `make e2e` runs without it (it deploys
# the release build).
test: bpffs kube-bins e2e-bins
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(TEST_FLAGS) ./...
	$(MAKE) e2e

# The end-to-end suite on a real node (kubelet, containerd, kube-proxy; conformance/node), Moat deployed from
# install/kubernetes/moat.yaml, and a subset of Kubernetes' networking conformance tests on it
# (TestUpstreamConformance). Installs containerd and runc from Debian when they are missing.
e2e: bpffs kube-bins e2e-bins
	conformance/e2e/prereqs.sh
	MOAT_E2E=1 $(GO) test -count=1 -timeout 30m $(TEST_FLAGS) ./conformance/e2e/

# What the e2e suite needs beyond kube-bins: Kubernetes' e2e test binary and agnhost for its conformance subset
# (the first time about 9 minutes on 2 cores after kube-bins, then cached), CoreDNS as the cluster DNS of its DNS
# tests (about 10 minutes more the first time), and Debian's static busybox and bash for the test images.
E2E_COMPONENTS := e2e.test agnhost coredns
e2e-bins: conformance-debs
	GO='$(GO)' conformance/kube/build.sh $(E2E_COMPONENTS)

conformance-debs:
	@need=(); for pkg in busybox-static bash-static; do dpkg -s $$pkg >/dev/null 2>&1 || need+=($$pkg); done; \
	if [ $${#need[@]} -gt 0 ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $${need[@]} >/dev/null; fi

# A real etcd, kube-apiserver, kube-controller-manager and kubectl for the tests, built from the Go module proxy at
# pinned versions and cached under /var/cache/moat/kube (MOAT_KUBE_CACHE); KUBE_COMPONENTS adds others.
KUBE_COMPONENTS ?= etcd kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy
kube-bins:
	GO='$(GO)' conformance/kube/build.sh $(KUBE_COMPONENTS)

# Kubernetes' own networking conformance tests (issue 17, conformance/upstream): its e2e test binary cut down to
# the [sig-network] tests, agnhost and CoreDNS, built like kube-bins into the same cache (on 2 cores shared with
# other builds: e2e.test 8m39s after kube-bins, then agnhost 28s; CoreDNS 9m54s cold), and Debian's static
# busybox and bash for the test images (conformance/images).
# `make test` builds them all (e2e-bins).
CONFORMANCE_COMPONENTS := kubectl e2e.test agnhost coredns
conformance-bins: conformance-debs
	GO='$(GO)' conformance/kube/build.sh $(CONFORMANCE_COMPONENTS)

# The tests the conformance pass selects, by a dry run of the e2e binary (no cluster).
conformance-list: conformance-bins
	$(GO) run ./conformance/upstream/list

# The pass itself (conformance/upstream/run; docs/conformance.md): the e2e suite's two-node cluster with CoreDNS and
# the tests' images, the [sig-network] conformance tests run three times on it (without Moat, Moat's default
# configuration, a restrictive policy), the results written to docs/conformance.md; logs and reports are kept in
# /var/tmp/moat-conformance. Like `make e2e` it needs the machine to itself. Not part of `make test`, which runs a
# subset in the e2e suite (TestUpstreamConformance). CONFORMANCE_FLAGS: e.g. -passes none,default -shards 2.
CONFORMANCE_FLAGS ?=
conformance: bpffs kube-bins conformance-bins
	conformance/e2e/prereqs.sh
	$(GO) run ./conformance/upstream/run -out docs/conformance.md -source '$(VERSION)' $(CONFORMANCE_FLAGS)

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel\.go$$')); \
	if [ -n "$$bad" ]; then echo "gofmt would change: $$bad" >&2; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '_bpfel\.go$$')

# Runs each fuzz target for FUZZTIME (their seed corpora already run in `make test`).
fuzz: bpffs
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; done
	@seed=$$(date +%s%N); echo "datapath differential, seed $$seed"; \
		$(GO) test -count=1 -run '^TestDatapathDifferential$$' ./bpf -args -bpf.seed=$$seed

# Moat on a simulated node with real pods in network namespaces (no cluster), as root.
demo:
	$(GO) run ./conformance/demo

# Regenerates docs/benchmarks.md (about 12 minutes; QUICK=1 a smaller run, under 3). Installs iperf3, sockperf,
# iptables and nftables from Debian when they are missing.
QUICK ?=
bench: bpffs kube-bins
	@need=(); for pkg in iperf3 sockperf iptables nftables util-linux; do dpkg -s $$pkg >/dev/null 2>&1 || need+=($$pkg); done; \
	if [ $${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $${need[@]} >/dev/null; fi
	$(GO) run ./internal/benchdoc -out docs/benchmarks.md $(if $(QUICK),-quick)

# The API-server scale benchmark of the enforcer (internal/scale): a real API server with 2,000 namespaces, 1,000
# Nodes, 2,000 Services, 500 FirewallPolicies and SCALE pods (default 5000,20000,50000,150000; a size the free
# memory cannot hold is listed as not run), the moat-enforcer binary against it. Writes docs/benchmarks-scale.md (and
# the side-by-side table with Cilium's published figures in docs/benchmarks.md);
# an hour or more. Not part of `make test` or `make bench`.
SCALE ?=
scale: bpffs kube-bins
	MOAT_SCALE=1 SCALE='$(SCALE)' $(GO) test -count=1 -timeout 6h -v -run '^TestScale$$' ./internal/scale/ \
		-args -scale.out=$(CURDIR)/docs/benchmarks-scale.md
	$(GO) run ./internal/benchdoc -scale

clean:
	rm -rf bin
