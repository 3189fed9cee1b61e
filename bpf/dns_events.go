package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/miekg/dns"
)

// DNS visibility: the answers pods get (dns_events) and the per-identity DNS counters (dns_stats).

// DNSEventFlags say what the datapath did with an answer.
type DNSEventFlags uint8

const (
	DNSSynthesized DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_SYNTHESIZED) // NXDOMAIN (a TCP reset) for a dnsDeny name
	DNSAudited     DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_AUDIT)       // a dnsDeny name only reported
	DNSMatchedFQDN DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_FQDN)        // the name is an fqdn pattern: learned
	DNSToAgent     DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_TO_AGENT)    // handed to the agent
	DNSTruncated   DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_TRUNCATED)   // TC: asked again over TCP
	DNSPartial     DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_PARTIAL)     // not every record read
	DNSOverTCP     DNSEventFlags = DNSEventFlags(moatMoatDnsEventFlagsMOAT_DNS_EV_TCP)
)

// DNSEventAddrs is how many answer addresses one event carries.
const DNSEventAddrs = int(moatMoatLimitsMOAT_DNS_EVENT_ADDRS)

// DefaultDNSAnswerEvents is how many events a second a node reports, by default, of answers that no fqdn pattern
// matched and the datapath did not answer itself (those are always reported).
const DefaultDNSAnswerEvents = int(moatMoatLimitsMOAT_DNS_ANSWER_EVENTS)

// DNSLatencyBuckets is how many latency buckets dns_stats counts: bucket b holds answers faster than 2^b µs, the
// last one every slower answer.
const DNSLatencyBuckets = int(moatMoatLimitsMOAT_DNS_LATENCY_BUCKETS)

// DNSAddress is one address of an answer, with its TTL.
type DNSAddress struct {
	Addr netip.Addr
	TTL  uint32
}

// DNSEvent is one answer a pod got: from a trusted resolver, or from the datapath for a dnsDeny name.
type DNSEvent struct {
	Time        time.Time
	Latency     time.Duration // from the pod's query; 0 when it was not seen
	Ifindex     uint32        // the pod's host veth
	Identity    uint32
	RuleID      uint32 // the dnsDeny rule of a synthesized or audited answer
	Slots       uint64 // the fqdn slots the name is the pattern of
	Type        uint16
	Rcode       uint8
	Flags       DNSEventFlags
	Pod         netip.Addr
	Resolver    netip.Addr
	Port        uint16 // the pod's
	AnswerCount uint16 // records in the answer section
	Name        string // as asked, dotted, without the root's dot
	Addresses   []DNSAddress
}

// DNSEventReader reads the dns_events ring.
type DNSEventReader struct {
	rd         *ringbuf.Reader
	bootOffset time.Duration
	deadline   time.Time
}

// dnsEventPoll is how often a reader looks at the ring: the datapath wakes it only once an eighth of the ring
// waits, since a wake-up costs the answer it reports microseconds.
const dnsEventPoll = 250 * time.Millisecond

// NewDNSEventReader starts reading the DNS events; Close stops it.
func (dp *Datapath) NewDNSEventReader() (*DNSEventReader, error) {
	rd, offset, err := openRing(dp.maps.DnsEvents, "the DNS event ring")
	if err != nil {
		return nil, err
	}
	return &DNSEventReader{rd: rd, bootOffset: offset}, nil
}

// SetDeadline makes Read give up at t (os.ErrDeadlineExceeded); not while a Read waits.
func (r *DNSEventReader) SetDeadline(t time.Time) { r.deadline = t }

// Close stops the reader (a blocked Read returns).
func (r *DNSEventReader) Close() error { return r.rd.Close() }

