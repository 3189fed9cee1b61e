// Package images builds the e2e suite's three container images as OCI layout archives for
// `ctr -n k8s.io images import`, without a registry or a daemon: the sandbox image (conformance/pause), the test
// image (conformance/agent) and Moat's own, exactly as `make image` makes it. Their names need no registry: the
// kubelet runs them with imagePullPolicy Never (or IfNotPresent) once they are imported. BuildConformance
// (conformance.go) builds the images of Kubernetes' own [sig-network] conformance tests, under their upstream names.
package images

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/moatimage"
)

const (
	// PauseRef is the sandbox image: the kubelet's --pod-infra-container-image and containerd's sandbox_image.
	// Its registry domain, moat.test, keeps containerd from prefixing docker.io, and .test is never a real one.
	PauseRef = "moat.test/pause:1"
	// AgentRef is the test pods' image: entrypoint /agent serve (conformance/agent).
	AgentRef = "moat.test/agent:1"
	// MoatRef is Moat's image, the one install/kubernetes/moat.yaml runs.
	MoatRef = moatimage.DefaultRef

	module = "github.com/moatfw/moat"
)

// Image is one built image.
type Image struct {
	Ref     string // as a pod spec or the kubelet names it: moat.test/agent:1, moatfw/moat:v0.1.0
	Name    string // the full name containerd stores it under: moat.test/agent:1, docker.io/moatfw/moat:v0.1.0
	Archive string // the OCI image layout archive to import
	Digest  string // the manifest's digest, as `ctr images ls` shows it
}

// Images are the suite's three images.
type Images struct {
	Pause, Agent, Moat Image
}

// All are the three images, the sandbox image first.
func (i Images) All() []Image { return []Image{i.Pause, i.Agent, i.Moat} }

// Build compiles conformance/agent and conformance/pause (static, for this machine's architecture) into
// outDir/bin and writes outDir/pause.tar, outDir/agent.tar and outDir/moat-image.tar, the last from the five
// binaries in moatBinDir (`make build`'s bin). It reports its progress to log. It must run inside the moat
// module's tree (as go test does), where go build finds the two programs.
func Build(ctx context.Context, outDir, moatBinDir string, log io.Writer) (Images, error) {
	root, err := moduleRoot()
	if err != nil {
		return Images{}, err
	}
	binDir := filepath.Join(outDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return Images{}, fmt.Errorf("image folder: %w", err)
	}
	var imgs Images
	for _, p := range []struct {
		name string
		img  *Image
		spec ociimage.Spec
	}{
		{"pause", &imgs.Pause, ociimage.Spec{
			Ref:        PauseRef,
			Entrypoint: []string{"/pause"},
			Labels:     map[string]string{"org.opencontainers.image.title": "moat conformance pause"},
		}},
		{"agent", &imgs.Agent, ociimage.Spec{
			Ref:        AgentRef,
			Entrypoint: []string{"/agent", "serve"},
			Labels:     map[string]string{"org.opencontainers.image.title": "moat conformance agent"},
		}},
	} {
		bin := filepath.Join(binDir, p.name)
		if err := goBuild(ctx, root, module+"/conformance/"+p.name, bin, log); err != nil {
			return Images{}, err
		}
		p.spec.Arch = runtime.GOARCH
		p.spec.Files = []ociimage.File{{Path: "/" + p.name, Source: bin, Binary: true}}
		res, err := ociimage.Build(ctx, p.spec, filepath.Join(outDir, p.name+".tar"), log)
		if err != nil {
			return Images{}, fmt.Errorf("image %s: %w", p.spec.Ref, err)
		}
		*p.img = image(p.spec.Ref, res)
	}
	res, err := moatimage.Build(ctx, moatimage.Options{BinDir: moatBinDir, Ref: MoatRef, Arch: runtime.GOARCH},
		filepath.Join(outDir, "moat-image.tar"), log)
	if err != nil {
		return Images{}, fmt.Errorf("image %s: %w", MoatRef, err)
	}
	imgs.Moat = image(MoatRef, res)
	return imgs, nil
}

func image(ref string, res ociimage.Result) Image {
	return Image{Ref: ref, Name: res.Name, Archive: res.Archive, Digest: res.Digest.String()}
}

// goBuild compiles pkg into a static, stripped binary at out, for this machine's architecture.
func goBuild(ctx context.Context, root, pkg, out string, log io.Writer) error {
	return goBuildArch(ctx, root, pkg, out, runtime.GOARCH, log)
}

// moduleRoot is the folder of the moat module's go.mod, found from the working folder up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working folder: %w", err)
	}
	for {
		mod, err := moduleName(filepath.Join(dir, "go.mod"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if mod == module {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working folder: build the images inside its tree", module)
		}
		dir = parent
	}
}

// moduleName is the module line of a go.mod.
func moduleName(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", gomod, err)
	}
	return "", nil
}
