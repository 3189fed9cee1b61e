package testutil

import (
	"encoding/binary"
	"net"
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
	IPv4Options  []byte           // a multiple of 4 bytes
	ExtHeaders   []uint8          // IPv6 extension headers (8 bytes each) before the fragment header and L4
	Quote        []byte           // for ICMP errors: the quoted packet (from its IP header on)
	NoL4         bool             // a non-first fragment: Payload only, no L4 header
	Seq, Ack     uint32           // TCP sequence and acknowledgement numbers
	SrcMAC       net.HardwareAddr // the Ethernet source; 02:00:00:00:00:02 when nil
	DstMAC       net.HardwareAddr // the Ethernet destination; 02:00:00:00:00:01 when nil
}

// DefaultSrcMAC is the Ethernet source of a Packet that names none.
var DefaultSrcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}

// Bytes is the whole Ethernet frame.
func (p Packet) Bytes() []byte {
	l3 := p.L3()
	frame := make([]byte, ethHeaderSize, ethHeaderSize+len(l3))
	copy(frame[0:6], []byte{0x02, 0, 0, 0, 0, 0x01})
	copy(frame[6:12], DefaultSrcMAC)
	if p.DstMAC != nil {
		copy(frame[0:6], p.DstMAC)
	}
	if p.SrcMAC != nil {
		copy(frame[6:12], p.SrcMAC)
	}
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
		binary.BigEndian.PutUint32(h[4:], p.Seq)
		binary.BigEndian.PutUint32(h[8:], p.Ack)
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

// ARPMessage is an Ethernet/IPv4 ARP frame: op 1 (request) or 2 (reply), the Ethernet source is the sender's
// hardware address.
func ARPMessage(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	frame := ARP()
	binary.BigEndian.PutUint16(frame[20:], op)
	copy(frame[6:12], sha)
	copy(frame[22:28], sha)
	s, t := spa.As4(), tpa.As4()
	copy(frame[28:32], s[:])
	copy(frame[32:38], tha)
	copy(frame[38:42], t[:])
	return frame
}

// NDOption is a neighbour discovery option of 8 bytes: a link-layer address (types 1 and 2) or a nonce (14).
func NDOption(typ uint8, data []byte) []byte {
	o := make([]byte, 8)
	o[0], o[1] = typ, 1
	copy(o[2:], data)
	return o
}

// NeighborMessage is an ND message with hop limit 255: NS (135) or NA (136) with a target, or RS (133) when
// target is invalid; the options follow the fixed part. Payload, if any, comes after the options.
func NeighborMessage(typ uint8, src, dst, target netip.Addr, options ...[]byte) Packet {
	var body []byte
	if typ != 133 {
		body = make([]byte, 4) // reserved (flags of an NA)
		if typ == 136 {
			body[0] = 0x60 // solicited, override
		}
		t := target.As16()
		body = append(body, t[:]...)
	}
	// the builder's ICMP header carries 4 bytes after the type and code; the first 4 of body go there
	var rest []byte
	id := uint16(0)
	if len(body) >= 4 {
		id = binary.BigEndian.Uint16(body[0:2])
		rest = body[4:]
	}
	for _, o := range options {
		rest = append(rest, o...)
	}
	return Packet{Src: src, Dst: dst, Proto: ProtoICMPv6, ICMPType: typ, ICMPID: id, HopLimit: 255, Payload: rest}
}

// SolicitedNode is the solicited-node multicast group of an IPv6 address.
func SolicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	g := [16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
	return netip.AddrFrom16(g)
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
