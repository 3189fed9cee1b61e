// Package kubetest runs a real Kubernetes control plane for tests: etcd, kube-apiserver and
// kube-controller-manager, as child processes on loopback ports, from binaries that conformance/kube/build.sh
// builds into a cache (`make kube-bins`).
//
// From a test:
//
//	c := kubetest.Start(t)
//	ns, err := c.Client().CoreV1().Namespaces().Create(ctx, ...)
//
// From TestMain, which has no testing.TB, use New and Stop.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/moatfw/moat/internal/testutil/procs"
)

// Version is the Kubernetes version that conformance/kube/build.sh builds (keep the two in step).
const Version = "v1.37.2"

// DefaultControllers are the kube-controller-manager controllers a cluster runs unless WithControllers says
// otherwise: enough for namespaces to be deleted (the namespace controller empties and finalizes them, the
// garbage collector handles owner references) and for each namespace to get its "default" ServiceAccount.
var DefaultControllers = []string{"namespace-controller", "garbage-collector-controller", "serviceaccount-controller"}

// ServiceClusterIPRange is the apiserver's --service-cluster-ip-range.
const ServiceClusterIPRange = "10.96.0.0/16"

const (
	startTimeout = 90 * time.Second
	logTailBytes = 4096
)

// BinDir is where the binaries are looked up: $MOAT_KUBE_BIN if set, else
// ${MOAT_KUBE_CACHE:-/var/cache/moat/kube}/<Version>/bin, the directory conformance/kube/build.sh fills.
func BinDir() string {
	if d := os.Getenv("MOAT_KUBE_BIN"); d != "" {
		return d
	}
	root := os.Getenv("MOAT_KUBE_CACHE")
	if root == "" {
		root = "/var/cache/moat/kube"
	}
	return filepath.Join(root, Version, "bin")
}

// Option changes how New and Start run the cluster.
type Option func(*config)

type config struct {
	controllers []string
	apiserver   map[string]string
	kcm         map[string]string
	host        string
	scheduler   bool
}

// WithHost serves the apiserver on host (an address of this network namespace that is not loopback) and
// advertises it, so the "kubernetes" Service has it as its endpoint: what a node's kubelet and its pods need.
func WithHost(host string) Option {
	return func(c *config) { c.host = host }
}

// WithScheduler runs kube-scheduler too (pods without a nodeName, DaemonSets).
func WithScheduler() Option {
	return func(c *config) { c.scheduler = true }
}

// WithControllers replaces DefaultControllers (kube-controller-manager --controllers; "*" runs them all).
func WithControllers(names ...string) Option {
	return func(c *config) { c.controllers = slices.Clone(names) }
}

// WithAPIServerFlags sets kube-apiserver flags (name without dashes → value), replacing the defaults of the
// same name.
func WithAPIServerFlags(flags map[string]string) Option {
	return func(c *config) {
		for k, v := range flags {
			c.apiserver[k] = v
		}
	}
}

// WithControllerManagerFlags sets kube-controller-manager flags (name without dashes → value), replacing the
// defaults of the same name.
func WithControllerManagerFlags(flags map[string]string) Option {
	return func(c *config) {
		for k, v := range flags {
			c.kcm[k] = v
		}
	}
}

// Cluster is a running control plane.
type Cluster struct {
	// Config reaches the apiserver as an admin (a token in group system:masters). Shared: change a copy
	// (rest.CopyConfig).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same admin credentials (for kubectl and tools).
	Kubeconfig string
	// Dir holds the cluster's state: logs (etcd.log, kube-apiserver.log, kube-controller-manager.log),
	// etcd data, keys, certificates.
	Dir string
	// EtcdURL is etcd's client URL (plain HTTP on loopback), for tests that write the API server's storage
	// directly, such as a bulk fill; the API server keeps its objects under /registry.
	EtcdURL string

	client    kubernetes.Interface
	procs     []*procs.Proc // in start order
	removeDir bool
	stopped   bool
}

