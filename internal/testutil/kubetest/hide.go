package kubetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// HidingResource returns a client config that reaches the cluster through a proxy which makes it look like an
// API server that does not serve one resource of a group version: discovery of the group version leaves it out,
// and every request for it is answered 404 Not Found. The proxy serves no aggregated discovery (clients fall back
// to the per-group documents, as with API servers before 1.26). It stops when the test ends.
//
// It is for resources this control plane cannot switch off: kube-apiserver v1.37 refuses to start with
// --runtime-config=networking.k8s.io/v1/servicecidrs=false (its Service IP allocator needs ServiceCIDRs, the
// MultiCIDRServiceAllocator gate is locked on, and --emulated-version goes back to 1.34 only), so a client
// that must cope with a cluster older than 1.33 is tested through this proxy.
func (c *Cluster) HidingResource(tb testing.TB, group, version, resource string) *rest.Config {
	tb.Helper()
	upstream, err := url.Parse(c.Config.Host)
	if err != nil {
		tb.Fatal(err)
	}
	transport, err := rest.TransportFor(c.Config) // the admin credentials are the proxy's
	if err != nil {
		tb.Fatal(err)
	}
	gvPath := "/apis/" + group + "/" + version
	if group == "" {
		gvPath = "/api/" + version
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Header.Del("Accept-Encoding") // so that discovery documents arrive as plain JSON to edit
			if r.In.URL.Path == "/api" || r.In.URL.Path == "/apis" {
				r.Out.Header.Set("Accept", "application/json") // the plain group list, not aggregated discovery
			}
		},
		Transport:     transport,
		FlushInterval: -1, // watches stream
		ModifyResponse: func(resp *http.Response) error {
			if resp.Request.URL.Path != gvPath || resp.StatusCode != http.StatusOK {
				return nil
			}
			return dropResource(resp, resource)
		},
	}
	hidden := func(path string) bool {
		sub, ok := strings.CutPrefix(path, gvPath+"/")
		if !ok {
			return false
		}
		parts := strings.Split(sub, "/")
		if len(parts) >= 3 && parts[0] == "namespaces" {
			parts = parts[2:]
		}
		return parts[0] == resource
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hidden(r.URL.Path) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound,
				Message: "the server could not find the requested resource"})
			return
		}
		proxy.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return &rest.Config{Host: "http://" + ln.Addr().String(), QPS: c.Config.QPS, Burst: c.Config.Burst,
		UserAgent: c.Config.UserAgent}
}

// dropResource takes a resource (and its subresources) out of a group version's APIResourceList.
func dropResource(resp *http.Response, resource string) error {
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("discovery document of %s: %w", resp.Request.URL.Path, err)
	}
	kept := list.APIResources[:0]
	for _, r := range list.APIResources {
		if r.Name != resource && !strings.HasPrefix(r.Name, resource+"/") {
			kept = append(kept, r)
		}
	}
	list.APIResources = kept
	if body, err = json.Marshal(&list); err != nil {
		return err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	resp.Header.Del("Content-Encoding")
	resp.Header.Set("Content-Type", "application/json")
	return nil
}

// Severable returns a client config that reaches the cluster through a proxy the test can cut (every connection,
// watches included, is closed and none is accepted) and mend (on the same address), standing for a node cut off
// from its API server for a while. It stops when the test ends.
func (c *Cluster) Severable(tb testing.TB) (cfg *rest.Config, cut, mend func()) {
	tb.Helper()
	upstream, err := url.Parse(c.Config.Host)
	if err != nil {
		tb.Fatal(err)
	}
	transport, err := rest.TransportFor(c.Config)
	if err != nil {
		tb.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(upstream) },
		Transport: transport, FlushInterval: -1}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	var srv *http.Server
	serve := func(ln net.Listener) {
		srv = &http.Server{Handler: proxy}
		go func(s *http.Server) { _ = s.Serve(ln) }(srv)
	}
	serve(ln)
	cut = func() { _ = srv.Close() }
	mend = func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			tb.Fatalf("listen again on %s: %v", addr, err)
		}
		serve(ln)
	}
	tb.Cleanup(func() { _ = srv.Close() })
	return &rest.Config{Host: "http://" + addr, QPS: c.Config.QPS, Burst: c.Config.Burst, UserAgent: c.Config.UserAgent}, cut, mend
}
