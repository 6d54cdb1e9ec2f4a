package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	v1 "k8s.io/api/core/v1"
)

// Protocol numbers of the IPVS netlink API.
const (
	ProtoTCP  uint16 = syscall.IPPROTO_TCP
	ProtoUDP  uint16 = syscall.IPPROTO_UDP
	ProtoSCTP uint16 = 132 // IPPROTO_SCTP
)

// protocolNumber maps a Service protocol to its IP protocol number.
func protocolNumber(p v1.Protocol) (uint16, error) {
	switch p {
	case v1.ProtocolTCP, "":
		return ProtoTCP, nil
	case v1.ProtocolUDP:
		return ProtoUDP, nil
	case v1.ProtocolSCTP:
		return ProtoSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q is not supported by IPVS", p)
}

func protocolName(n uint16) string {
	switch n {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", n)
}

// VirtualServer is one IPVS service: address, protocol and port, and how it
// schedules. Firewall-mark services are not used by this mode.
type VirtualServer struct {
	Address   netip.Addr
	Protocol  uint16 // ProtoTCP, ProtoUDP or ProtoSCTP
	Port      uint16
	Scheduler string
	// Persistent sends a client to the same real server for Timeout
	// seconds (ClientIP session affinity).
	Persistent bool
	Timeout    uint32
}

// VSKey identifies a virtual server in the kernel.
type VSKey struct {
	Address  netip.Addr
	Protocol uint16
	Port     uint16
}

// Key returns the identity of vs.
func (vs VirtualServer) Key() VSKey {
	return VSKey{Address: vs.Address, Protocol: vs.Protocol, Port: vs.Port}
}

// String renders "TCP/198.19.0.10:80", the way ipvsadm lists services.
func (k VSKey) String() string {
	return protocolName(k.Protocol) + "/" + netip.AddrPortFrom(k.Address, k.Port).String()
}

// String renders the key plus scheduling settings.
func (vs VirtualServer) String() string {
	s := vs.Key().String() + " " + vs.Scheduler
	if vs.Persistent {
		s += fmt.Sprintf(" persistent %d", vs.Timeout)
	}
	return s
}

// sameSettings reports whether a and b schedule the same way.
func (vs VirtualServer) sameSettings(o VirtualServer) bool {
	return vs.Scheduler == o.Scheduler && vs.Persistent == o.Persistent && (!vs.Persistent || vs.Timeout == o.Timeout)
}

// RealServer is one destination of a virtual server. This mode always
// forwards by masquerading (NAT).
type RealServer struct {
	Address netip.Addr
	Port    uint16
	Weight  int
	// Connection counts as the kernel reports them (read only).
	ActiveConnections   int
	InactiveConnections int
}

// AddrPort returns the real server's address and port.
func (rs RealServer) AddrPort() netip.AddrPort { return netip.AddrPortFrom(rs.Address, rs.Port) }

func (rs RealServer) String() string {
	return fmt.Sprintf("%s weight %d", rs.AddrPort(), rs.Weight)
}

// Interface is what the mode needs from IPVS. Kernel is the real one (over
// netlink, via github.com/moby/ipvs); Fake models kernel state in memory.
// Virtual servers are identified by Key() and real servers by AddrPort().
type Interface interface {
	GetServices() ([]VirtualServer, error)
	NewService(vs VirtualServer) error
	UpdateService(vs VirtualServer) error
	DeleteService(vs VSKey) error
	GetDestinations(vs VSKey) ([]RealServer, error)
	NewDestination(vs VSKey, rs RealServer) error
	UpdateDestination(vs VSKey, rs RealServer) error
	DeleteDestination(vs VSKey, rs netip.AddrPort) error
}

// IPVS service flags (include/uapi/linux/ip_vs.h).
const (
	flagPersistent = 0x0001
	flagHashed     = 0x0002 // set by the kernel on every listed service
	ipv4Netmask    = 0xffffffff
)

// Kernel programs IPVS in the network namespace it was created in.
type Kernel struct {
	h *mobyipvs.Handle
}

var _ Interface = (*Kernel)(nil)

// ErrNoIPVS means the kernel of the current network namespace has no IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS (no /proc/net/ip_vs): load the ip_vs module (modprobe ip_vs), " +
	"or run in the proxymodes UML lab, whose kernel has it")

// HasIPVS reports whether the calling thread's network namespace has IPVS.
// /proc/thread-self is used because /proc/net follows the main thread,
// which may sit in another namespace.
func HasIPVS() bool {
	_, err := os.Stat("/proc/thread-self/net/ip_vs")
	return err == nil
}

// NewKernel opens an IPVS netlink handle in the calling thread's network
// namespace. The handle keeps using that namespace afterwards.
func NewKernel() (*Kernel, error) {
	if !HasIPVS() {
		return nil, ErrNoIPVS
	}
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("opening an IPVS netlink handle: %w", err)
	}
	// moby/ipvs only logs when the generic netlink family is missing;
	// probe once so the caller gets an error instead.
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, fmt.Errorf("listing IPVS services: %w (is ip_vs loaded?)", err)
	}
	return &Kernel{h: h}, nil
}

