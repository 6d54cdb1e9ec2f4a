package plane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/rules"
)

// AgentRole is the role a guest's one long-lived agent plays: it runs Host
// inside the guest and serves it to the lab over the guest's only link.
// Starting a process in a UML guest costs about a second, so the agent
// makes every namespace, link and probe connection itself.
const AgentRole = "lab-agent"

// AgentPort is where the agent listens on the guest's uplink address.
const AgentPort = 7070

// UplinkHost is the host-side (tap) address of guest i's uplink.
func UplinkHost(i int) netip.Prefix { return addrplan.GuestUplinkHost(i) }

// UplinkGuest is guest i's (vec0) address.
func UplinkGuest(i int) netip.Prefix { return addrplan.GuestUplinkGuest(i) }

// guestIndexEnv tells an agent which of the lab's guests it runs in, and
// so which uplink addresses are its own.
const guestIndexEnv = "PROXYMODES_GUEST"

// AgentEnv is the environment of the agent in guest i of a lab.
func AgentEnv(lab string, i int) []string {
	return append(agent.Env(lab, AgentRole), guestIndexEnv+"="+strconv.Itoa(i))
}

func init() { agent.Register(AgentRole, agentMain) }

func agentMain(args []string) int {
	i, err := strconv.Atoi(os.Getenv(guestIndexEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab agent: %s=%q: %v\n", guestIndexEnv, os.Getenv(guestIndexEnv), err)
		return 2
	}
	if err := serveAgent(i); err != nil {
		fmt.Fprintln(os.Stderr, "lab agent:", err)
		return 1
	}
	return 0
}

// serveAgent configures the guest's uplink and serves a Host plane until
// the lab asks it to stop.
func serveAgent(i int) error {
	// The guest kernel has legacy iptables only; the proxier, the pods'
	// fault rules and rule dumps all follow this.
	os.Setenv(rules.FlavourEnv, "legacy")
	err := netlab.WithHandle(netlab.HostNS, func(h *netlink.Handle) error {
		vec, err := h.LinkByName("vec0")
		if err != nil {
			return fmt.Errorf("no vec0 in the guest (was it started with a tap?): %w", err)
		}
		if err := h.AddrAdd(vec, &netlink.Addr{IPNet: &net.IPNet{IP: UplinkGuest(i).Addr().AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
			return err
		}
		return h.LinkSetUp(vec)
	})
	if err != nil {
		return err
	}
	// Nodes reach the API server through the guest's root namespace.
	api := netip.PrefixFrom(addrplan.APIServer(), 32)
	if err := netlab.Route(netlab.HostNS, api, UplinkHost(i).Addr(), ""); err != nil {
		return err
	}
	// This is the guest kernel's own setting, not the host's.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(UplinkGuest(i).Addr(), AgentPort).String())
	if err != nil {
		return err
	}
	host := NewHost()
	done := make(chan struct{})
	srv := &http.Server{Handler: agentHandler(host, done)}
	go srv.Serve(ln)
	fmt.Fprintln(os.Stderr, "lab agent: serving on", ln.Addr())
	<-done
	host.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	return nil
}

// wire types (errors cross the link as probe.WireErr).
type flowReq struct {
	ID      string         `json:"id,omitempty"`
	NS      string         `json:"ns,omitempty"`
	Proto   probe.Proto    `json:"proto,omitempty"`
	Dst     netip.AddrPort `json:"dst,omitempty"`
	Timeout time.Duration  `json:"timeout,omitempty"`
}

type faultReq struct {
	Pod   cluster.Pod   `json:"pod"`
	Fault cluster.Fault `json:"fault"`
}

type execReq struct {
	NS   string   `json:"ns"`
	Argv []string `json:"argv"`
}

type reply struct {
	Err     *probe.WireErr     `json:"err,omitempty"`
	Text    string             `json:"text,omitempty"`
	Results []probe.WireResult `json:"results,omitempty"`
}

func agentHandler(h *Host, done chan struct{}) http.Handler {
	mux := http.NewServeMux()
	handle := func(path string, fn func(ctx context.Context, body []byte) reply) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			json.NewEncoder(w).Encode(fn(r.Context(), body))
		})
	}
	decode := func(body []byte, v any) *probe.WireErr {
		if err := json.Unmarshal(body, v); err != nil {
			return probe.ToWire(fmt.Errorf("bad request: %w", err))
		}
		return nil
	}
	handle("/build", func(ctx context.Context, b []byte) reply {
		var t Topology
		if e := decode(b, &t); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.Build(ctx, t))}
	})
	handle("/pods/add", func(ctx context.Context, b []byte) reply {
		var s PodSlot
		if e := decode(b, &s); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.AddPod(ctx, s))}
	})
	handle("/pods/remove", func(ctx context.Context, b []byte) reply {
		var p cluster.Pod
		if e := decode(b, &p); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.RemovePod(ctx, p))}
	})
	handle("/pods/break", func(ctx context.Context, b []byte) reply {
		var f faultReq
		if e := decode(b, &f); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.Break(ctx, f.Pod, f.Fault))}
	})
	handle("/pods/restore", func(ctx context.Context, b []byte) reply {
		var f faultReq
		if e := decode(b, &f); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.Restore(ctx, f.Pod, f.Fault))}
	})
	handle("/proxiers/start", func(ctx context.Context, b []byte) reply {
		var s ProxierSpec
		if e := decode(b, &s); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.StartProxiers(ctx, s))}
	})
	handle("/proxiers/stop", func(ctx context.Context, b []byte) reply {
		var node string
		if e := decode(b, &node); e != nil {
			return reply{Err: e}
		}
		return reply{Err: probe.ToWire(h.StopProxier(ctx, node))}
	})
	handle("/proxiers/metrics", func(ctx context.Context, b []byte) reply {
		var node string
		if e := decode(b, &node); e != nil {
			return reply{Err: e}
		}
		text, err := h.ProxierMetrics(ctx, node)
		return reply{Text: text, Err: probe.ToWire(err)}
	})
	// Flows live in the agent between calls, so their sockets, source
	// ports and conntrack entries do.
	var flowsMu sync.Mutex
	flows := map[string]cluster.Flow{}
	nextFlow := 0
	handle("/flow/open", func(ctx context.Context, b []byte) reply {
		var f flowReq
		if e := decode(b, &f); e != nil {
			return reply{Err: e}
		}
		flow, err := h.OpenFlow(ctx, f.NS, f.Proto, f.Dst)
		if err != nil {
			return reply{Err: probe.ToWire(err)}
		}
		flowsMu.Lock()
		defer flowsMu.Unlock()
		nextFlow++
		id := strconv.Itoa(nextFlow)
		flows[id] = flow
		return reply{Text: id}
	})
	// withFlow serves a call on an open flow; remove forgets it first.
	withFlow := func(path string, remove bool, fn func(ctx context.Context, f flowReq, fl cluster.Flow) reply) {
		handle(path, func(ctx context.Context, b []byte) reply {
			var f flowReq
			if e := decode(b, &f); e != nil {
				return reply{Err: e}
			}
			flowsMu.Lock()
			fl, ok := flows[f.ID]
			if remove {
				delete(flows, f.ID)
			}
			flowsMu.Unlock()
			if !ok {
				return reply{Err: probe.ToWire(fmt.Errorf("no flow %q in the guest (closed?)", f.ID))}
			}
			return fn(ctx, f, fl)
		})
	}
	withFlow("/flow/exchange", false, func(ctx context.Context, f flowReq, fl cluster.Flow) reply {
		name, err := fl.Exchange(ctx, f.Timeout)
		return reply{Text: name, Err: probe.ToWire(err)}
	})
	withFlow("/flow/close", true, func(ctx context.Context, f flowReq, fl cluster.Flow) reply {
		return reply{Err: probe.ToWire(fl.Close())}
	})
	handle("/probe", func(ctx context.Context, b []byte) reply {
		var p probe.Request
		if e := decode(b, &p); e != nil {
			return reply{Err: e}
		}
		s := h.Probe(ctx, p.Target, p.N, p.Timeout)
		return reply{Results: probe.EncodeResults(s.Results)}
	})
	handle("/iptables", func(ctx context.Context, b []byte) reply {
		var ns string
		if e := decode(b, &ns); e != nil {
			return reply{Err: e}
		}
		text, err := h.IPTables(ctx, ns)
		return reply{Text: text, Err: probe.ToWire(err)}
	})
	handle("/exec", func(ctx context.Context, b []byte) reply {
		var x execReq
		if e := decode(b, &x); e != nil {
			return reply{Err: e}
		}
		text, err := h.Exec(ctx, x.NS, x.Argv)
		return reply{Text: text, Err: probe.ToWire(err)}
	})
	handle("/kernel", func(ctx context.Context, b []byte) reply { return reply{Text: h.Kernel()} })
	handle("/clock", func(ctx context.Context, b []byte) reply {
		return reply{Text: strconv.FormatInt(time.Now().UnixNano(), 10)}
	})
	handle("/shutdown", func(ctx context.Context, b []byte) reply {
		select {
		case <-done:
		default:
			close(done)
		}
		return reply{}
	})
	return mux
}

