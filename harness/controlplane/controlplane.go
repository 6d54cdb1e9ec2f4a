// Package controlplane runs the pinned control plane binary (embedded etcd,
// kube-apiserver, kube-controller-manager) for the local lab: it writes the
// certificates, keys, token file and kubeconfig it needs, starts it, waits
// for /readyz and stops it. A stopped control plane can start again on its
// storage, and meanwhile lend that storage to a stand-in API server that
// the lab's clients do not know (the API server restart check).
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"

	"github.com/proxymodes/proxymodes/harness/logs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/proc"
)

// Config says where the control plane keeps its files and how it listens.
type Config struct {
	Binary string
	// Dir holds certificates, etcd data, kubeconfig and the log.
	Dir string
	// Address is where kube-apiserver binds and what it advertises. It must
	// exist on a host interface and must not be loopback.
	Address netip.Addr
	// BindAddress, when valid, is where kube-apiserver listens and clients
	// connect instead; Address is then only advertised (nothing dials it,
	// so it need not exist). This runs a control plane with no lab network
	// on loopback, clear of the lab's Address and port.
	BindAddress netip.Addr
	// Port 0 picks a free port on the bind address.
	Port        int
	ServiceCIDR netip.Prefix
	// ExtraEnv is added to the process environment (the lab's tag).
	ExtraEnv []string
	// NetNS, if set, is the network namespace the process runs in and
	// clients dial from (an isolated lab's own); "" is this process's.
	NetNS string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	cfg        Config
	cmd        *exec.Cmd
	exited     chan struct{}
	Kubeconfig string
	LogPath    string
	rest       *rest.Config
	// etcdPort is kept so that a restart or a stand-in opens the same
	// etcd member: its data directory records its peer URL.
	etcdPort int
	// standIn runs kube-apiserver alone (see StandIn).
	standIn bool
}

// URL is the API server's address.
func (c *ControlPlane) URL() string {
	return "https://" + net.JoinHostPort(c.cfg.bindAddress().String(), strconv.Itoa(c.cfg.Port))
}

func (cfg Config) bindAddress() netip.Addr {
	if cfg.BindAddress.IsValid() {
		return cfg.BindAddress
	}
	return cfg.Address
}

// RESTConfig is an admin client configuration.
func (c *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(c.rest) }

// PID of the control plane process.
func (c *ControlPlane) PID() int { return c.cmd.Process.Pid }

// Start writes the credentials and starts the process; it returns once
// /readyz answers, or with the end of the log if it never does.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.Address.IsLoopback() {
		return nil, errors.New("control plane address must not be loopback: kube-apiserver publishes it as the kubernetes Service endpoint")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		p, err := freePort(cfg.bindAddress())
		if err != nil {
			return nil, err
		}
		cfg.Port = p
	}
	token, err := writeCredentials(cfg)
	if err != nil {
		return nil, fmt.Errorf("control plane credentials: %w", err)
	}
	c := &ControlPlane{cfg: cfg,
		Kubeconfig: filepath.Join(cfg.Dir, "kubeconfig"), LogPath: filepath.Join(cfg.Dir, "controlplane.log")}
	if err := c.writeKubeconfig(token); err != nil {
		return nil, err
	}
	if c.etcdPort, err = freeLoopbackPorts(2); err != nil {
		return nil, err
	}
	if err := c.launch(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// launch starts the process, appending to its log, and returns once
// /readyz answers, or with the end of the log if it never does.
func (c *ControlPlane) launch(ctx context.Context) error {
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	c.exited = make(chan struct{})
	c.cmd = exec.Command(c.cfg.Binary, c.args()...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.Env = append(os.Environ(), c.cfg.ExtraEnv...)
	// Its own process group: Ctrl-C reaches only us, and we stop it in
	// order (apiserver before etcd) instead of racing the terminal.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.start(); err != nil {
		close(c.exited) // nothing runs: Stop and Healthy must say so
		return fmt.Errorf("start %s: %w", c.cfg.Binary, err)
	}
	exited := c.exited
	go func() { c.cmd.Wait(); close(exited) }()
	if err := c.waitReady(ctx, 90*time.Second); err != nil {
		c.Stop()
		return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, c.LogPath, logs.Tail(c.LogPath, 25))
	}
	return nil
}

// Resume starts a stopped control plane again: the same storage, ports
// and credentials, so every client's kubeconfig still holds.
func (c *ControlPlane) Resume(ctx context.Context) error {
	if c.Healthy() {
		return errors.New("the control plane is already running")
	}
	return c.launch(ctx)
}

// StandIn starts kube-apiserver alone on a stopped control plane's
// storage, on another port, and returns it: it stands for another
// replica of an HA control plane, which takes writes while the one that
// the lab's clients know is down. It runs no controllers (the stopped
// control plane's catch up when it resumes) and leaves the kubernetes
// Service's endpoints alone. Stop it before Resume: they share etcd.
func (c *ControlPlane) StandIn(ctx context.Context) (*ControlPlane, error) {
	if c.Healthy() {
		return nil, errors.New("the control plane is running: stop it before starting a stand-in on its storage")
	}
	s := &ControlPlane{cfg: c.cfg, etcdPort: c.etcdPort, standIn: true,
		Kubeconfig: filepath.Join(c.cfg.Dir, "kubeconfig-standin"), LogPath: filepath.Join(c.cfg.Dir, "standin.log")}
	// The bind address may exist only in the control plane's namespace.
	pick := func() (err error) { s.cfg.Port, err = freePort(c.cfg.bindAddress()); return err }
	var err error
	if c.cfg.NetNS == "" {
		err = pick()
	} else {
		err = netlab.Do(c.cfg.NetNS, pick)
	}
	if err != nil {
		return nil, err
	}
	if err := s.writeKubeconfig(c.rest.BearerToken); err != nil {
		return nil, err
	}
	if err := s.launch(ctx); err != nil {
		return nil, fmt.Errorf("stand-in API server: %w", err)
	}
	return s, nil
}

