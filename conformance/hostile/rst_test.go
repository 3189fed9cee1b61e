package hostile

import (
	"bytes"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/moatfw/moat/internal/simnode"
)

// serverNext is the server's next sequence number on the stream after it sent line: read from the segment that
// carried the line, captured as it left the Internet namespace.
func serverNext(t *testing.T, at *capture, s *stream, line string) uint32 {
	t.Helper()
	var next uint32
	_, ok := at.until(func(f []byte) bool {
		p := decode(f)
		tcp, isTCP := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !isTCP || uint16(tcp.SrcPort) != s.serverAddr.Port() || uint16(tcp.DstPort) != s.podPort || !bytes.Equal(tcp.Payload, []byte(line+"\n")) {
			return false
		}
		next = tcp.Seq + uint32(len(tcp.Payload))
		return true
	}, 3*time.Second)
	if !ok {
		t.Fatalf("the segment carrying %q never left the server", line)
	}
	return next
}

// blindRST: a host on the Internet that knows a connection's addresses and ports, but not its sequence numbers,
// sends a RST for it into a pod whose namespace denies world ingress. The pod's stack ignores a RST outside its
// window; Moat must too, and keep the connection's conntrack entry, or the server's next packet would meet the
// ingress Deny and the connection would hang. Honestly said: without Moat there is no entry to lose, so the
// baseline run shows only that the injected RSTs are well made: the one with the exact sequence number ends
// the connection on both nodes, the out-of-window one ends it on neither.
func blindRST(t *testing.T, e *env) {
	e.apply(t, "rst.yaml", "")
	a, bystander := e.pods["rst-a"], e.pods["neigh-v"]
	inet, hostUplink, bl := e.internet(t), linkIn(t, e.node.Host, simnode.Uplink), eth0(t, bystander)
	for _, c := range []struct {
		name   string
		offset uint32 // added to the server's next sequence number
		ends   bool
	}{
		{"out of window", 1 << 30, false},
		{"exact sequence number", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := listen(t, inet, true)
			s := openStream(t, e, a, 7000)
			if err := s.exchange("before", 3*time.Second); err != nil {
				t.Fatalf("the stream does not work to begin with: %v", err)
			}
			seq := serverNext(t, out, s, "before") + c.offset
			l3 := ipv4(s.serverAddr.Addr(), a.Addr, layers.IPProtocolTCP)
			rst := &layers.TCP{SrcPort: layers.TCPPort(s.serverAddr.Port()), DstPort: layers.TCPPort(s.podPort), Seq: seq, RST: true, Window: 0}
			_ = rst.SetNetworkLayerForChecksum(l3)
			frame := build(t, eth(inet.MAC, hostUplink.MAC, layers.EthernetTypeIPv4), l3, rst)
			// the marker goes from the Internet to another pod, allowed, after the RST: once it arrives, the RST
			// has been through the node, Moat and the pod's stack (one CPU's backlog, in order)
			m := tag("marker")
			marker := udpFrame(t, inet.MAC, hostUplink.MAC, netip.AddrPortFrom(simnode.WorldAddr(0), 9), netip.AddrPortFrom(bystander.Addr, 9), m)
			at := listen(t, bl, false)
			send(t, inet, frame, marker)
			if _, ok := at.until(has(m), 5*time.Second); !ok {
				t.Fatal("the marker never reached the other pod")
			}
			err := s.exchange("after", 3*time.Second)
			switch {
			case c.ends && err == nil:
				t.Errorf("the RST with the exact sequence number did not end the connection: the injected RST is not well made")
			case c.ends && !errors.Is(err, syscall.ECONNRESET):
				t.Errorf("after the exact RST the connection failed otherwise than by a reset: %v", err)
			case !c.ends && err != nil:
				t.Errorf("after an out-of-window RST the connection broke: %v", err)
			}
		})
	}
}
