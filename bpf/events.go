package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Flow is one datapath event, decoded: what happened to which packet of which endpoint, and why.
type Flow struct {
	Time           time.Time
	Ifindex        uint32
	Identity       uint32
	RemoteIdentity uint32
	RemoteClass    Class
	RuleID         uint32
	Direction      Direction
	Verdict        Verdict
	Reason         Reason
	Protocol       uint8
	Src, Dst       netip.Addr
	SrcPort        uint16
	DstPort        uint16
}

// Remote is the far end of the flow: the destination of egress, the source of ingress.
func (f *Flow) Remote() netip.Addr {
	if f.Direction == Egress {
		return f.Dst
	}
	return f.Src
}

// EventReader reads flow events from the datapath's ring buffer.
type EventReader struct {
	rd *ringbuf.Reader
	// bootOffset turns the datapath's monotonic clock into wall-clock time.
	bootOffset time.Duration
}

// NewEventReader starts reading the ring buffer; Close stops it.
func (dp *Datapath) NewEventReader() (*EventReader, error) {
	rd, offset, err := openRing(dp.maps.Events, "the event ring buffer")
	if err != nil {
		return nil, err
	}
	return &EventReader{rd: rd, bootOffset: offset}, nil
}

// openRing opens a reader of a ring buffer, with the offset that turns the datapath's monotonic clock into
// wall-clock time.
func openRing(m *ebpf.Map, what string) (*ringbuf.Reader, time.Duration, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", what, err)
	}
	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		rd.Close()
		return nil, 0, fmt.Errorf("read the monotonic clock: %w", err)
	}
	return rd, time.Duration(time.Now().UnixNano() - mono.Nano()), nil
}

// SetDeadline makes Read give up at t (with an error wrapping os.ErrDeadlineExceeded).
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read waits for the next event and decodes it.
func (r *EventReader) Read() (Flow, error) {
	ev, err := r.ReadEvent()
	if err != nil {
		return Flow{}, err
	}
	return r.flow(&ev), nil
}

// ReadEvent waits for the next event and returns it as the datapath wrote it.
func (r *EventReader) ReadEvent() (Event, error) {
	var ev Event
	rec, err := r.rd.Read()
	if err != nil {
		return ev, err
	}
	if _, err := binary.Decode(rec.RawSample, binary.LittleEndian, &ev); err != nil {
		return ev, fmt.Errorf("decode a %d-byte event: %w", len(rec.RawSample), err)
	}
	return ev, nil
}

func (r *EventReader) flow(ev *Event) Flow {
	return Flow{
		Time:           time.Unix(0, int64(ev.TimeNs)+int64(r.bootOffset)),
		Ifindex:        ev.Ifindex,
		Identity:       ev.Identity,
		RemoteIdentity: ev.RemoteIdentity,
		RemoteClass:    Class(ev.RemoteClass),
		RuleID:         ev.RuleId,
		Direction:      Direction(ev.Direction),
		Verdict:        Verdict(ev.Verdict),
		Reason:         Reason(ev.Reason),
		Protocol:       ev.Protocol,
		Src:            AddrFrom16(ev.Family, ev.Saddr),
		Dst:            AddrFrom16(ev.Family, ev.Daddr),
		SrcPort:        ev.Sport,
		DstPort:        ev.Dport,
	}
}

// Pending is how many bytes of events wait in the ring buffer.
func (r *EventReader) Pending() int { return r.rd.AvailableBytes() }

// Close stops reading; a Read in progress returns.
func (r *EventReader) Close() error { return r.rd.Close() }