// Start runs a cluster for the test and stops it when the test ends, failing the test if it cannot start.
// If the test has failed, the tail of each component's log is logged before the cluster is removed.
func Start(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	c, err := New("", opts...)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			for _, p := range c.procs {
				tb.Logf("kubetest: tail of %s:\n%s", p.LogPath, procs.Tail(p.LogPath, logTailBytes))
			}
		}
		if err := c.Stop(); err != nil {
			tb.Errorf("kubetest: %v", err)
		}
	})
	return c
}

// New starts a cluster whose state lives in dir (created if missing; a new temporary directory if dir is "")
// and returns once the apiserver is ready and the controller manager runs. Stop it with Stop.
func New(dir string, opts ...Option) (*Cluster, error) {
	cfg := &config{controllers: DefaultControllers, apiserver: map[string]string{}, kcm: map[string]string{}}
	for _, o := range opts {
		o(cfg)
	}
	bin := BinDir()
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%s missing from %s: run `make kube-bins` (or conformance/kube/build.sh) "+
				"to build it, or point MOAT_KUBE_BIN at a directory that has it", name, bin)
		}
	}

	c := &Cluster{}
	if dir == "" {
		d, err := os.MkdirTemp("", "kubetest-")
		if err != nil {
			return nil, err
		}
		c.Dir, c.removeDir = d, true
	} else {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			c.removeDir = true
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		c.Dir = abs
	}

	// Ports are picked free and then handed over, so another process can take one meanwhile: start again
	// on fresh ports when a component cannot bind.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = c.start(bin, cfg); err == nil {
			return c, nil
		}
		c.killAll()
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if c.removeDir {
		os.RemoveAll(c.Dir)
	}
	return nil, err
}

