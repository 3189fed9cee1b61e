package enforcer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatfw/moat/bpf"
)

// Metrics the enforcer exports. The datapath's counters are read at scrape time (a collector); what only the
// enforcer sees (apply time, flow verdicts by namespace) is counted as it happens.
type Metrics struct {
	ApplySeconds prometheus.Histogram
	FlowVerdicts *prometheus.CounterVec
}

var (
	descPackets    = prometheus.NewDesc("moat_packets_total", "Packets the datapath decided, by reason.", []string{"reason", "verdict"}, nil)
	descBytes      = prometheus.NewDesc("moat_bytes_total", "Bytes the datapath decided, by reason.", []string{"reason", "verdict"}, nil)
	descRule       = prometheus.NewDesc("moat_rule_packets_total", "Packets a rule decided (or reported, for Audit policies).", []string{"policy", "rule"}, nil)
	descEndpoints  = prometheus.NewDesc("moat_endpoints", "Pod interfaces the datapath guards on this node.", nil, nil)
	descGeneration = prometheus.NewDesc("moat_policy_generation", "The policy generation in force.", nil, nil)
	descLost       = prometheus.NewDesc("moat_events_lost_total", "Flow events the ring buffer had no room for.", nil, nil)
	descCTLimited  = prometheus.NewDesc("moat_conntrack_limited_total", "New flows dropped because their pod held its bound of conntrack entries (FirewallConfig conntrack.maxPerEndpoint).", nil, nil)
	descCTBound    = prometheus.NewDesc("moat_conntrack_per_endpoint_max", "The bound of conntrack entries one pod interface may hold (0: none).", nil, nil)
	descMapEntries = prometheus.NewDesc("moat_map_entries", "Entries in a datapath map.", []string{"map"}, nil)
	descRefused    = prometheus.NewDesc("moat_ipcache_refused", "Addresses of the cluster the ipcache had no room for (decided by the ranges that hold them).", nil, nil)
	descMapSize    = prometheus.NewDesc("moat_map_max_entries", "Capacity of a datapath map.", []string{"map"}, nil)
	descProblems   = prometheus.NewDesc("moat_problems", "Problems with policy objects (moatctl status lists them): "+
		"objects the source could not use, and namespace labels with values Moat does not know, by kind.", []string{"kind"}, nil)
	descWarnings = prometheus.NewDesc("moat_warnings", "Warnings about policy objects applied as written "+
		"(a FirewallPolicy that selects no namespace), by kind.", []string{"kind"}, nil)
)

// NewMetrics registers the enforcer's metrics with reg.
func (e *Enforcer) NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		ApplySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "moat_policy_apply_seconds",
			Help: "Time from a desired state to the datapath enforcing it.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		FlowVerdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_flow_verdicts_total",
			Help: "Flow events by namespace, policy, verdict and reason (denies always; allows when allow events are on)."},
			[]string{"namespace", "policy", "verdict", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.ApplySeconds, m.FlowVerdicts, collector{e}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	e.metrics.Store(m)
	return m, nil
}

type collector struct{ e *Enforcer }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descRule, descEndpoints, descGeneration, descLost,
		descMapEntries, descMapSize, descProblems, descWarnings, descCTLimited, descCTBound, descRefused} {
		ch <- d
	}
	for _, d := range dnsDescs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	dp := c.e.dp
	if counts, err := dp.ReasonCounters(); err == nil {
		for r, v := range counts {
			verdict := "pass"
			if r.IsDrop() {
				verdict = "drop"
			}
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v.Packets), bpf.ReasonName(r), verdict)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v.Bytes), bpf.ReasonName(r), verdict)
		}
	}
	snap := c.e.Snapshot()
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, float64(snap.IPCacheRefused))
	problems, warnings := problemCounts(snap)
	for kind, n := range problems {
		ch <- prometheus.MustNewConstMetric(descProblems, prometheus.GaugeValue, float64(n), kind)
	}
	for kind, n := range warnings {
		ch <- prometheus.MustNewConstMetric(descWarnings, prometheus.GaugeValue, float64(n), kind)
	}
	for id, k := range snap.Rules {
		if v, err := dp.RuleCounter(id); err == nil {
			ch <- prometheus.MustNewConstMetric(descRule, prometheus.CounterValue, float64(v.Packets), k.Policy, k.Name())
		}
	}
	if fills, err := dp.MapFillsCounted(map[string]int{"ipcache": snap.IPCacheEntries}); err == nil {
		for name, f := range fills {
			ch <- prometheus.MustNewConstMetric(descMapEntries, prometheus.GaugeValue, float64(f.Entries), name)
			if name == "local_endpoints" {
				ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(f.Entries))
			}
		}
	}
	if cfg, err := dp.Config(); err == nil {
		ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(cfg.Generation))
		ch <- prometheus.MustNewConstMetric(descCTBound, prometheus.GaugeValue, float64(cfg.CtMaxPerEndpoint))
	}
	if n, err := dp.Stat(bpf.StatCTLimited); err == nil {
		ch <- prometheus.MustNewConstMetric(descCTLimited, prometheus.CounterValue, float64(n))
	}
	if lost, err := dp.Stat(bpf.StatEventsLost); err == nil {
		ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost))
	}
	for name, size := range dp.MapCapacities() {
		ch <- prometheus.MustNewConstMetric(descMapSize, prometheus.GaugeValue, float64(size), name)
	}
	c.collectDNS(ch, snap)
}
