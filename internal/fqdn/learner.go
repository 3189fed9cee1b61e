package fqdn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
)

// Learner reads the answers the datapath hands to the agent (what it cannot read in place), learns from them by
// the datapath's rules (ReadAnswer, the identity's patterns, min TTL and grace as the datapath applies them,
// making room at the identity's bound by removing its addresses that expire first) and re-injects a UDP answer
// into its pod: an AF_PACKET socket on the pod's host veth, with bpf.MarkDNSReinject as SO_MARK, which the
// datapath's to-pod program passes on to conntrack and policy without reading it again. Only host-side sockets set
// a mark (a veth clears it on what crosses from a pod's namespace), so no pod can make an answer skip the
// reading. A TCP segment is copied to the agent and passed by the datapath, so the Learner only learns from it
// (from a segment that holds its whole message); a connection the pod opened before that is retried by its TCP.
// With no Learner running, the datagrams handed over are lost (dropped by the datapath): the pod's stub asks
// again, and an allowed name is not reachable until an answer is learned.
type Learner struct {
	dp       *bpf.Datapath
	patterns func(identity uint32) []string
	rd       *bpf.DNSFallbackReader
	fd       int
	log      *logrus.Entry
}

// NewLearner starts reading the datapath's fallback ring; patterns gives an identity's fqdn patterns in slot
// order (policy.IdentityPolicy.SlotPatterns: "" for a slot without a pattern).
func NewLearner(dp *bpf.Datapath, patterns func(identity uint32) []string, log *logrus.Entry) (*Learner, error) {
	rd, err := dp.NewDNSFallbackReader()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		rd.Close()
		return nil, fmt.Errorf("open the socket that re-injects answers: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(bpf.MarkDNSReinject)); err != nil {
		unix.Close(fd)
		rd.Close()
		return nil, fmt.Errorf("mark the socket that re-injects answers: %w", err)
	}
	if log == nil {
		quiet := logrus.New()
		quiet.SetOutput(io.Discard)
		log = logrus.NewEntry(quiet)
	}
	return &Learner{dp: dp, patterns: patterns, rd: rd, fd: fd, log: log}, nil
}

// Close stops the Learner (Run returns).
func (l *Learner) Close() error {
	return errors.Join(l.rd.Close(), unix.Close(l.fd))
}

// Run handles answers until ctx ends (which closes the Learner's reader) or the Learner is closed.
func (l *Learner) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { l.rd.Close() }) // a Read that is waiting returns
	defer stop()
	for {
		rec, err := l.rd.Read()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
		if _, err := l.Handle(rec); err != nil {
			l.log.WithFields(logrus.Fields{"ifindex": rec.Ifindex, "identity": rec.Identity}).WithError(err).
				Warn("a DNS answer the datapath handed over could not be learned from or given back")
		}
	}
}

// Handle learns from one answer and re-injects it when it is a whole UDP datagram; it returns the addresses
// learned. A record without a frame asks for room: the identity's learned addresses that expire first go until it
// is under its bound.
func (l *Learner) Handle(rec bpf.DNSFallback) (int, error) {
	if len(rec.Frame) == 0 {
		// no answer: the datapath learned one past the identity's bound, and asks for room
		_, err := l.dp.TrimFQDN(rec.Identity)
		return 0, err
	}
	msg, udp, err := dnsPayload(rec.Frame)
	if err != nil {
		return 0, err
	}
	n, err := l.learn(rec.Identity, msg)
	if udp && int(rec.WireLen) == len(rec.Frame) {
		// the frame was copied where the sender's checksum may not be computed yet (a partial checksum on a
		// veth): it goes back with a whole one
		setUDPChecksum(rec.Frame)
		sa := &unix.SockaddrLinklayer{Ifindex: int(rec.Ifindex), Protocol: htons(binary.BigEndian.Uint16(rec.Frame[12:]))}
		if serr := unix.Sendto(l.fd, rec.Frame, 0, sa); serr != nil {
			err = errors.Join(err, fmt.Errorf("re-inject the answer on ifindex %d: %w", rec.Ifindex, serr))
		}
	}
	return n, err
}