func (c *Cluster) start(bin string, cfg *config) error {
	c.procs = nil
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	c.EtcdURL = etcdURL
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcdData := filepath.Join(c.Dir, "etcd")
	if err := os.RemoveAll(etcdData); err != nil { // a previous attempt's member
		return err
	}

	// Credentials: an admin token, and the service-account signing key.
	tokenBytes := make([]byte, 24)
	if _, err := rand.Read(tokenBytes); err != nil {
		return err
	}
	token := hex.EncodeToString(tokenBytes)
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(token+`,kubetest-admin,kubetest-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}
	saKey, saPub := filepath.Join(c.Dir, "sa.key"), filepath.Join(c.Dir, "sa.pub")
	if err := writeKeyPair(saKey, saPub); err != nil {
		return err
	}
	certDir := filepath.Join(c.Dir, "apiserver-certs")

	// etcd
	etcd, err := c.run(bin, "etcd", []string{
		"--name=kubetest",
		"--data-dir=" + etcdData,
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync",
		"--log-level=warn",
	})
	if err != nil {
		return err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(etcd, func() bool {
		body, ok := get(plain, etcdURL+"/health", "")
		return ok && bytes.Contains(body, []byte(`"health":"true"`))
	}); err != nil {
		return err
	}

	// kube-apiserver
	apiFlags := map[string]string{
		"etcd-servers":                     etcdURL,
		"bind-address":                     "127.0.0.1",
		"secure-port":                      strconv.Itoa(apiPort),
		"cert-dir":                         certDir,
		"token-auth-file":                  tokenFile,
		"authorization-mode":               "RBAC",
		"service-cluster-ip-range":         ServiceClusterIPRange,
		"service-account-issuer":           "https://kubernetes.default.svc.cluster.local",
		"service-account-key-file":         saPub,
		"service-account-signing-key-file": saKey,
		"allow-privileged":                 "true",
		// Left unset, the advertised address would be the host's default-route address: keep everything on
		// loopback. The endpoint reconciler may not publish a loopback address as the "kubernetes" Service's
		// endpoint, so it is off (nothing here reaches the apiserver through that Service).
		"advertise-address":        "127.0.0.1",
		"endpoint-reconciler-type": "none",
	}
	apiHost := "127.0.0.1"
	if cfg.host != "" {
		apiHost = cfg.host
		apiFlags["bind-address"], apiFlags["advertise-address"] = cfg.host, cfg.host
		delete(apiFlags, "endpoint-reconciler-type")
	}
	for k, v := range cfg.apiserver {
		apiFlags[k] = v
	}
	apiserver, err := c.run(bin, "kube-apiserver", flagArgs(apiFlags))
	if err != nil {
		return err
	}
	apiURL := "https://" + net.JoinHostPort(apiHost, strconv.Itoa(apiPort))
	// The self-signed serving certificate (and its CA) appear in cert-dir before the server listens.
	certFile := filepath.Join(certDir, "apiserver.crt")
	var caData []byte
	if err := waitFor(apiserver, func() bool {
		if caData == nil {
			b, err := os.ReadFile(certFile)
			if err != nil || !bytes.Contains(b, []byte("END CERTIFICATE")) {
				return false
			}
			caData = b
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caData) {
			caData = nil
			return false
		}
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer hc.CloseIdleConnections()
		_, ok := get(hc, apiURL+"/readyz", token)
		return ok
	}); err != nil {
		return err
	}

	c.Config = &rest.Config{
		Host:            apiURL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: caData},
		QPS:             100,
		Burst:           200,
		UserAgent:       "moat-kubetest",
	}
	c.client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: apiURL, CertificateAuthorityData: caData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		return err
	}

	// kube-controller-manager
	kcmFlags := map[string]string{
		"kubeconfig":   c.Kubeconfig,
		"controllers":  strings.Join(cfg.controllers, ","),
		"leader-elect": "false",
		"secure-port":  "0",
		"root-ca-file": certFile, // the kube-root-ca.crt ConfigMaps pods mount with their token
	}
	for k, v := range cfg.kcm {
		kcmFlags[k] = v
	}
	kcm, err := c.run(bin, "kube-controller-manager", flagArgs(kcmFlags))
	if err != nil {
		return err
	}
	if cfg.scheduler {
		if _, err := c.run(bin, "kube-scheduler", flagArgs(map[string]string{"kubeconfig": c.Kubeconfig,
			"leader-elect": "false", "secure-port": "0"})); err != nil {
			return err
		}
	}
	// With the ServiceAccount controller, its first "default" ServiceAccount shows the controllers run;
	// otherwise the process merely has to stay up for a moment.
	if slices.Contains(cfg.controllers, "serviceaccount-controller") || slices.Contains(cfg.controllers, "serviceaccount") ||
		slices.Contains(cfg.controllers, "*") {
		return waitFor(kcm, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			return err == nil
		})
	}
	select {
	case <-kcm.Done():
		return kcm.ExitError()
	case <-time.After(time.Second):
		return nil
	}
}

// Client is a clientset for Config.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Stop stops the controller manager, the apiserver, then etcd (each SIGTERM, then SIGKILL if it has not
// exited after a while) and removes Dir if New created it. It reports a component that had exited on its
// own before. Calling it again does nothing.
func (c *Cluster) Stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	for _, p := range c.procs {
		if p.Exited() {
			errs = append(errs, p.ExitError())
		}
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		grace := 10 * time.Second
		if p.Name == "kube-apiserver" {
			grace = 20 * time.Second
		}
		p.Terminate(grace)
	}
	if c.removeDir {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killAll ends whatever a failed start left running.
func (c *Cluster) killAll() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Terminate(5 * time.Second)
	}
}

func (c *Cluster) run(bin, name string, args []string) (*procs.Proc, error) {
	p, err := procs.Start(name, filepath.Join(bin, name), args, filepath.Join(c.Dir, name+".log"), c.Dir, nil, nil)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// waitFor polls ready until it holds, the process exits, or startTimeout passes.
func waitFor(p *procs.Proc, ready func() bool) error {
	return p.WaitUntil(nil, startTimeout, 100*time.Millisecond, "readiness", ready)
}

func get(hc *http.Client, url, token string) ([]byte, bool) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, false
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return body, resp.StatusCode == http.StatusOK
}

func flagArgs(flags map[string]string) []string {
	args := make([]string, 0, len(flags))
	for k, v := range flags {
		args = append(args, "--"+k+"="+v)
	}
	slices.Sort(args)
	return args
}

// freePorts returns n distinct loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeKeyPair writes a new ECDSA P-256 service-account signing key (PKCS#8) and its public key (PKIX).
func writeKeyPair(keyPath, pubPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	return os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}