// Remote is a Plane served by an agent in a guest. Its HTTP connections
// are dialled from inside the lab namespace that holds the guest's link.
type Remote struct {
	client *http.Client
	base   string
}

// NewRemote talks to the agent of guest i, whose link lives in ns.
func NewRemote(ns string, i int) *Remote {
	tr := &http.Transport{DialContext: netlab.Dialer(ns, nil)}
	return &Remote{client: &http.Client{Transport: tr},
		base: "http://" + netip.AddrPortFrom(UplinkGuest(i).Addr(), AgentPort).String()}
}

func (r *Remote) call(ctx context.Context, path string, in any) (reply, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return reply{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+path, bytes.NewReader(b))
	if err != nil {
		return reply{}, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("lab agent %s: %w", path, err)
	}
	defer resp.Body.Close()
	var rep reply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return reply{}, fmt.Errorf("lab agent %s: %s: %w", path, resp.Status, err)
	}
	return rep, rep.Err.Err()
}

func (r *Remote) do(ctx context.Context, path string, in any) error {
	_, err := r.call(ctx, path, in)
	return err
}

// Ping succeeds once the agent answers.
func (r *Remote) Ping(ctx context.Context) error { return r.do(ctx, "/kernel", nil) }

func (r *Remote) Build(ctx context.Context, t Topology) error { return r.do(ctx, "/build", t) }
func (r *Remote) AddPod(ctx context.Context, s PodSlot) error { return r.do(ctx, "/pods/add", s) }
func (r *Remote) RemovePod(ctx context.Context, p cluster.Pod) error {
	return r.do(ctx, "/pods/remove", p)
}
func (r *Remote) Break(ctx context.Context, p cluster.Pod, f cluster.Fault) error {
	return r.do(ctx, "/pods/break", faultReq{p, f})
}
func (r *Remote) Restore(ctx context.Context, p cluster.Pod, f cluster.Fault) error {
	return r.do(ctx, "/pods/restore", faultReq{p, f})
}
func (r *Remote) StartProxiers(ctx context.Context, s ProxierSpec) error {
	return r.do(ctx, "/proxiers/start", s)
}
func (r *Remote) StopProxier(ctx context.Context, node string) error {
	return r.do(ctx, "/proxiers/stop", node)
}

