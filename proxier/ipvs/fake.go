package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// kernelSchedulers are the scheduler modules the kernel knows.
var kernelSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// Fake is an in-memory IPVS that behaves like the kernel's netlink API:
// adding what exists fails with EEXIST, changing or deleting what does not
// exist fails with ENOENT, unknown schedulers are refused. Deleting a
// virtual server deletes its real servers. It records every change in Ops.
type Fake struct {
	mu       sync.Mutex
	services map[VSKey]*fakeService

	// Ops lists every successful change, e.g. "add-service TCP/198.19.0.10:80 rr".
	Ops []string
	// Fail, when set, is consulted before each change ("add-service",
	// "update-service", "delete-service", "add-dest", "update-dest",
	// "delete-dest"); a non-nil result fails it without changing state.
	Fail func(op string, vs VSKey) error
}

type fakeService struct {
	vs    VirtualServer
	dests []RealServer // in insertion order, like the kernel's list
}

var _ Interface = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{services: map[VSKey]*fakeService{}} }

func (f *Fake) check(op string, k VSKey) error {
	if f.Fail != nil {
		if err := f.Fail(op, k); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fake) record(format string, a ...any) { f.Ops = append(f.Ops, fmt.Sprintf(format, a...)) }

// ResetOps forgets the recorded operations.
func (f *Fake) ResetOps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops = nil
}

// GetServices implements Interface, sorted by key.
func (f *Fake) GetServices() ([]VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]VirtualServer, 0, len(f.services))
	for _, s := range f.services {
		out = append(out, s.vs)
	}
	sort.Slice(out, func(i, j int) bool { return lessKey(out[i].Key(), out[j].Key()) })
	return out, nil
}

func lessKey(a, b VSKey) bool {
	if c := a.Address.Compare(b.Address); c != 0 {
		return c < 0
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	return a.Protocol < b.Protocol
}

func validVS(vs VirtualServer) error {
	if !vs.Address.Is4() {
		return fmt.Errorf("fake ipvs: %s is not an IPv4 address: %w", vs.Address, syscall.EAFNOSUPPORT)
	}
	if !slices.Contains(kernelSchedulers, vs.Scheduler) {
		return fmt.Errorf("fake ipvs: scheduler %q not found: %w", vs.Scheduler, syscall.ENOENT)
	}
	switch vs.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		return fmt.Errorf("fake ipvs: protocol %d: %w", vs.Protocol, syscall.EPROTONOSUPPORT)
	}
	return nil
}

// NewService implements Interface.
func (f *Fake) NewService(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("add-service", vs.Key()); err != nil {
		return err
	}
	if err := validVS(vs); err != nil {
		return err
	}
	if _, ok := f.services[vs.Key()]; ok {
		return fmt.Errorf("fake ipvs: service %s: %w", vs.Key(), syscall.EEXIST)
	}
	if !vs.Persistent {
		vs.Timeout = 0
	}
	f.services[vs.Key()] = &fakeService{vs: vs}
	f.record("add-service %s", vs)
	return nil
}

// UpdateService implements Interface.
func (f *Fake) UpdateService(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("update-service", vs.Key()); err != nil {
		return err
	}
	if err := validVS(vs); err != nil {
		return err
	}
	s, ok := f.services[vs.Key()]
	if !ok {
		return fmt.Errorf("fake ipvs: service %s: %w", vs.Key(), syscall.ENOENT)
	}
	if !vs.Persistent {
		vs.Timeout = 0
	}
	s.vs = vs
	f.record("update-service %s", vs)
	return nil
}

// DeleteService implements Interface.
func (f *Fake) DeleteService(k VSKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("delete-service", k); err != nil {
		return err
	}
	if _, ok := f.services[k]; !ok {
		return fmt.Errorf("fake ipvs: service %s: %w", k, syscall.ENOENT)
	}
	delete(f.services, k)
	f.record("delete-service %s", k)
	return nil
}

// GetDestinations implements Interface.
func (f *Fake) GetDestinations(k VSKey) ([]RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return nil, fmt.Errorf("fake ipvs: service %s: %w", k, syscall.ENOENT)
	}
	return slices.Clone(s.dests), nil
}

