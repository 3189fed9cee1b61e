package images

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/moatfw/moat/internal/ociimage"
)

// The images Kubernetes' [sig-network] conformance tests run, under the names the e2e framework of Kubernetes
// v1.37.2 gives them (k8s.io/kubernetes/test/utils/image/manifest.go): imported into a node's containerd under
// these names, the tests' pods start without a pull. They are built here from static binaries, not copied:
//
//   - agnhost: the agnhost program of the same Kubernetes version with the TLS key pair of its porter command
//     (/localhost.crt and .key, for the Proxy tests), CoreDNS at /coredns (a DNS test runs it from this image),
//     busybox's tools, bash as /bin/sh, and conformance/testtools for the curl, dig, getent and nc
//     that upstream's Alpine image has. The shell is bash, not busybox's: Debian builds busybox's shell to run
//     its own applets before any program in PATH, so its sh would run busybox's nc (which lacks -u) in place
//     of testtools'.
//   - busybox: Debian's static busybox with its applet links.
//   - glibc-dns-testing: busybox, bash and testtools. Upstream's is a glibc (Debian) image, there to resolve names
//     through glibc as well as musl; this one resolves through testtools' Go resolver like the agnhost image, so
//     the tests that use both check one resolver twice.
//   - nginx: busybox httpd serving a page on port 80, for the tests that only need a web server pod.
//   - pause: conformance/pause, for the tests that run pause containers.
//
// CoreDNSRef is CoreDNS for the cluster's DNS Deployment (conformance/kube/coredns.yaml).
const (
	AgnhostRef         = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	BusyBoxRef         = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	GlibcDNSTestingRef = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	NginxRef           = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	UpstreamPauseRef   = "registry.k8s.io/pause:3.10.2"
	CoreDNSRef         = "moat.test/coredns:v1.15.0"

	// DefaultBusybox is where Debian's busybox-static package puts its static busybox, DefaultBash where
	// bash-static puts its static bash.
	DefaultBusybox = "/bin/busybox"
	DefaultBash    = "/bin/bash-static"
)

// ConformanceOptions are the inputs of BuildConformance.
type ConformanceOptions struct {
	// KubeBinDir holds agnhost and coredns as conformance/kube/build.sh builds them (`build.sh --print-dir`).
	KubeBinDir string
	// Busybox is a static busybox for the images' architecture; empty means DefaultBusybox.
	Busybox string
	// Bash is a static bash for the images' architecture; empty means DefaultBash.
	Bash string
	// Applets are busybox's applets as `busybox --list-full` prints them (usr/bin/wget); nil means running
	// Busybox to ask, which needs it to be of this machine's architecture.
	Applets []string
	// Arch is the GOARCH of the binaries and the images; empty means this machine's.
	Arch string
	// WithoutCoreDNS leaves CoreDNS out: no coredns.tar, and no /coredns in the agnhost image (only the DNS
	// tests use either). The e2e suite's subset of the pass runs no DNS test and so needs no CoreDNS build.
	WithoutCoreDNS bool
	// PorterDir holds localhost.crt and localhost.key of agnhost's porter command; empty means
	// test/images/agnhost/porter of the k8s.io/kubernetes module that conformance/kube/k8s builds agnhost from.
	PorterDir string
}

