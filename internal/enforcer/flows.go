package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/resolve"
)

// FlowRecord is one line of the flow log (JSON): what happened to a packet, of which pod, and which policy and
// rule decided.
type FlowRecord struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"direction"`
	Verdict   string    `json:"verdict"`
	Reason    string    `json:"reason"`
	Proto     string    `json:"proto"`
	Src       string    `json:"src"`
	Sport     uint16    `json:"sport"`
	Dst       string    `json:"dst"`
	Dport     uint16    `json:"dport"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	Remote    string    `json:"remote"` // the remote's namespace, or its class (world, node, metadata, cluster)
	Policy    string    `json:"policy,omitempty"`
	Rule      string    `json:"rule,omitempty"` // "egress[0]": the rule's place in its policy
}

var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

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

// ruleName is a rule's place in its policy: "egress[0]".
func ruleName(k resolve.RuleKey) string { return fmt.Sprintf("%s[%d]", k.Direction, k.Index) }

// Describe turns a datapath event into a flow record.
func (e *Enforcer) Describe(f bpf.Flow, pod *endpoint.Record) FlowRecord {
	rec := FlowRecord{Time: f.Time.UTC(), Direction: f.Direction.String(), Verdict: f.Verdict.String(),
		Reason: bpf.ReasonName(f.Reason), Proto: protoNames[f.Protocol], Src: f.Src.String(), Sport: f.SrcPort,
		Dst: f.Dst.String(), Dport: f.DstPort, Remote: f.RemoteClass.String()}
	if rec.Proto == "" {
		rec.Proto = strconv.Itoa(int(f.Protocol))
	}
	e.mu.Lock()
	for name, id := range e.identities {
		if id == f.Identity && f.Identity != 0 {
			rec.Namespace = name
		}
		if id == f.RemoteIdentity && f.RemoteIdentity != 0 {
			rec.Remote = name
		}
	}
	if k, ok := e.ruleKeys[f.RuleID]; ok && f.RuleID != 0 {
		rec.Policy, rec.Rule = k.Policy, ruleName(k)
	}
	m := e.metrics
	e.mu.Unlock()
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

// RunFlowLog writes every datapath event as a JSON line to w until ctx ends. A full ring buffer loses events in
// the kernel (counted in the stats map); the log never slows the datapath.
func (e *Enforcer) RunFlowLog(ctx context.Context, store endpoint.Store, w io.Writer) error {
	r, err := e.dp.NewEventReader()
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	index := &pods{store: store}
	enc := json.NewEncoder(w)
	for {
		f, err := r.Read()
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read flow events: %w", err)
		}
		if err := enc.Encode(e.Describe(f, index.lookup(int(f.Ifindex)))); err != nil {
			return fmt.Errorf("write flow log: %w", err)
		}
	}
}
