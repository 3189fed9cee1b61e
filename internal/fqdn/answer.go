// Package fqdn is the agent's half of egress by name: it reads the DNS answers the datapath hands it (the ring
// buffer dns_fallback), learns from them by the rules the datapath applies in the kernel, and re-injects them
// into the pod. ReadAnswer is also the reference the datapath's tests hold the kernel's reading to.
package fqdn

import (
	"encoding/binary"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Learned is one address an answer holds for the name asked, with its TTL in seconds.
type Learned struct {
	Addr netip.Addr
	TTL  uint32
}

// Answer is what an answer says, as the datapath reads it.
type Answer struct {
	Question string // the name asked, lower-case, with its final dot
	TC       bool   // truncated: nothing is learned from it
	Addrs    []Learned
}

const (
	hdrLen    = 12
	typeA     = 1
	typeCNAME = 5
	typeAAAA  = 28
	classIN   = 1
)

// ReadAnswer reads a DNS message by meaning, with miekg/dns reading its names (pointers followed): a standard
// answer (QR, opcode 0) to one question; then every answer record (ANCOUNT of them): one counts when its class is
// IN and its owner is the question's name or the target of a CNAME that counted before it; A (4 bytes of data) and
// AAAA (16) records that count are its addresses. ok is false when the message is no such answer or any answer
// record cannot be read (a name that is none, a record past the end): then nothing is learned from it. The
// authority and additional sections are not read.
func ReadAnswer(msg []byte) (a Answer, ok bool) {
	if len(msg) < hdrLen || msg[2]&0x80 == 0 || msg[2]&0x78 != 0 || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return a, false
	}
	a.TC = msg[2]&0x02 != 0
	q, off, err := dns.UnpackDomainName(msg, hdrLen)
	if err != nil || off+4 > len(msg) {
		return a, false
	}
	a.Question = strings.ToLower(q)
	chain := map[string]bool{a.Question: true}
	count := int(binary.BigEndian.Uint16(msg[6:]))
	off += 4
	for range count {
		var owner string
		owner, off, err = dns.UnpackDomainName(msg, off)
		if err != nil || off+10 > len(msg) {
			return Answer{}, false
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		class := binary.BigEndian.Uint16(msg[off+2:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
		rdata := off + 10
		if rdata+rdlen > len(msg) {
			return Answer{}, false
		}
		off = rdata + rdlen
		if class != classIN || !chain[strings.ToLower(owner)] {
			continue
		}
		switch {
		case typ == typeA && rdlen == 4:
			a.Addrs = append(a.Addrs, Learned{netip.AddrFrom4([4]byte(msg[rdata:off])), ttl})
		case typ == typeAAAA && rdlen == 16:
			a.Addrs = append(a.Addrs, Learned{netip.AddrFrom16([16]byte(msg[rdata:off])), ttl})
		case typ == typeCNAME:
			target, _, err := dns.UnpackDomainName(msg, rdata)
			if err != nil {
				return Answer{}, false
			}
			chain[strings.ToLower(target)] = true
		}
	}
	if a.TC {
		a.Addrs = nil
	}
	return a, true
}

// Match is the slots (bits: places in patterns) of the patterns that cover name: "api.example.com" the name
// itself, "*.example.com" a name of one label more, "**.example.com" of one label or more; case-insensitive.
func Match(patterns []string, name string) uint64 {
	var slots uint64
	for i, p := range patterns {
		if i >= 64 {
			break
		}
		if pat, err := v1alpha1.ParseNamePattern(p); err == nil && pat.Matches(name) {
			slots |= 1 << i // a slot without a pattern ("") parses to nothing
		}
	}
	return slots
}