// BuildConformance writes the conformance images into outDir (agnhost.tar, busybox.tar, glibc-dns-testing.tar,
// nginx.tar, pause-upstream.tar, coredns.tar), compiling conformance/testtools and conformance/pause into
// outDir/bin (coredns.tar only without WithoutCoreDNS). It must run inside the moat module's tree, like Build. The images
// come back in that order.
func BuildConformance(ctx context.Context, outDir string, opts ConformanceOptions, log io.Writer) ([]Image, error) {
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	if opts.Busybox == "" {
		opts.Busybox = DefaultBusybox
	}
	if opts.Bash == "" {
		opts.Bash = DefaultBash
	}
	agnhost := filepath.Join(opts.KubeBinDir, "agnhost")
	coredns := filepath.Join(opts.KubeBinDir, "coredns")
	inputs := []string{agnhost, coredns, opts.Busybox, opts.Bash}
	if opts.WithoutCoreDNS {
		inputs = slices.DeleteFunc(inputs, func(f string) bool { return f == coredns })
	}
	for _, f := range inputs {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("conformance images: %w (agnhost and coredns: make conformance-bins; busybox "+
				"and bash: Debian's busybox-static and bash-static)", err)
		}
	}
	applets := opts.Applets
	if applets == nil {
		var err error
		if applets, err = busyboxApplets(ctx, opts.Busybox); err != nil {
			return nil, err
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	if opts.PorterDir == "" {
		if opts.PorterDir, err = porterDir(ctx, root); err != nil {
			return nil, err
		}
	}
	binDir := filepath.Join(outDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, fmt.Errorf("image folder: %w", err)
	}
	testtools, pause := filepath.Join(binDir, "testtools"), filepath.Join(binDir, "pause")
	for pkg, out := range map[string]string{"testtools": testtools, "pause": pause} {
		if err := goBuildArch(ctx, root, module+"/conformance/"+pkg, out, opts.Arch, log); err != nil {
			return nil, err
		}
	}

	bb := busyboxLayer(opts.Busybox, applets, append([]string{"sh"}, testtoolsNames...))
	tt := testtoolsLayer(testtools, opts.Bash)
	label := func(title string) map[string]string {
		return map[string]string{"org.opencontainers.image.title": title,
			"org.opencontainers.image.description": "built by Moat's conformance pass (conformance/images)"}
	}
	specs := []struct {
		file string
		spec ociimage.Spec
	}{
		{"agnhost.tar", merge(ociimage.Spec{
			Ref: AgnhostRef,
			Files: []ociimage.File{
				{Path: "/agnhost", Source: agnhost, Binary: true},
				{Path: "/coredns", Source: coredns, Binary: true},
				{Path: "/localhost.crt", Source: filepath.Join(opts.PorterDir, "localhost.crt")},
				{Path: "/localhost.key", Source: filepath.Join(opts.PorterDir, "localhost.key")},
			},
			Symlinks:   []ociimage.Symlink{{Path: "/agnhost-2", Target: "agnhost"}},
			Dirs:       []ociimage.Dir{{Path: "/uploads"}},
			Entrypoint: []string{"/agnhost"},
			Cmd:        []string{"pause"},
			Labels:     label("agnhost (Kubernetes v1.37.2 test image) with busybox and testtools"),
		}, bb, tt, etcFiles(true))},
		{"busybox.tar", merge(ociimage.Spec{
			Ref:    BusyBoxRef,
			Cmd:    []string{"sh"},
			Labels: label("busybox"),
		}, busyboxLayer(opts.Busybox, applets, nil), etcFiles(false))},
		{"glibc-dns-testing.tar", merge(ociimage.Spec{
			Ref:    GlibcDNSTestingRef,
			Cmd:    []string{"sh"},
			Labels: label("DNS testing image: busybox and testtools (Go resolver, not glibc)"),
		}, bb, tt, etcFiles(false))},
		{"nginx.tar", merge(ociimage.Spec{
			Ref: NginxRef,
			Files: []ociimage.File{{Path: "/usr/share/nginx/html/index.html",
				Data: []byte("<html><body>moat conformance web server</body></html>\n")}},
			Entrypoint: []string{"/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"},
			Labels:     label("web server on port 80 (busybox httpd) in place of nginx"),
		}, busyboxLayer(opts.Busybox, applets, nil), etcFiles(false))},
		{"pause-upstream.tar", ociimage.Spec{
			Ref:        UpstreamPauseRef,
			Files:      []ociimage.File{{Path: "/pause", Source: pause, Binary: true}},
			Entrypoint: []string{"/pause"},
			Labels:     label("moat conformance pause"),
		}},
		{"coredns.tar", merge(ociimage.Spec{
			Ref:        CoreDNSRef,
			Files:      []ociimage.File{{Path: "/coredns", Source: coredns, Binary: true}},
			Entrypoint: []string{"/coredns"},
			Labels:     label("CoreDNS v1.15.0"),
		}, etcFiles(false))},
	}
	if opts.WithoutCoreDNS {
		agn := &specs[0].spec
		agn.Files = slices.DeleteFunc(agn.Files, func(f ociimage.File) bool { return f.Path == "/coredns" })
		specs = specs[:len(specs)-1] // coredns.tar, the last
	}
	var imgs []Image
	for _, s := range specs {
		s.spec.Arch = opts.Arch
		res, err := ociimage.Build(ctx, s.spec, filepath.Join(outDir, s.file), log)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.spec.Ref, err)
		}
		imgs = append(imgs, image(s.spec.Ref, res))
	}
	return imgs, nil
}