// Close releases the netlink socket.
func (k *Kernel) Close() { k.h.Close() }

func toMobyService(vs VirtualServer) *mobyipvs.Service {
	s := &mobyipvs.Service{
		Address:       net.IP(vs.Address.AsSlice()),
		Protocol:      vs.Protocol,
		Port:          vs.Port,
		SchedName:     vs.Scheduler,
		AddressFamily: syscall.AF_INET,
		Netmask:       ipv4Netmask,
	}
	if vs.Persistent {
		s.Flags = flagPersistent
		s.Timeout = vs.Timeout
	}
	return s
}

func keyService(k VSKey) *mobyipvs.Service {
	return &mobyipvs.Service{
		Address: net.IP(k.Address.AsSlice()), Protocol: k.Protocol, Port: k.Port,
		AddressFamily: syscall.AF_INET, Netmask: ipv4Netmask,
	}
}

func toMobyDestination(rs RealServer) *mobyipvs.Destination {
	return &mobyipvs.Destination{
		Address:         net.IP(rs.Address.AsSlice()),
		Port:            rs.Port,
		Weight:          rs.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
		AddressFamily:   syscall.AF_INET,
	}
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// GetServices implements Interface. Firewall-mark and IPv6 services are
// not listed: this mode never creates them, so it never touches them.
func (k *Kernel) GetServices() ([]VirtualServer, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, err
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if s.FWMark != 0 || s.AddressFamily != syscall.AF_INET {
			continue
		}
		flags := s.Flags &^ flagHashed
		vs := VirtualServer{
			Address: addrOf(s.Address), Protocol: s.Protocol, Port: s.Port,
			Scheduler: s.SchedName, Persistent: flags&flagPersistent != 0,
		}
		if vs.Persistent {
			vs.Timeout = s.Timeout
		}
		out = append(out, vs)
	}
	return out, nil
}

// NewService implements Interface.
func (k *Kernel) NewService(vs VirtualServer) error { return k.h.NewService(toMobyService(vs)) }

// UpdateService implements Interface.
func (k *Kernel) UpdateService(vs VirtualServer) error { return k.h.UpdateService(toMobyService(vs)) }

// DeleteService implements Interface.
func (k *Kernel) DeleteService(key VSKey) error { return k.h.DelService(keyService(key)) }

// GetDestinations implements Interface.
func (k *Kernel) GetDestinations(key VSKey) ([]RealServer, error) {
	ds, err := k.h.GetDestinations(keyService(key))
	if err != nil {
		return nil, err
	}
	out := make([]RealServer, 0, len(ds))
	for _, d := range ds {
		out = append(out, RealServer{
			Address: addrOf(d.Address), Port: d.Port, Weight: d.Weight,
			ActiveConnections: d.ActiveConnections, InactiveConnections: d.InactiveConnections,
		})
	}
	return out, nil
}

// NewDestination implements Interface.
func (k *Kernel) NewDestination(key VSKey, rs RealServer) error {
	return k.h.NewDestination(keyService(key), toMobyDestination(rs))
}

// UpdateDestination implements Interface.
func (k *Kernel) UpdateDestination(key VSKey, rs RealServer) error {
	return k.h.UpdateDestination(keyService(key), toMobyDestination(rs))
}

// DeleteDestination implements Interface.
func (k *Kernel) DeleteDestination(key VSKey, ap netip.AddrPort) error {
	return k.h.DelDestination(keyService(key), toMobyDestination(RealServer{Address: ap.Addr(), Port: ap.Port()}))
}
