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
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	index := &pods{store: store}
	var enc *json.Encoder
	if w != nil {
		enc = json.NewEncoder(w)
	}
	for {
		f, err := r.Read()
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read flow events: %w", err)
		}
		rec := e.Describe(f, index.lookup(int(f.Ifindex)))
		e.flows.publish(rec)
		if enc != nil {
			if err := enc.Encode(rec); err != nil {
				return fmt.Errorf("write flow log: %w", err)
			}
		}
	}
}

// Flows is the recent flows that f selects (by namespace and verdict, no older than f.Since, at most the last
// f.Limit), oldest first; with f.Follow, also a channel of the selected flows that come after them, until stop is
// called. A follower that cannot keep up loses flows, never the reader.
func (e *Enforcer) Flows(f agentapi.FlowFilter) (past []FlowRecord, next <-chan FlowRecord, stop func()) {
	all, ch := e.flows.recent(f)
	cutoff := time.Now().Add(-f.Since)
	for _, r := range all {
		if selects(f, r) && (f.Since == 0 || r.Time.After(cutoff)) {
			past = append(past, r)
		}
	}
	if f.Limit > 0 && len(past) > f.Limit {
		past = past[len(past)-f.Limit:]
	}
	if ch == nil {
		return past, nil, func() {}
	}
	return past, ch, func() { e.flows.unfollow(ch) }
}

// selects tells whether a flow is of f's namespace and verdict (empty: any).
func selects(f agentapi.FlowFilter, r FlowRecord) bool {
	return (f.Namespace == "" || r.Namespace == f.Namespace) && (f.Verdict == "" || r.Verdict == f.Verdict)
}

// flowHub keeps the latest flows in a ring and hands new ones to followers, each the ones its filter selects; a
// follower that cannot keep up loses flows (counted), never the reader.
type flowHub struct {
	mu        sync.Mutex
	ring      []FlowRecord
	next      int
	full      bool
	followers map[chan FlowRecord]agentapi.FlowFilter
	dropped   uint64
}

func newFlowHub(size int) *flowHub {
	return &flowHub{ring: make([]FlowRecord, size), followers: map[chan FlowRecord]agentapi.FlowFilter{}}
}

func (h *flowHub) publish(f FlowRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = f
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	for ch, filter := range h.followers {
		if !selects(filter, f) {
			continue
		}
		select {
		case ch <- f:
		default:
			h.dropped++
		}
	}
}

// recent is the flows kept, oldest first; with f.Follow, a channel of the flows after them that f selects (close
// it with unfollow).
func (h *flowHub) recent(f agentapi.FlowFilter) ([]FlowRecord, chan FlowRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []FlowRecord
	if h.full {
		out = append(out, h.ring[h.next:]...)
	}
	out = append(out, h.ring[:h.next]...)
	if !f.Follow {
		return out, nil
	}
	ch := make(chan FlowRecord, 1024)
	h.followers[ch] = f
	return out, ch
}

func (h *flowHub) unfollow(ch chan FlowRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.followers, ch)
}
