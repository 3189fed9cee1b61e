package images

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/ocitest"
)

// fakeKubeBin is a folder with small static ELF files for arch in place of agnhost, coredns and busybox.
func fakeKubeBin(t *testing.T, arch string) string {
	t.Helper()
	machine, ok := ocitest.Machine(arch)
	if !ok {
		t.Skipf("fake binaries for %s are not made here", arch)
	}
	dir := t.TempDir()
	for _, n := range []string{"agnhost", "coredns", "busybox", "bash", "localhost.crt", "localhost.key"} {
		if err := os.WriteFile(filepath.Join(dir, n), ocitest.FakeELF(machine, false, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuildConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles two programs per architecture")
	}
	for _, arch := range []string{runtime.GOARCH, "arm64"} {
		t.Run(arch, func(t *testing.T) { testBuildConformance(t, arch) })
		if runtime.GOARCH == "arm64" {
			break
		}
	}
}

func testBuildConformance(t *testing.T, arch string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := fakeKubeBin(t, arch)
	applets := []string{"bin/sh", "bin/ls", "bin/nc", "usr/bin/wget", "usr/bin/[", "linuxrc", "bin/busybox"}
	imgs, err := BuildConformance(ctx, t.TempDir(), ConformanceOptions{
		KubeBinDir: bin, Busybox: filepath.Join(bin, "busybox"), Bash: filepath.Join(bin, "bash"), Applets: applets,
		Arch: arch, PorterDir: bin,
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}

	type want struct {
		ref, name, archive string
		entrypoint         []string
		links              map[string]string // path in the layer -> link target; "" means absent
		files              []string          // regular files in the layer
	}
	busyboxLinks := map[string]string{"bin/sh": "/bin/busybox", "usr/bin/wget": "/bin/busybox",
		"usr/bin/[": "/bin/busybox", "linuxrc": ""}
	withTools := func(extra map[string]string) map[string]string {
		m := map[string]string{"bin/sh": "bash", "bin/ls": "/bin/busybox", "bin/nc": "",
			"usr/bin/curl": "testtools", "usr/bin/dig": "testtools", "usr/bin/getent": "testtools",
			"usr/bin/nc": "testtools"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	wants := []want{
		{AgnhostRef, "registry.k8s.io/e2e-test-images/agnhost:2.66.1", "agnhost.tar", []string{"/agnhost"},
			withTools(map[string]string{"agnhost-2": "agnhost"}),
			[]string{"agnhost", "coredns", "localhost.crt", "localhost.key", "bin/busybox", "bin/bash",
				"usr/bin/testtools", "etc/passwd"}},
		{BusyBoxRef, "registry.k8s.io/e2e-test-images/busybox:1.37.0-2", "busybox.tar", nil,
			map[string]string{"bin/sh": "/bin/busybox", "bin/nc": "/bin/busybox", "usr/bin/curl": ""},
			[]string{"bin/busybox"}},
		{GlibcDNSTestingRef, "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1", "glibc-dns-testing.tar",
			nil, withTools(nil), []string{"bin/busybox", "bin/bash", "usr/bin/testtools"}},
		{NginxRef, "registry.k8s.io/e2e-test-images/nginx:1.27.0-2", "nginx.tar",
			[]string{"/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}, busyboxLinks,
			[]string{"usr/share/nginx/html/index.html"}},
		{UpstreamPauseRef, "registry.k8s.io/pause:3.10.2", "pause-upstream.tar", []string{"/pause"}, nil,
			[]string{"pause"}},
		{CoreDNSRef, "moat.test/coredns:v1.15.0", "coredns.tar", []string{"/coredns"}, nil, []string{"coredns"}},
	}
	if len(imgs) != len(wants) {
		t.Fatalf("%d images, want %d", len(imgs), len(wants))
	}
	for i, w := range wants {
		img := imgs[i]
		if img.Ref != w.ref || img.Name != w.name || filepath.Base(img.Archive) != w.archive {
			t.Errorf("image %d: %+v, want ref %s name %s archive %s", i, img, w.ref, w.name, w.archive)
		}
		entry, oimg, _ := ocitest.ReadArchive(t, img.Archive)
		if got := entry.Annotations[ociimage.AnnotationImageName]; got != w.name {
			t.Errorf("%s: the index names it %q, want %q", w.ref, got, w.name)
		}
		if entry.Digest.String() != img.Digest {
			t.Errorf("%s: index digest %s, BuildConformance says %s", w.ref, entry.Digest, img.Digest)
		}
		if entry.Platform != nil && (entry.Platform.Architecture != arch || entry.Platform.OS != "linux") {
			t.Errorf("%s: index platform %s/%s, want linux/%s", w.ref, entry.Platform.OS, entry.Platform.Architecture, arch)
		}
		cfg, err := oimg.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Architecture != arch || cfg.OS != "linux" {
			t.Errorf("%s: config says %s/%s, want linux/%s", w.ref, cfg.OS, cfg.Architecture, arch)
		}
		if strings.Join(cfg.Config.Entrypoint, " ") != strings.Join(w.entrypoint, " ") {
			t.Errorf("%s: entrypoint %q, want %q", w.ref, cfg.Config.Entrypoint, w.entrypoint)
		}
		hdrs, contents := ocitest.LayerFiles(t, oimg)
		byName := map[string]*tar.Header{}
		for _, h := range hdrs {
			byName[strings.TrimSuffix(h.Name, "/")] = h
		}
		for p, target := range w.links {
			h, ok := byName[p]
			switch {
			case target == "" && ok:
				t.Errorf("%s: /%s is in the image, want it absent", w.ref, p)
			case target != "" && (!ok || h.Typeflag != tar.TypeSymlink || h.Linkname != target):
				t.Errorf("%s: /%s is %+v, want a link to %s", w.ref, p, h, target)
			}
		}
		for _, f := range w.files {
			if _, ok := contents[f]; !ok {
				t.Errorf("%s: no file /%s", w.ref, f)
			}
		}
		if strings.Contains(w.ref, "agnhost") {
			if !strings.Contains(string(contents["etc/passwd"]), "user-defined-in-image:x:1000:") {
				t.Errorf("%s: /etc/passwd lacks the upstream image's user: %q", w.ref, contents["etc/passwd"])
			}
			if h := byName["uploads"]; h == nil || h.Typeflag != tar.TypeDir {
				t.Errorf("%s: no /uploads folder", w.ref)
			}
		}
		if arch == runtime.GOARCH {
			ocitest.CheckWithContainerd(t, ociimage.Result{Name: img.Name, Archive: img.Archive, Digest: entry.Digest})
		}
	}
}

func TestBuildConformanceMissingBinaries(t *testing.T) {
	_, err := BuildConformance(context.Background(), t.TempDir(), ConformanceOptions{KubeBinDir: t.TempDir()},
		io.Discard)
	if err == nil || !strings.Contains(err.Error(), "make conformance-bins") {
		t.Errorf("without agnhost: %v, want an error naming make conformance-bins", err)
	}
}

// TestBuildConformanceWithoutCoreDNS builds the images with no coredns binary at hand: every image but
// coredns.tar, and agnhost's without /coredns.
func TestBuildConformanceWithoutCoreDNS(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles two programs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := fakeKubeBin(t, runtime.GOARCH)
	if err := os.Remove(filepath.Join(bin, "coredns")); err != nil {
		t.Fatal(err)
	}
	imgs, err := BuildConformance(ctx, t.TempDir(), ConformanceOptions{
		KubeBinDir: bin, Busybox: filepath.Join(bin, "busybox"), Bash: filepath.Join(bin, "bash"),
		Applets: []string{"bin/sh", "bin/ls"}, PorterDir: bin, WithoutCoreDNS: true,
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, img := range imgs {
		refs = append(refs, img.Ref)
	}
	if want := []string{AgnhostRef, BusyBoxRef, GlibcDNSTestingRef, NginxRef, UpstreamPauseRef}; strings.Join(refs, " ") !=
		strings.Join(want, " ") {
		t.Errorf("images %q, want %q", refs, want)
	}
	_, oimg, _ := ocitest.ReadArchive(t, imgs[0].Archive)
	_, contents := ocitest.LayerFiles(t, oimg)
	if _, ok := contents["coredns"]; ok {
		t.Error("the agnhost image has /coredns")
	}
	if _, ok := contents["agnhost"]; !ok {
		t.Error("the agnhost image lacks /agnhost")
	}
}
