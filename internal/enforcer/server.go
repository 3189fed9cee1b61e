package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/hostfw"
	"github.com/moatfw/moat/internal/report"
)

// Server answers moatctl on the enforcer's socket (package agentapi describes the API): it routes each call,
// decodes its request and encodes its answer; the answers come from the enforcer's snapshot (status, policies,
// report, trace) and the node (endpoints, flows, DNS answers).
type Server struct {
	E      *Enforcer
	Store  endpoint.Store
	Source string // what the status names as the policy source
	// Links looks up the host veths; nil: in the enforcer's own network namespace (the host's).
	Links *netlink.Handle
	// Host reads what this node's safety set is derived from (the Kubernetes source); nil: moatctl host is not
	// answered.
	Host func(context.Context) (hostfw.Input, error)
	// Checks add problems of parts the enforcer does not own (the conflist repair loop): each error is a problem
	// that keeps the node from being ready. nil: none.
	Checks []func() error
}

// Serve answers on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	v := "/" + agentapi.Version
	mux.HandleFunc("GET "+v+"/status", s.status)
	mux.HandleFunc("GET "+v+"/endpoints", s.endpoints)
	mux.HandleFunc("GET "+v+"/policies", s.policies)
	mux.HandleFunc("POST "+v+"/trace", s.trace)
	mux.HandleFunc("GET "+v+"/flows", s.flows)
	mux.HandleFunc("GET "+v+"/dns", s.dns)
	mux.HandleFunc("GET "+v+"/host", s.host)
	mux.HandleFunc("GET "+v+"/report", s.report)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, fmt.Errorf("%s %s: not in this API (this enforcer speaks %s)", r.Method, r.URL.Path, agentapi.Version))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(agentapi.Error{Error: err.Error()})
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) { reply(w, s.Status()) }

// Readyz answers a readiness probe: 200 when the status is Ready, else 503 with the problems, one a line.
func (s *Server) Readyz(w http.ResponseWriter, _ *http.Request) {
	st := s.Status()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !st.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
	} else {
		fmt.Fprintln(w, "ready")
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "-", p)
	}
}

func (s *Server) endpoints(w http.ResponseWriter, _ *http.Request) { reply(w, s.endpointList()) }

func (s *Server) policies(w http.ResponseWriter, _ *http.Request) {
	reply(w, s.E.Snapshot().Policies())
}

// report answers who can reach what, from the state in force.
func (s *Server) report(w http.ResponseWriter, _ *http.Request) {
	st := s.E.Snapshot().State
	reply(w, report.Build(report.Input{Config: st.Config, Policies: st.Policies, Namespaces: st.Namespaces}))
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	var req agentapi.TraceRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("trace request: %w", err))
		return
	}
	res, err := s.E.Trace(s.Store, req)
	switch {
	case errors.Is(err, ErrBadTrace):
		fail(w, http.StatusBadRequest, err)
	case errors.Is(err, ErrNotFound):
		fail(w, http.StatusNotFound, err)
	case err != nil:
		fail(w, http.StatusInternalServerError, err)
	default:
		reply(w, res)
	}
}

func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := agentapi.FlowFilter{Namespace: q.Get("namespace"), Verdict: q.Get("verdict")}
	var err error
	if f.Since, f.Limit, f.Follow, err = window(q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if f.Verdict != "" && !slices.Contains([]string{"allowed", "denied", "audit"}, f.Verdict) {
		fail(w, http.StatusBadRequest, fmt.Errorf("verdict %q: want allowed, denied or audit", f.Verdict))
		return
	}
	past, next, stop := s.E.Flows(f)
	defer stop()
	stream(w, r, past, next)
}

func (s *Server) dns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := agentapi.DNSFilter{Namespace: q.Get("namespace"), Pod: q.Get("pod"), Name: q.Get("name"), Rcode: q.Get("rcode")}
	var err error
	if f.Since, f.Limit, f.Follow, err = window(q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	past, next, stop, err := s.E.DNS(f)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	defer stop()
	stream(w, r, past, next)
}

// host answers the node's safety set, derived from the cluster now.
func (s *Server) host(w http.ResponseWriter, r *http.Request) {
	if s.Host == nil {
		fail(w, http.StatusNotFound, fmt.Errorf("the safety set is derived from the cluster: this enforcer's source (%s) has none", s.Source))
		return
	}
	in, err := s.Host(r.Context())
	if err != nil {
		fail(w, http.StatusServiceUnavailable, err)
		return
	}
	reply(w, s.E.HostSafety(in))
}

// window reads a stream's since, limit and follow.
func window(q url.Values) (since time.Duration, limit int, follow bool, err error) {
	if v := q.Get("since"); v != "" {
		if since, err = time.ParseDuration(v); err != nil || since < 0 {
			return 0, 0, false, fmt.Errorf("since %q: want a duration like 5m", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			return 0, 0, false, fmt.Errorf("limit %q: want a count", v)
		}
	}
	return since, limit, q.Get("follow") == "1" || q.Get("follow") == "true", nil
}

// stream writes past as JSON lines, then each record of next as it comes, until the client goes (or next is nil).
func stream[T any](w http.ResponseWriter, r *http.Request, past []T, next <-chan T) {
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	for _, v := range past {
		if enc.Encode(v) != nil {
			return
		}
	}
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	if next == nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case v := <-next:
			if enc.Encode(v) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}
