package bpf

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// DNSFallback is one answer the datapath handed to the agent (the dns_fallback ring): the frame as it reached the
// pod's host veth (its first DNSFallbackFrame bytes), the veth and the pod's identity.
type DNSFallback struct {
	Ifindex  uint32
	Identity uint32
	WireLen  uint32 // the whole frame's length; more than len(Frame) when it was cut
	Frame    []byte
}

// DNSFallbackReader reads the answers the datapath hands to the agent.
type DNSFallbackReader struct {
	rd *ringbuf.Reader
}

// NewDNSFallbackReader starts reading the dns_fallback ring; Close stops it. With no reader, the answers the
// datapath hands over are lost (a UDP answer is dropped either way: the stub asks again).
func (dp *Datapath) NewDNSFallbackReader() (*DNSFallbackReader, error) {
	rd, err := ringbuf.NewReader(dp.maps.DnsFallback)
	if err != nil {
		return nil, fmt.Errorf("open the DNS fallback ring: %w", err)
	}
	return &DNSFallbackReader{rd: rd}, nil
}

// SetDeadline makes Read give up at t.
func (r *DNSFallbackReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader (a blocked Read returns).
func (r *DNSFallbackReader) Close() error { return r.rd.Close() }

const fallbackHeader = 16 // ifindex, identity, len, wire_len

// Read waits for the next answer.
func (r *DNSFallbackReader) Read() (DNSFallback, error) {
	rec, err := r.rd.Read()
	if err != nil {
		return DNSFallback{}, err
	}
	raw := rec.RawSample
	if len(raw) < fallbackHeader {
		return DNSFallback{}, fmt.Errorf("a DNS fallback record of %d bytes", len(raw))
	}
	f := DNSFallback{Ifindex: binary.NativeEndian.Uint32(raw), Identity: binary.NativeEndian.Uint32(raw[4:]),
		WireLen: binary.NativeEndian.Uint32(raw[12:])}
	n := int(binary.NativeEndian.Uint32(raw[8:]))
	if n > len(raw)-fallbackHeader {
		return DNSFallback{}, fmt.Errorf("a DNS fallback record of %d bytes says %d", len(raw), n)
	}
	f.Frame = append([]byte(nil), raw[fallbackHeader:fallbackHeader+n]...)
	return f, nil
}