// testtoolsNames are the programs conformance/testtools stands in for; busybox's applets of the same names
// (its nc lacks -u) are left out where testtools is in the image.
var testtoolsNames = []string{"curl", "dig", "getent", "nc"}

// testtoolsLayer is testtools with its links, and bash as /bin/sh.
func testtoolsLayer(bin, bash string) ociimage.Spec {
	s := ociimage.Spec{
		Files: []ociimage.File{
			{Path: "/usr/bin/testtools", Source: bin, Binary: true},
			{Path: "/bin/bash", Source: bash, Binary: true},
		},
		Symlinks: []ociimage.Symlink{{Path: "/bin/sh", Target: "bash"}},
	}
	for _, n := range testtoolsNames {
		s.Symlinks = append(s.Symlinks, ociimage.Symlink{Path: "/usr/bin/" + n, Target: "testtools"})
	}
	return s
}

// busyboxLayer is busybox at /bin/busybox with a link per applet, except those named in skip; and /tmp.
func busyboxLayer(busybox string, applets, skip []string) ociimage.Spec {
	s := ociimage.Spec{
		Files: []ociimage.File{{Path: "/bin/busybox", Source: busybox, Binary: true}},
		Dirs:  []ociimage.Dir{{Path: "/tmp", Mode: 0o1777}},
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}
	seen := map[string]bool{"/bin/busybox": true}
	for _, a := range applets {
		p := "/" + strings.TrimPrefix(path.Clean("/"+a), "/")
		if seen[p] || p == "/" || path.Dir(p) == "/" || slices.Contains(skip, path.Base(p)) {
			continue // linuxrc and the like live at the root: no pod needs them
		}
		seen[p] = true
		s.Symlinks = append(s.Symlinks, ociimage.Symlink{Path: p, Target: "/bin/busybox"})
	}
	return s
}

// etcFiles are /etc/passwd and /etc/group: root, nobody and, in agnhost's, the user and group its upstream
// image defines for the tests that run as them.
func etcFiles(agnhostUsers bool) ociimage.Spec {
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group := "root:x:0:\nnogroup:x:65534:\n"
	if agnhostUsers {
		passwd += "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
		group += "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"
	}
	return ociimage.Spec{Files: []ociimage.File{
		{Path: "/etc/passwd", Data: []byte(passwd)},
		{Path: "/etc/group", Data: []byte(group)},
	}}
}

// merge adds the files, links, folders and environment of parts to base.
func merge(base ociimage.Spec, parts ...ociimage.Spec) ociimage.Spec {
	for _, p := range parts {
		base.Files = append(base.Files, p.Files...)
		base.Symlinks = append(base.Symlinks, p.Symlinks...)
		for _, d := range p.Dirs {
			if !slices.ContainsFunc(base.Dirs, func(b ociimage.Dir) bool { return b.Path == d.Path }) {
				base.Dirs = append(base.Dirs, d)
			}
		}
		for _, e := range p.Env {
			if !slices.Contains(base.Env, e) {
				base.Env = append(base.Env, e)
			}
		}
	}
	return base
}

// porterDir is agnhost's porter folder in the module cache: the k8s.io/kubernetes module of
// conformance/kube/k8s, which building agnhost downloaded.
func porterDir(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
	cmd.Dir = filepath.Join(root, "conformance", "kube", "k8s")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	out, err := cmd.Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("find k8s.io/kubernetes in the module cache (make conformance-bins): %v", err)
	}
	return filepath.Join(dir, "test", "images", "agnhost", "porter"), nil
}

// busyboxApplets asks busybox for its applets' paths.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a := strings.TrimSpace(sc.Text()); a != "" {
			applets = append(applets, a)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list-full: no applets", busybox)
	}
	return applets, nil
}

// goBuildArch compiles pkg into a static, stripped binary at out, for arch.
func goBuildArch(ctx context.Context, root, pkg, out, arch string, log io.Writer) error {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	fmt.Fprintf(log, "images: go build %s\n", pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
