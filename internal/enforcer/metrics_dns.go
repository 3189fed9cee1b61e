package enforcer

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatfw/moat/bpf"
)

var (
	descDNSQueries = prometheus.NewDesc("moat_dns_queries_total", "DNS queries pods sent to port 53, by namespace.",
		[]string{"namespace"}, nil)
	descDNSAnswers = prometheus.NewDesc("moat_dns_answers_total", "DNS answers pods got from trusted resolvers, by "+
		"namespace, query type (OTHER: a type Moat does not name) and rcode.", []string{"namespace", "type", "rcode"}, nil)
	descDNSLatency = prometheus.NewDesc("moat_dns_latency_seconds", "Time from a pod's DNS query to its answer "+
		"reaching the pod, measured on the node, by namespace.", []string{"namespace"}, nil)
	descDNSSynthesized = prometheus.NewDesc("moat_dns_nxdomain_synthesized_total", "NXDOMAIN answers (resets over "+
		"TCP) Moat gave for names a dnsDeny rule denies, by namespace and query type.", []string{"namespace", "type"}, nil)
	descDNSFallback = prometheus.NewDesc("moat_dns_fallback_total", "DNS answers the datapath could not read in "+
		"place and handed to the enforcer to learn from, by namespace.", []string{"namespace"}, nil)
	descFQDNLearned = prometheus.NewDesc("moat_fqdn_learned_addresses", "Addresses a namespace holds learned from "+
		"DNS answers for its fqdn rules.", []string{"namespace"}, nil)
	descDNSNode = prometheus.NewDesc("moat_dns_datapath_total", "The node's DNS datapath counters: addresses "+
		"learned, answers handed to the enforcer and lost on the way, events lost, answers without an event (over "+
		"answerEventsPerSecond).", []string{"counter"}, nil)
	dnsDescs = []*prometheus.Desc{descDNSQueries, descDNSAnswers, descDNSLatency, descDNSSynthesized, descDNSFallback,
		descFQDNLearned, descDNSNode}
)

// collectDNS reads the datapath's DNS counters, per identity, into metrics per namespace.
func (c collector) collectDNS(ch chan<- prometheus.Metric, snap Snapshot) {
	dp := c.e.dp
	stats, err := dp.DNSStats()
	if err != nil {
		return
	}
	type labels struct{ ns, typ, rcode string }
	queries, answers, synthesized, fallback := map[string]uint64{}, map[labels]uint64{}, map[labels]uint64{}, map[string]uint64{}
	latency := map[string][]uint64{} // by bucket
	for k, n := range stats {
		ns := snap.Namespace(k.Identity)
		if ns == "" {
			continue // a namespace that went, or none applied yet
		}
		switch bpf.DNSStatKind(k.Kind) {
		case bpf.DNSStatQueries:
			queries[ns] += n
		case bpf.DNSStatAnswers:
			answers[labels{ns, statTypeName(k.Value), rcodeName(k.Rcode)}] += n
		case bpf.DNSStatSynthesized:
			synthesized[labels{ns, statTypeName(k.Value), ""}] += n
		case bpf.DNSStatFallback:
			fallback[ns] += n
		case bpf.DNSStatLatency:
			if latency[ns] == nil {
				latency[ns] = make([]uint64, bpf.DNSLatencyBuckets)
			}
			if int(k.Value) < bpf.DNSLatencyBuckets {
				latency[ns][k.Value] += n
			}
		}
	}
	for ns, n := range queries {
		ch <- prometheus.MustNewConstMetric(descDNSQueries, prometheus.CounterValue, float64(n), ns)
	}
	for l, n := range answers {
		ch <- prometheus.MustNewConstMetric(descDNSAnswers, prometheus.CounterValue, float64(n), l.ns, l.typ, l.rcode)
	}
	for l, n := range synthesized {
		ch <- prometheus.MustNewConstMetric(descDNSSynthesized, prometheus.CounterValue, float64(n), l.ns, l.typ)
	}
	for ns, n := range fallback {
		ch <- prometheus.MustNewConstMetric(descDNSFallback, prometheus.CounterValue, float64(n), ns)
	}
	for ns, buckets := range latency {
		h, count := latencyHistogram(buckets)
		// the datapath keeps no sum: each answer is counted at its bucket's middle, an estimate within a factor of 1.5
		var sum float64
		for b, n := range buckets {
			sum += float64(n) * math.Ldexp(1.5, b-1) / 1e6
		}
		ch <- prometheus.MustNewConstHistogram(descDNSLatency, count, sum, h, ns)
	}
	for ns, id := range snap.Identities {
		if len(snap.FQDNSlots[id]) == 0 {
			continue
		}
		if n, err := dp.FQDNCount(id); err == nil {
			ch <- prometheus.MustNewConstMetric(descFQDNLearned, prometheus.GaugeValue, float64(n), ns)
		}
	}
	for name, s := range map[string]bpf.Stat{"learned": bpf.StatFQDNLearned, "fallback": bpf.StatDNSFallback,
		"fallback_lost": bpf.StatDNSFallbackLost, "events_lost": bpf.StatDNSEventsLost, "events_sampled": bpf.StatDNSEventsSampled} {
		if n, err := dp.Stat(s); err == nil {
			ch <- prometheus.MustNewConstMetric(descDNSNode, prometheus.CounterValue, float64(n), name)
		}
	}
}

// latencyHistogram turns the datapath's buckets (b: under 2^b µs; the last: the rest) into Prometheus's cumulative
// buckets in seconds, and the count of every answer.
func latencyHistogram(buckets []uint64) (map[float64]uint64, uint64) {
	h := map[float64]uint64{}
	var cum uint64
	for b, n := range buckets {
		cum += n
		if b < len(buckets)-1 {
			h[math.Ldexp(1, b)/1e6] = cum
		}
	}
	return h, cum
}

// statTypeName names a counter's type: 0 is every type the datapath does not name.
func statTypeName(t uint16) string {
	if t == 0 {
		return "OTHER"
	}
	return typeName(t)
}