func (l *Learner) learn(identity uint32, msg []byte) (int, error) {
	if msg == nil {
		return 0, nil
	}
	a, ok := ReadAnswer(msg)
	if !ok || a.TC || len(a.Addrs) == 0 {
		return 0, nil
	}
	slots := Match(l.patterns(identity), a.Question)
	if slots == 0 {
		return 0, nil
	}
	t, err := l.dp.DNSTiming()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, addr := range a.Addrs {
		if t.MaxPerIdentity != 0 {
			count, err := l.dp.FQDNCount(identity)
			if err != nil {
				return n, err
			}
			if count >= uint64(t.MaxPerIdentity) {
				if _, err := l.dp.MakeFQDNRoom(identity); err != nil {
					return n, err
				}
			}
		}
		if err := l.dp.LearnFQDN(identity, addr.Addr, slots, time.Duration(addr.TTL)*time.Second); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// dnsPayload finds the DNS message in an Ethernet frame from port 53: a UDP datagram's payload, or a TCP
// segment's message when the segment holds it whole after its two-byte length (nil otherwise).
func dnsPayload(frame []byte) (msg []byte, udp bool, err error) {
	if len(frame) < 14 {
		return nil, false, errors.New("a frame shorter than its Ethernet header")
	}
	var proto uint8
	var l4 []byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		ip := frame[14:]
		if len(ip) < 20 || int(ip[0]&0x0f)*4 < 20 || len(ip) < int(binary.BigEndian.Uint16(ip[2:])) {
			return nil, false, errors.New("an IPv4 header that does not fit")
		}
		total, ihl := int(binary.BigEndian.Uint16(ip[2:])), int(ip[0]&0x0f)*4
		if total < ihl {
			return nil, false, errors.New("an IPv4 header longer than its datagram")
		}
		proto, l4 = ip[9], ip[ihl:total]
	case 0x86dd:
		ip := frame[14:]
		if len(ip) < 40 || len(ip) < 40+int(binary.BigEndian.Uint16(ip[4:])) {
			return nil, false, errors.New("an IPv6 header that does not fit")
		}
		proto, l4 = ip[6], ip[40:40+int(binary.BigEndian.Uint16(ip[4:]))]
	default:
		return nil, false, errors.New("neither IPv4 nor IPv6")
	}
	switch proto {
	case unix.IPPROTO_UDP:
		if len(l4) < 8 {
			return nil, false, errors.New("a UDP header that does not fit")
		}
		return l4[8:], true, nil
	case unix.IPPROTO_TCP:
		if len(l4) < 20 || len(l4) < int(l4[12]>>4)*4+2 {
			return nil, false, errors.New("a TCP header that does not fit")
		}
		data := l4[int(l4[12]>>4)*4:]
		if int(binary.BigEndian.Uint16(data)) != len(data)-2 {
			return nil, false, nil // not the whole message: nothing to learn from this segment
		}
		return data[2:], false, nil
	}
	return nil, false, fmt.Errorf("protocol %d", proto)
}

// htons is the value whose bytes in memory are v in network order.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// setUDPChecksum writes the UDP checksum of an Ethernet frame holding an IPv4 or IPv6 UDP datagram (dnsPayload
// checked its headers).
func setUDPChecksum(frame []byte) {
	var addrs, udp []byte
	if binary.BigEndian.Uint16(frame[12:]) == 0x0800 {
		ip := frame[14:]
		ihl, total := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:]))
		addrs, udp = ip[12:20], ip[ihl:total]
	} else {
		ip := frame[14:]
		addrs, udp = ip[8:40], ip[40:40+int(binary.BigEndian.Uint16(ip[4:]))]
	}
	binary.BigEndian.PutUint16(udp[6:], 0)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(addrs)
	sum += unix.IPPROTO_UDP + uint32(len(udp))
	add(udp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}
