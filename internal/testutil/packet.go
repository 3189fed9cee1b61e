package testutil

import (
	"encoding/binary"
	"net/netip"
)

// Protocol numbers used by the packet builder.
const (
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoICMPv6   = 58
	ProtoSCTP     = 132
	ExtHopByHop   = 0
	ExtRouting    = 43
	ExtFragment   = 44
	ExtDestOpts   = 60
	TCPFin        = 0x01
	TCPSyn        = 0x02
	TCPRst        = 0x04
	TCPAck        = 0x10
	EthTypeIPv4   = 0x0800
	EthTypeIPv6   = 0x86dd
	EthTypeARP    = 0x0806
	ethHeaderSize = 14
)

// Fragment makes a packet one fragment of a datagram: Offset in bytes (a multiple of 8), More for MF / M.
type Fragment struct {
	ID     uint32
	Offset uint16
	More   bool
}

// Packet describes an Ethernet frame for BPF_PROG_TEST_RUN. Checksums are left zero: the datapath never reads
// them. Build frames that real stacks would not send (truncated, hostile) by slicing Bytes().
type Packet struct {
	Src, Dst     netip.Addr
	Proto        uint8
	SPort, DPort uint16
	TCPFlags     uint8
	ICMPType     uint8
	ICMPCode     uint8
	ICMPID       uint16
	HopLimit     uint8  // 64 when zero
	Payload      []byte // after the L4 header
	Fragment     *Fragment
	IPv4Options  []byte  // a multiple of 4 bytes
	ExtHeaders   []uint8 // IPv6 extension headers (8 bytes each) before the fragment header and L4
	Quote        []byte  // for ICMP errors: the quoted packet (from its IP header on)
	NoL4         bool    // a non-first fragment: Payload only, no L4 header
}

// Bytes is the whole Ethernet frame.
func (p Packet) Bytes() []byte {
	l3 := p.L3()
	frame := make([]byte, ethHeaderSize, ethHeaderSize+len(l3))
	copy(frame[0:6], []byte{0x02, 0, 0, 0, 0, 0x01})
	copy(frame[6:12], []byte{0x02, 0, 0, 0, 0, 0x02})
	if p.Src.Is4() {
		binary.BigEndian.PutUint16(frame[12:], EthTypeIPv4)
	} else {
		binary.BigEndian.PutUint16(frame[12:], EthTypeIPv6)
	}
	return append(frame, l3...)
}

// L4 is the transport header and payload.
func (p Packet) L4() []byte {
	if p.NoL4 {
		return append([]byte(nil), p.Payload...)
	}
	var h []byte
	switch p.Proto {
	case ProtoTCP:
		h = make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.SPort)
		binary.BigEndian.PutUint16(h[2:], p.DPort)
		h[12] = 5 << 4
		h[13] = p.TCPFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
	case ProtoUDP:
		h = make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.SPort)
		binary.BigEndian.PutUint16(h[2:], p.DPort)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(p.Payload)))
	case ProtoSCTP:
		h = make([]byte, 12)
		binary.BigEndian.PutUint16(h[0:], p.SPort)
		binary.BigEndian.PutUint16(h[2:], p.DPort)
	case ProtoICMP, ProtoICMPv6:
		h = make([]byte, 8)
		h[0] = p.ICMPType
		h[1] = p.ICMPCode
		binary.BigEndian.PutUint16(h[4:], p.ICMPID)
		h = append(h, p.Quote...)
	}
	return append(h, p.Payload...)
}

// L3 is the IP datagram (or fragment).
func (p Packet) L3() []byte {
	l4 := p.L4()
	hop := p.HopLimit
	if hop == 0 {
		hop = 64
	}
	if p.Src.Is4() {
		ihl := 20 + len(p.IPv4Options)
		h := make([]byte, ihl, ihl+len(l4))
		h[0] = 0x40 | uint8(ihl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(ihl+len(l4)))
		if f := p.Fragment; f != nil {
			binary.BigEndian.PutUint16(h[4:], uint16(f.ID))
			fo := f.Offset / 8
			if f.More {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(h[6:], fo)
		}
		h[8] = hop
		h[9] = p.Proto
		s, d := p.Src.As4(), p.Dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		copy(h[20:], p.IPv4Options)
		return append(h, l4...)
	}
	// IPv6: fixed header, extension headers, fragment header, L4.
	next := []uint8{}
	next = append(next, p.ExtHeaders...)
	if p.Fragment != nil {
		next = append(next, ExtFragment)
	}
	var ext []byte
	for i, t := range next {
		nh := p.Proto
		if i+1 < len(next) {
			nh = next[i+1]
		}
		e := make([]byte, 8)
		e[0] = nh
		if t == ExtFragment {
			fo := p.Fragment.Offset &^ 7
			if p.Fragment.More {
				fo |= 1
			}
			binary.BigEndian.PutUint16(e[2:], fo)
			binary.BigEndian.PutUint32(e[4:], p.Fragment.ID)
		} else if t == ExtHopByHop || t == ExtDestOpts {
			e[2] = 1 // PadN option filling the header
			e[3] = 4
		}
		ext = append(ext, e...)
	}
	first := p.Proto
	if len(next) > 0 {
		first = next[0]
	}
	h := make([]byte, 40, 40+len(ext)+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = first
	h[7] = hop
	s, d := p.Src.As16(), p.Dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	h = append(h, ext...)
	return append(h, l4...)
}

// ARP is an ARP request frame.
func ARP() []byte {
	frame := make([]byte, ethHeaderSize+28)
	for i := 0; i < 6; i++ {
		frame[i] = 0xff
	}
	binary.BigEndian.PutUint16(frame[12:], EthTypeARP)
	binary.BigEndian.PutUint16(frame[14:], 1)      // Ethernet
	binary.BigEndian.PutUint16(frame[16:], 0x0800) // IPv4
	frame[18], frame[19] = 6, 4
	binary.BigEndian.PutUint16(frame[20:], 1) // request
	return frame
}
