package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Client talks to the enforcer on its socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient is a client of the enforcer listening on socket (DefaultSocket if empty).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	c := &Client{Socket: socket}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	return c
}

// ErrNoEnforcer is returned when nothing listens on the socket.
var ErrNoEnforcer = errors.New("no enforcer is running")

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	resp, err := c.request(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("enforcer answered %s %s with something unreadable: %w", method, path, err)
	}
	return nil
}

func (c *Client) request(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := "http://moat/" + Version + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.explain(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e Error
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("enforcer answered %s %s: %s", method, path, resp.Status)
	}
	return resp, nil
}

// explain turns a dial failure into what an operator can act on.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: nothing listens on %s (is moat-enforcer running on this node? "+
			"it runs in the moat DaemonSet's pod, or start it with `moat-enforcer --policy-dir DIR`; "+
			"--socket names another socket)", ErrNoEnforcer, c.Socket)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: the socket is root's only (mode 0600); run moatctl as root", c.Socket)
	}
	return fmt.Errorf("enforcer socket %s: %w", c.Socket, err)
}

// Status asks how the enforcer is.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/status", nil, nil, &s)
}

// Endpoints lists the pods the datapath guards.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.do(ctx, http.MethodGet, "/endpoints", nil, nil, &eps)
}

// Policies lists the FirewallPolicies and their state.
func (c *Client) Policies(ctx context.Context) ([]Policy, error) {
	var ps []Policy
	return ps, c.do(ctx, http.MethodGet, "/policies", nil, nil, &ps)
}

// Trace asks what would happen to a packet.
func (c *Client) Trace(ctx context.Context, req TraceRequest) (TraceResult, error) {
	var r TraceResult
	return r, c.do(ctx, http.MethodPost, "/trace", nil, req, &r)
}

// Host asks for the node's safety set as derived now.
func (c *Client) Host(ctx context.Context) (HostSafety, error) {
	var h HostSafety
	return h, c.do(ctx, http.MethodGet, "/host", nil, nil, &h)
}

// Report asks who can reach what, from the policy in force on the node, and decodes the answer into r (a
// *report.Report: the schema is that package's, so this one stays free of policy code).
func (c *Client) Report(ctx context.Context, r any) error {
	return c.do(ctx, http.MethodGet, "/report", nil, nil, r)
}

// Flows calls fn for each flow the filter selects: the recent ones, then, with Follow, new ones until ctx ends
// or fn returns an error.
func (c *Client) Flows(ctx context.Context, f FlowFilter, fn func(Flow) error) error {
	q := window(f.Since, f.Limit, f.Follow)
	if f.Namespace != "" {
		q.Set("namespace", f.Namespace)
	}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	return stream(ctx, c, "/flows", q, "flow", fn)
}

// DNS streams the DNS answers f selects to fn, as Flows streams flows.
func (c *Client) DNS(ctx context.Context, f DNSFilter, fn func(DNSAnswer) error) error {
	q := window(f.Since, f.Limit, f.Follow)
	for k, v := range map[string]string{"namespace": f.Namespace, "pod": f.Pod, "name": f.Name, "rcode": f.Rcode} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return stream(ctx, c, "/dns", q, "DNS answer", fn)
}

// window is the query of a stream's since, limit and follow.
func window(since time.Duration, limit int, follow bool) url.Values {
	q := url.Values{}
	if since > 0 {
		q.Set("since", since.String())
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if follow {
		q.Set("follow", "1")
	}
	return q
}

// stream reads a JSON lines answer of path, one T a line, into fn until the answer ends or fn fails.
func stream[T any](ctx context.Context, c *Client, path string, q url.Values, what string, fn func(T) error) error {
	resp, err := c.request(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("unreadable %s from the enforcer: %w", what, err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// Listen opens the API socket at path, mode 0600, replacing a stale socket
// a previous run left behind (one that nothing answers on). It refuses to take a socket another enforcer serves.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("another enforcer is serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177) // the socket is born 0600: no window where others may connect
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