// Read waits for the next event, looking at the ring every dnsEventPoll.
func (r *DNSEventReader) Read() (DNSEvent, error) {
	var rec ringbuf.Record
	for {
		step := time.Now().Add(dnsEventPoll)
		if !r.deadline.IsZero() && r.deadline.Before(step) {
			step = r.deadline
		}
		r.rd.SetDeadline(step)
		err := r.rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) && (r.deadline.IsZero() || time.Now().Before(r.deadline)) {
			continue
		}
		if err != nil {
			return DNSEvent{}, err
		}
		break
	}
	var raw moatMoatDnsEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return DNSEvent{}, fmt.Errorf("a DNS event of %d bytes: %w", len(rec.RawSample), err)
	}
	ev := DNSEvent{Time: time.Unix(0, int64(raw.TimeNs)+int64(r.bootOffset)), Latency: time.Duration(raw.LatencyNs),
		Ifindex: raw.Ifindex, Identity: raw.Identity, RuleID: raw.RuleId, Slots: raw.Slots, Type: raw.Qtype,
		Rcode: raw.Rcode, Flags: DNSEventFlags(raw.Flags), Pod: AddrFrom16(raw.Family, raw.Pod),
		Resolver: AddrFrom16(raw.Family, raw.Resolver), Port: raw.Port, AnswerCount: raw.Ancount}
	n := min(int(raw.NameLen), len(raw.Name))
	name, _, err := dns.UnpackDomainName(raw.Name[:n], 0)
	if err != nil {
		return ev, fmt.Errorf("the name of a DNS event: %w", err)
	}
	ev.Name = strings.TrimSuffix(name, ".")
	for _, a := range raw.Addrs[:min(int(raw.Naddr), len(raw.Addrs))] {
		ev.Addresses = append(ev.Addresses, DNSAddress{Addr: AddrFrom16(a.Family, a.Addr), TTL: a.Ttl})
	}
	return ev, nil
}

// DNSStatKind is what a DNS counter counts.
type DNSStatKind uint8

const (
	DNSStatQueries     = DNSStatKind(moatMoatDnsStatKindMOAT_DNS_STAT_QUERIES)     // queries pods sent to port 53
	DNSStatAnswers     = DNSStatKind(moatMoatDnsStatKindMOAT_DNS_STAT_ANSWERS)     // answers of trusted resolvers, by type and rcode
	DNSStatLatency     = DNSStatKind(moatMoatDnsStatKindMOAT_DNS_STAT_LATENCY)     // answers by latency bucket
	DNSStatSynthesized = DNSStatKind(moatMoatDnsStatKindMOAT_DNS_STAT_SYNTHESIZED) // NXDOMAIN the datapath gave, by type
	DNSStatFallback    = DNSStatKind(moatMoatDnsStatKindMOAT_DNS_STAT_FALLBACK)    // answers handed to the agent
)

// DNSStatKey is one DNS counter: of an identity, a kind, and the type (0: one the datapath does not name) or the
// latency bucket, and the rcode.
type DNSStatKey = moatMoatDnsStatKey

// DNSStats sums every DNS counter over the CPUs.
func (dp *Datapath) DNSStats() (map[DNSStatKey]uint64, error) {
	out := map[DNSStatKey]uint64{}
	var k DNSStatKey
	var perCPU []uint64
	it := dp.maps.DnsStats.Iterate()
	for it.Next(&k, &perCPU) {
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[k] = sum
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the DNS counters: %w", err)
	}
	return out, nil
}

// ForgetDNSStats drops the DNS counters of identities keep does not want (namespaces that went).
func (dp *Datapath) ForgetDNSStats(keep func(identity uint32) bool) error {
	all, err := dp.DNSStats()
	if err != nil {
		return err
	}
	for k := range all {
		if keep(k.Identity) {
			continue
		}
		if err := dp.maps.DnsStats.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget the DNS counters of identity %d: %w", k.Identity, err)
		}
	}
	return nil
}

// SetDNSAnswerEvents sets how many events a second the node reports of answers no fqdn pattern matched (0: none);
// the datapath keeps a budget per CPU, so each gets its share, rounded up.
func (dp *Datapath) SetDNSAnswerEvents(perSecond int) error {
	return dp.updateDNSTiming(func(t *DNSTiming) { t.AnswerEvents = perCPUShare(perSecond) })
}

func perCPUShare(perSecond int) uint32 {
	if perSecond <= 0 {
		return 0
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil || cpus < 1 {
		cpus = runtime.NumCPU()
	}
	return uint32((perSecond + cpus - 1) / cpus)
}