func (r *Remote) ProxierMetrics(ctx context.Context, node string) (string, error) {
	rep, err := r.call(ctx, "/proxiers/metrics", node)
	return rep.Text, err
}

// Probe runs the probe in the guest; a broken link shows as errors on
// every connection.
func (r *Remote) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	s := probe.Summary{Target: t}
	rep, err := r.call(ctx, "/probe", probe.Request{Target: t, N: n, Timeout: timeout})
	if err != nil {
		for i := 0; i < n; i++ {
			s.Results = append(s.Results, probe.Result{Err: err})
		}
		return s
	}
	s.Results = probe.DecodeResults(rep.Results)
	return s
}

// OpenFlow opens the flow in the guest; the agent holds the socket.
func (r *Remote) OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error) {
	rep, err := r.call(ctx, "/flow/open", flowReq{NS: ns, Proto: proto, Dst: dst})
	if err != nil {
		return nil, err
	}
	return &remoteFlow{r: r, id: rep.Text, desc: ns + " -> " + string(proto) + "://" + dst.String()}, nil
}

type remoteFlow struct {
	r        *Remote
	id, desc string
}

func (f *remoteFlow) Exchange(ctx context.Context, timeout time.Duration) (string, error) {
	rep, err := f.r.call(ctx, "/flow/exchange", flowReq{ID: f.id, Timeout: timeout})
	return rep.Text, err
}

func (f *remoteFlow) Close() error {
	return f.r.do(context.Background(), "/flow/close", flowReq{ID: f.id})
}

func (f *remoteFlow) String() string { return "guest flow " + f.desc }

func (r *Remote) IPTables(ctx context.Context, ns string) (string, error) {
	rep, err := r.call(ctx, "/iptables", ns)
	return rep.Text, err
}

func (r *Remote) Exec(ctx context.Context, ns string, argv []string) (string, error) {
	rep, err := r.call(ctx, "/exec", execReq{NS: ns, Argv: argv})
	return rep.Text, err
}

// ClockOffset is how far the guest's clock is ahead of this host's, read
// halfway through one call; rtt bounds its error.
func (r *Remote) ClockOffset(ctx context.Context) (offset, rtt time.Duration, err error) {
	t0 := time.Now()
	rep, err := r.call(ctx, "/clock", nil)
	t1 := time.Now()
	if err != nil {
		return 0, 0, err
	}
	ns, err := strconv.ParseInt(rep.Text, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("lab agent /clock: %q: %w", rep.Text, err)
	}
	mid := t0.Add(t1.Sub(t0) / 2)
	return time.Unix(0, ns).Sub(mid), t1.Sub(t0), nil
}

// Kernel asks the guest which kernel it runs.
func (r *Remote) Kernel() string {
	rep, err := r.call(context.Background(), "/kernel", nil)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return rep.Text
}

// Close asks the agent to stop its processes and exit.
func (r *Remote) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return r.do(ctx, "/shutdown", nil)
}
