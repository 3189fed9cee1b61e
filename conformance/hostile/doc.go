// Package hostile is the hostile suite: frames crafted with gopacket and sent from inside pod network
// namespaces of a simulated node (internal/simnode) through AF_PACKET sockets, checked at their destination. Each
// case runs on a node without Moat in the chain, where the attack must get through (else it is no attack), and on
// a node with Moat, where it must be stopped. docs/hostile.md lists the cases.
//
// The suite lives in its tests; it needs root and a kernel with bpffs, and skips otherwise.
package hostile