// start forks inside the configured namespace: a child inherits the
// namespace of the thread that forks it.
func (c *ControlPlane) start() error {
	if c.cfg.NetNS == "" {
		return c.cmd.Start()
	}
	return netlab.Do(c.cfg.NetNS, c.cmd.Start)
}

// dial is nil (dial from here) or dials from the control plane's namespace.
func (c *ControlPlane) dial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.cfg.NetNS == "" {
		return nil
	}
	return netlab.Dialer(c.cfg.NetNS, nil)
}

func (c *ControlPlane) args() []string {
	d := c.cfg.Dir
	addr := c.cfg.Address.String()
	args := []string{
		"--data-dir", filepath.Join(d, "etcd"), "--etcd-port", strconv.Itoa(c.etcdPort),
		"--kube-apiserver",
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.etcdPort),
		"--bind-address=" + c.cfg.bindAddress().String(), "--advertise-address=" + addr,
		"--secure-port=" + strconv.Itoa(c.cfg.Port),
		"--tls-cert-file=" + filepath.Join(d, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "apiserver.key"),
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR.String(),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(d, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--authorization-mode=RBAC",
		// As in kubeadm's clusters: the proxier's ipvs DaemonSet has a
		// privileged init container, which the API refuses otherwise.
		"--allow-privileged=true",
		// No ServiceAccount controller runs, so nothing would create the
		// default ServiceAccount that this plugin demands.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		"--v=1",
	}
	if c.standIn {
		// Its port is not the one clients know: published in the
		// kubernetes Service, it would change that Service for the
		// proxiers behind the check's back.
		return append(args, "--endpoint-reconciler-type=none")
	}
	return append(args,
		"--kube-controller-manager",
		"--kubeconfig="+c.Kubeconfig,
		// garbagecollector removes EndpointSlices with their Service.
		"--controllers=endpointslice,endpointslicemirroring,garbagecollector",
		"--use-service-account-credentials=false", "--leader-elect=false", "--secure-port=0",
		// The defaults (20 qps) make slices trickle in during bulk creation.
		"--kube-api-qps=1000", "--kube-api-burst=2000",
		"--concurrent-service-endpoint-syncs=10",
	)
}

// writeCredentials creates the serving certificate, the service account
// key and a static admin token, and returns the token.
func writeCredentials(cfg Config) (string, error) {
	d := cfg.Dir
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("kubernetes",
		[]net.IP{net.IP(cfg.Address.AsSlice()), net.IP(cfg.bindAddress().AsSlice()), net.ParseIP("127.0.0.1"), firstIP(cfg.ServiceCIDR)},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost"})
	if err != nil {
		return "", err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	saPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)})
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return "", err
	}
	token := hex.EncodeToString(tok)
	files := map[string][]byte{
		"apiserver.crt": certPEM,
		"apiserver.key": keyPEM,
		"sa.key":        saPEM,
		"tokens.csv":    []byte(token + ",proxymodes-admin,proxymodes-admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(d, name), b, 0o600); err != nil {
			return "", err
		}
	}
	return token, nil
}

func (c *ControlPlane) writeKubeconfig(token string) error {
	ca, err := os.ReadFile(filepath.Join(c.cfg.Dir, "apiserver.crt"))
	if err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["proxymodes"] = &clientcmdapi.Cluster{Server: c.URL(), CertificateAuthorityData: ca}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["proxymodes"] = &clientcmdapi.Context{Cluster: "proxymodes", AuthInfo: "admin"}
	kc.CurrentContext = "proxymodes"
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		return err
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		return err
	}
	// Bulk Service creation in benchmarks needs more than client-go's 5 qps.
	rc.QPS, rc.Burst = 500, 1000
	rc.Dial = c.dial()
	c.rest = rc
	return nil
}

func (c *ControlPlane) waitReady(ctx context.Context, limit time.Duration) error {
	tlsCfg, err := rest.TLSConfigFor(c.rest)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DialContext: c.dial()}}
	deadline := time.After(limit)
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL()+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.rest.BearerToken)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.exited:
			return fmt.Errorf("control plane exited before it was ready (%v)", c.cmd.ProcessState)
		case <-deadline:
			return fmt.Errorf("control plane not ready after %s (last answer: %s)", limit, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop shuts the control plane down (SIGTERM, then SIGKILL after 20s).
func (c *ControlPlane) Stop() error {
	select {
	case <-c.exited:
		return nil
	default:
	}
	err := proc.Stop([]int{c.cmd.Process.Pid}, 20*time.Second)
	<-c.exited
	return err
}

// Healthy is false once the process has exited.
func (c *ControlPlane) Healthy() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// freeLoopbackPorts finds a port p such that p..p+n-1 are free on loopback.
func freeLoopbackPorts(n int) (int, error) {
	for try := 0; try < 50; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ok := p+n-1 < 65536
		var held []net.Listener
		for i := 1; ok && i < n; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+i))
			if err != nil {
				ok = false
				break
			}
			held = append(held, l)
		}
		ln.Close()
		for _, l := range held {
			l.Close()
		}
		if ok {
			return p, nil
		}
	}
	return 0, errors.New("no free loopback port pair for etcd")
}

// freePort asks the kernel for a free port on addr. Another process may
// take it before kube-apiserver binds; Start then fails with the log's
// "address already in use", which a retry fixes.
func freePort(addr netip.Addr) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("no free port on %s for kube-apiserver: %w", addr, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func firstIP(p netip.Prefix) net.IP {
	return net.IP(p.Masked().Addr().Next().AsSlice())
}
