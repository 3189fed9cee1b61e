package bpf_test

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/moatfw/moat/bpf"
)

// The map keys Go builds, byte for byte as moat.h lays them out: the kind, the fields in the order the trie
// compares them, ports, classes and identities big-endian. The layout is read back from the program's own BTF,
// so a change to a struct in moat.h that Go does not follow fails here.
func TestKeyEncoding(t *testing.T) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	offset := func(structName, member string) int {
		t.Helper()
		var s *btf.Struct
		if err := spec.Types.TypeByName(structName, &s); err != nil {
			t.Fatalf("%s in the datapath's BTF: %v", structName, err)
		}
		for _, m := range s.Members {
			if m.Name == member {
				return int(m.Offset.Bytes())
			}
		}
		t.Fatalf("%s has no member %s", structName, member)
		return 0
	}
	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	dataAt := func(k bpf.PolicyKey, structName, member string, n int) string {
		o := offset(structName, member)
		return hexOf(k.Data[o : o+n])
	}

	port := bpf.PortKey(bpf.Ingress, 6, 0x1f90, 32) // TCP 8080, every bit
	if port.Prefixlen != 48 || dataAt(port, "moat_policy_port", "kind", 1) != "02" ||
		dataAt(port, "moat_policy_port", "direction", 1) != "01" || dataAt(port, "moat_policy_port", "protocol", 1) != "06" ||
		dataAt(port, "moat_policy_port", "port", 2) != "1f90" {
		t.Errorf("port key %d %x", port.Prefixlen, port.Data)
	}
	if k := bpf.PortKey(bpf.Egress, 17, 0x8000, 17); k.Prefixlen != 33 || dataAt(k, "moat_policy_port", "port", 2) != "8000" {
		t.Errorf("port key of the upper half of UDP %d %x, want prefixlen 33 (kind to pad, one port bit)", k.Prefixlen, k.Data)
	}
	if k := bpf.PortKey(bpf.Egress, 0, 0, 8); k.Prefixlen != 16 || k.Data != [20]byte{2} {
		t.Errorf("root port key %d %x", k.Prefixlen, k.Data)
	}

	cidr := bpf.CIDRKey(0x0102, netip.MustParsePrefix("10.1.0.0/16"))
	if cidr.Prefixlen != 48 || dataAt(cidr, "moat_policy_cidr", "kind", 1) != "03" ||
		dataAt(cidr, "moat_policy_cidr", "family", 1) != "04" || dataAt(cidr, "moat_policy_cidr", "class", 2) != "0102" ||
		dataAt(cidr, "moat_policy_cidr", "addr", 4) != "0a010000" {
		t.Errorf("cidr key %d %x", cidr.Prefixlen, cidr.Data)
	}
	if k := cidr.WithClass(7); dataAt(k, "moat_policy_cidr", "class", 2) != "0007" {
		t.Errorf("cidr key with class 7: %x", k.Data)
	}

	peer := bpf.PeerKey(0x0102, 0x00aabbcc)
	if peer.Prefixlen != 64 || dataAt(peer, "moat_policy_peer", "kind", 1) != "04" ||
		dataAt(peer, "moat_policy_peer", "class", 2) != "0102" || dataAt(peer, "moat_policy_peer", "identity", 4) != "00aabbcc" {
		t.Errorf("peer key %d %x", peer.Prefixlen, peer.Data)
	}
	if k := peer.WithClass(9); dataAt(k, "moat_policy_peer", "class", 2) != "0009" {
		t.Errorf("peer key with class 9: %x", k.Data)
	}

	ct := bpf.NewCTKey(3, 6, netip.MustParseAddr("10.1.0.2"), 0x1234, netip.MustParseAddr("198.51.100.7"), 443)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&ct)), unsafe.Sizeof(ct))
	for _, f := range []struct {
		member, want string
	}{{"lport", "1234"}, {"rport", "01bb"}, {"laddr", "0a010002"}, {"raddr", "c6336407"}} {
		o := offset("moat_ct_key", f.member)
		if got := hexOf(raw[o : o+len(f.want)/2]); got != f.want {
			t.Errorf("conntrack key %s = %s, want %s", f.member, got, f.want)
		}
	}
	if ct.LocalPort() != 0x1234 || ct.RemotePort() != 443 {
		t.Errorf("conntrack key ports %d %d", ct.LocalPort(), ct.RemotePort())
	}

	hp := bpf.HostPort{Node: netip.MustParseAddr("10.0.0.1"), Protocol: 6, Port: 8080}.Key()
	hraw := unsafe.Slice((*byte)(unsafe.Pointer(&hp)), unsafe.Sizeof(hp))
	if o := offset("moat_hostport_key", "port"); !bytes.Equal(hraw[o:o+2], []byte{0x1f, 0x90}) {
		t.Errorf("hostport key port bytes %x", hraw[o:o+2])
	}
}
