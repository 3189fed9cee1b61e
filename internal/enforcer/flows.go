package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
)

// FlowRecord is one line of the flow log (JSON): what happened to a packet, of which pod, and which policy and
// rule decided. It is what the API's flow stream serves too.
type FlowRecord = agentapi.Flow

// pods finds the pod behind a host ifindex from the plugin's records, reading them again on a miss.
type pods struct {
	store endpoint.Store
	mu    sync.Mutex
	by    map[int]*endpoint.Record
}

func (p *pods) lookup(ifindex int) *endpoint.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.by[ifindex]; ok {
		return r
	}
	records, err := p.store.List("")
	if err != nil {
		return nil
	}
	p.by = map[int]*endpoint.Record{}
	for _, r := range records {
		p.by[r.HostIfindex] = r
	}
	return p.by[ifindex]
}

// Describe turns a datapath event into a flow record.
func (e *Enforcer) Describe(f bpf.Flow, pod *endpoint.Record) FlowRecord {
	rec := FlowRecord{Time: f.Time.UTC(), Direction: f.Direction.String(), Verdict: f.Verdict.String(),
		Reason: bpf.ReasonName(f.Reason), Proto: v1alpha1.ProtocolName(f.Protocol), Src: f.Src.String(), Sport: f.SrcPort,
		Dst: f.Dst.String(), Dport: f.DstPort, Remote: f.RemoteClass.String()}
	snap := e.published.Load() // an apply in progress does not hold the flow log up
	rec.Namespace = snap.Namespace(f.Identity)
	if name := snap.Namespace(f.RemoteIdentity); name != "" {
		rec.Remote = name
	}
	if k, ok := snap.Rules[f.RuleID]; ok && f.RuleID != 0 {
		rec.Policy, rec.Rule = k.Policy, k.Name()
	}
	m := e.metrics.Load()
	if m != nil {
		m.FlowVerdicts.WithLabelValues(rec.Namespace, rec.Policy, rec.Verdict, rec.Reason).Inc()
	}
	if pod != nil {
		rec.Pod = pod.Pod
		if rec.Namespace == "" {
			rec.Namespace = pod.Namespace
		}
	}
	return rec
}

// RunFlows reads every datapath event until ctx ends, keeps the recent ones for the API's flow stream, and
// writes each as a JSON line to w when w is not nil (the flow log). A full ring buffer loses events in the
// kernel (counted in the stats map); neither the log nor a slow API client ever slows the datapath.
func (e *Enforcer) RunFlows(ctx context.Context, store endpoint.Store, w io.Writer) error {
	r, err := e.dp.NewEventReader()
	if err != nil {
		return err
	}
	index := &pods{store: store}
	var enc *json.Encoder
	if w != nil {
		enc = json.NewEncoder(w)
	}
	return readRing(ctx, r, "flow events", func(f bpf.Flow) error {
		rec := e.Describe(f, index.lookup(int(f.Ifindex)))
		e.flows.publish(rec)
		if enc != nil {
			if err := enc.Encode(rec); err != nil {
				return fmt.Errorf("write flow log: %w", err)
			}
		}
		return nil
	})
}

// ringReader is a reader of one of the datapath's rings.
type ringReader[T any] interface {
	Read() (T, error)
	Close() error
}

// readRing hands each record of r to each until ctx ends (nil), reading fails or each fails.
func readRing[T any](ctx context.Context, r ringReader[T], what string, each func(T) error) error {
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	for {
		v, err := r.Read()
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		if err := each(v); err != nil {
			return err
		}
	}
}

// Flows is the recent flows that f selects (by namespace and verdict, no older than f.Since, at most the last
// f.Limit), oldest first; with f.Follow, also a channel of the selected flows that come after them, until stop is
// called. A follower that cannot keep up loses flows, never the reader.
func (e *Enforcer) Flows(f agentapi.FlowFilter) (past []FlowRecord, next <-chan FlowRecord, stop func()) {
	return e.flows.query(f, f.Since, f.Limit, f.Follow, func(r FlowRecord) time.Time { return r.Time })
}

// selects tells whether a flow is of f's namespace and verdict (empty: any).
func selects(f agentapi.FlowFilter, r FlowRecord) bool {
	return (f.Namespace == "" || r.Namespace == f.Namespace) && (f.Verdict == "" || r.Verdict == f.Verdict)
}

// hub keeps the latest records in a ring and hands new ones to followers, each the ones its filter selects (match);
// a follower that cannot keep up loses records (counted), never the reader.
type hub[T, F any] struct {
	mu        sync.Mutex
	match     func(F, T) bool
	ring      []T
	next      int
	full      bool
	followers map[chan T]F
	dropped   uint64
}

func newHub[T, F any](size int, match func(F, T) bool) *hub[T, F] {
	return &hub[T, F]{match: match, ring: make([]T, size), followers: map[chan T]F{}}
}

func (h *hub[T, F]) publish(r T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = r
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	for ch, filter := range h.followers {
		if !h.match(filter, r) {
			continue
		}
		select {
		case ch <- r:
		default:
			h.dropped++
		}
	}
}

// recent is the records kept, oldest first; with follow, a channel of the records after them that f selects
// (close it with unfollow).
func (h *hub[T, F]) recent(f F, follow bool) ([]T, chan T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []T
	if h.full {
		out = append(out, h.ring[h.next:]...)
	}
	out = append(out, h.ring[:h.next]...)
	if !follow {
		return out, nil
	}
	ch := make(chan T, 1024)
	h.followers[ch] = f
	return out, ch
}

func (h *hub[T, F]) unfollow(ch chan T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.followers, ch)
}

// query is what recent keeps that f selects (match), no older than since, at most the last limit, oldest first;
// with follow, also a channel of the selected records that come after them, until stop is called.
func (h *hub[T, F]) query(f F, since time.Duration, limit int, follow bool, at func(T) time.Time) (past []T, next <-chan T, stop func()) {
	all, ch := h.recent(f, follow)
	cutoff := time.Now().Add(-since)
	for _, r := range all {
		if h.match(f, r) && (since == 0 || at(r).After(cutoff)) {
			past = append(past, r)
		}
	}
	if limit > 0 && len(past) > limit {
		past = past[len(past)-limit:]
	}
	if ch == nil {
		return past, nil, func() {}
	}
	return past, ch, func() { h.unfollow(ch) }
}