func (s *fakeService) find(ap netip.AddrPort) int {
	for i, d := range s.dests {
		if d.AddrPort() == ap {
			return i
		}
	}
	return -1
}

func (f *Fake) destOp(op string, k VSKey, ap netip.AddrPort) (*fakeService, int, error) {
	if err := f.check(op, k); err != nil {
		return nil, 0, err
	}
	s, ok := f.services[k]
	if !ok {
		return nil, 0, fmt.Errorf("fake ipvs: service %s: %w", k, syscall.ESRCH)
	}
	return s, s.find(ap), nil
}

// NewDestination implements Interface.
func (f *Fake) NewDestination(k VSKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, i, err := f.destOp("add-dest", k, rs.AddrPort())
	if err != nil {
		return err
	}
	if i >= 0 {
		return fmt.Errorf("fake ipvs: destination %s of %s: %w", rs.AddrPort(), k, syscall.EEXIST)
	}
	if rs.Weight < 0 {
		return fmt.Errorf("fake ipvs: weight %d: %w", rs.Weight, syscall.ERANGE)
	}
	if !rs.Address.Is4() {
		return fmt.Errorf("fake ipvs: destination %s: %w", rs.Address, syscall.EINVAL)
	}
	rs.ActiveConnections, rs.InactiveConnections = 0, 0
	s.dests = append(s.dests, rs)
	f.record("add-dest %s %s", k, rs)
	return nil
}

// UpdateDestination implements Interface. Connection counts are kept.
func (f *Fake) UpdateDestination(k VSKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, i, err := f.destOp("update-dest", k, rs.AddrPort())
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("fake ipvs: destination %s of %s: %w", rs.AddrPort(), k, syscall.ENOENT)
	}
	if rs.Weight < 0 {
		return fmt.Errorf("fake ipvs: weight %d: %w", rs.Weight, syscall.ERANGE)
	}
	s.dests[i].Weight = rs.Weight
	f.record("update-dest %s %s", k, s.dests[i])
	return nil
}

// DeleteDestination implements Interface.
func (f *Fake) DeleteDestination(k VSKey, ap netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, i, err := f.destOp("delete-dest", k, ap)
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("fake ipvs: destination %s of %s: %w", ap, k, syscall.ENOENT)
	}
	s.dests = slices.Delete(s.dests, i, i+1)
	f.record("delete-dest %s %s", k, ap)
	return nil
}

// SetConnections sets the connection counts the kernel would report for a
// real server (traffic the fake cannot generate). It is not an Op.
func (f *Fake) SetConnections(k VSKey, ap netip.AddrPort, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return fmt.Errorf("fake ipvs: service %s: %w", k, syscall.ENOENT)
	}
	i := s.find(ap)
	if i < 0 {
		return fmt.Errorf("fake ipvs: destination %s of %s: %w", ap, k, syscall.ENOENT)
	}
	s.dests[i].ActiveConnections, s.dests[i].InactiveConnections = active, inactive
	return nil
}

// Dump renders the state like `ipvsadm -Ln` (sorted), for golden text and
// failure messages:
//
//	TCP 198.19.0.10:80 rr
//	  -> 198.18.64.10:8080 Masq 1 0 0
func (f *Fake) Dump() string {
	svcs, _ := f.GetServices()
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, vs := range svcs {
		fmt.Fprintf(&b, "%s %s %s", protocolName(vs.Protocol), netip.AddrPortFrom(vs.Address, vs.Port), vs.Scheduler)
		if vs.Persistent {
			fmt.Fprintf(&b, " persistent %d", vs.Timeout)
		}
		b.WriteByte('\n')
		dests := slices.Clone(f.services[vs.Key()].dests)
		sort.Slice(dests, func(i, j int) bool { return dests[i].AddrPort().Compare(dests[j].AddrPort()) < 0 })
		for _, d := range dests {
			fmt.Fprintf(&b, "  -> %s Masq %d %d %d\n", d.AddrPort(), d.Weight, d.ActiveConnections, d.InactiveConnections)
		}
	}
	return b.String()
}
