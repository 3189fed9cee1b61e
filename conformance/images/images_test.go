package images

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/moatimage"
	"github.com/moatfw/moat/internal/ociimage/ocitest"
)

// fakeMoatBin is a bin folder of small static ELF files for this machine in place of `make build`'s five
// binaries: install/image's tests pack the real ones.
func fakeMoatBin(t *testing.T) string {
	t.Helper()
	machine, ok := ocitest.Machine(runtime.GOARCH)
	if !ok {
		t.Skipf("fake binaries for %s are not made here", runtime.GOARCH)
	}
	dir := t.TempDir()
	for _, n := range moatimage.Binaries {
		if err := os.WriteFile(filepath.Join(dir, n), ocitest.FakeELF(machine, false, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles two programs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	moatBin := fakeMoatBin(t)
	out := t.TempDir()
	var log bytes.Buffer
	imgs, err := Build(ctx, out, moatBin, &log)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	want := []struct {
		ref, name, archive string
		entrypoint         []string
		file               string
	}{
		{"moat.test/pause:1", "moat.test/pause:1", "pause.tar", []string{"/pause"}, "pause"},
		{"moat.test/agent:1", "moat.test/agent:1", "agent.tar", []string{"/agent", "serve"}, "agent"},
		{"moatfw/moat:v0.1.0", "docker.io/moatfw/moat:v0.1.0", "moat-image.tar", []string{"/usr/local/bin/moat-enforcer"},
			"usr/local/bin/moat-enforcer"},
	}
	rootfs := map[string]string{}
	for i, img := range imgs.All() {
		w := want[i]
		if img.Ref != w.ref || img.Name != w.name || img.Archive != filepath.Join(out, w.archive) {
			t.Errorf("image %d: %+v, want ref %s name %s archive %s", i, img, w.ref, w.name, w.archive)
		}
		entry, oimg, _ := ocitest.ReadArchive(t, img.Archive)
		if got := entry.Annotations[ociimage.AnnotationImageName]; got != w.name {
			t.Errorf("%s: index names it %q", w.ref, got)
		}
		if entry.Digest.String() != img.Digest {
			t.Errorf("%s: index digest %s, Build says %s", w.ref, entry.Digest, img.Digest)
		}
		cfg, err := oimg.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.Config.Entrypoint, w.entrypoint) || cfg.Architecture != runtime.GOARCH || cfg.OS != "linux" {
			t.Errorf("%s: entrypoint %q, %s/%s", w.ref, cfg.Config.Entrypoint, cfg.OS, cfg.Architecture)
		}
		rootfs[w.file] = ocitest.ExtractLayer(t, oimg)
		f, err := os.Open(filepath.Join(rootfs[w.file], w.file))
		if err != nil {
			t.Fatalf("%s: %v", w.ref, err)
		}
		if err := ociimage.CheckELF(f, runtime.GOARCH); err != nil {
			t.Errorf("%s: /%s: %v", w.ref, w.file, err)
		}
		f.Close()
		ocitest.CheckWithContainerd(t, ociimage.Result{Name: img.Name, Archive: img.Archive, Digest: entry.Digest})
	}
	for _, s := range []string{"go build " + module + "/conformance/agent", "packed /pause", "packed /agent",
		"packed /usr/local/bin/moat-enforcer"} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("progress lacks %q", s)
		}
	}

	// The programs from the images run: agent probe reaches agent serve on loopback, pause stops on SIGTERM.
	agent := filepath.Join(rootfs["agent"], "agent")
	serve := start(t, agent, "serve", "--tcp", "0", "--name", "from-image")
	line, err := serve.stderr.ReadString('\n')
	m := regexp.MustCompile(`serving tcp \S*:(\d+)`).FindStringSubmatch(line)
	if err != nil || m == nil {
		t.Fatalf("agent serve said %q (%v)", line, err)
	}
	probe, err := exec.Command(agent, "probe", "--timeout", "10s", "127.0.0.1:"+m[1]).Output()
	var r struct {
		Reached bool   `json:"reached"`
		Reply   string `json:"reply"`
	}
	if jerr := json.Unmarshal(probe, &r); err != nil || jerr != nil || !r.Reached || !strings.HasPrefix(r.Reply, "from-image probe ") {
		t.Errorf("agent probe from the image: %q (%v, %v)", probe, err, jerr)
	}
	serve.stop(t)

	pause := start(t, filepath.Join(rootfs["pause"], "pause"))
	if line, err := pause.stderr.ReadString('\n'); err != nil || !strings.Contains(line, "not PID 1") {
		t.Fatalf("pause said %q (%v)", line, err)
	}
	pause.stop(t)

	// The same sources give the same images.
	again, err := Build(ctx, t.TempDir(), moatBin, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range again.All() {
		if img.Digest != imgs.All()[i].Digest {
			t.Errorf("%s: built again, digest %s, first %s", img.Ref, img.Digest, imgs.All()[i].Digest)
		}
	}
}

type process struct {
	cmd    *exec.Cmd
	stderr *bufio.Reader
}

// start runs a program with its stderr to read; the test kills it at the end if it still runs.
func start(t *testing.T, name string, args ...string) process {
	t.Helper()
	cmd := exec.Command(name, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return process{cmd: cmd, stderr: bufio.NewReader(stderr)}
}

// stop sends SIGTERM and wants exit status 0.
func (p process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, p.stderr)
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("%s after SIGTERM: %v, want exit status 0", p.cmd.Path, err)
	}
}

func TestBuildErrors(t *testing.T) {
	ctx := context.Background()
	// Outside the module, go build could not find the programs.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	if _, err := Build(ctx, t.TempDir(), fakeMoatBin(t), io.Discard); err == nil || !strings.Contains(err.Error(), "no go.mod of "+module) {
		t.Errorf("build outside the module: %v", err)
	}
	t.Chdir(wd)
	if testing.Short() {
		return
	}
	// Without Moat's binaries, the error says which one is missing.
	empty := t.TempDir()
	if _, err := Build(ctx, t.TempDir(), empty, io.Discard); err == nil || !strings.Contains(err.Error(), "image moatfw/moat:v0.1.0: binary moat") {
		t.Errorf("build without Moat's binaries: %v", err)
	}
}
