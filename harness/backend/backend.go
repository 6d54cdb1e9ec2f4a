// Package backend is the echo server every lab pod runs. It answers HTTP,
// raw TCP and UDP with its pod name and the client address it sees, so a
// probe can tell which backend served a connection and whether the source
// address was preserved or masqueraded.
package backend

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
)

// Default ports. The UDP server shares the TCP port number.
const (
	HTTPPort = 8080
	TCPPort  = 9000
	UDPPort  = 9000
)

// ReadyLine is printed on stdout once every port is bound.
const ReadyLine = "backend ready"

// Role is the agent role name of the backend server.
const Role = "backend"

func init() { agent.Register(Role, roleMain) }

// Config says what the server calls itself and where it listens.
type Config struct {
	Name     string
	HTTPPort int
	TCPPort  int
	UDPPort  int
	// AltTCPPort, when not 0, serves raw TCP on a second port that differs
	// from pod to pod: a named targetPort resolves to it.
	AltTCPPort int
}

// Args renders the command line the role parses.
func (c Config) Args() []string {
	return []string{"--name", c.Name, "--http-port", strconv.Itoa(c.HTTPPort),
		"--tcp-port", strconv.Itoa(c.TCPPort), "--udp-port", strconv.Itoa(c.UDPPort), "--alt-tcp-port", strconv.Itoa(c.AltTCPPort)}
}

// Reply is the line every protocol answers with.
func Reply(name string, client net.Addr) string {
	return name + " " + client.String() + "\n"
}

// ParseReply splits a reply into backend name and client address.
func ParseReply(s string) (name, client string, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return "", "", fmt.Errorf("malformed backend reply %q", s)
	}
	return f[0], f[1], nil
}

func roleMain(args []string) int {
	fs := flag.NewFlagSet(Role, flag.ContinueOnError)
	var c Config
	fs.StringVar(&c.Name, "name", "", "name to answer with (the pod name)")
	fs.IntVar(&c.HTTPPort, "http-port", HTTPPort, "HTTP port (0 disables)")
	fs.IntVar(&c.TCPPort, "tcp-port", TCPPort, "raw TCP port (0 disables)")
	fs.IntVar(&c.UDPPort, "udp-port", UDPPort, "UDP port (0 disables)")
	fs.IntVar(&c.AltTCPPort, "alt-tcp-port", 0, "a second raw TCP port (0: none)")
	drain := fs.Bool("drain", false, "keep serving after SIGTERM until killed, as a container that drains during its termination grace period")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sigs := []os.Signal{syscall.SIGINT}
	if *drain {
		// The kubelet sends SIGTERM when a graceful deletion starts and
		// SIGKILL when the grace period ends: serving until then is what
		// makes an endpoint "serving and terminating".
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		go func() {
			<-term
			fmt.Fprintln(os.Stderr, "backend: SIGTERM: draining, serving until killed")
		}()
	} else {
		sigs = append(sigs, syscall.SIGTERM)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	ready := make(chan struct{})
	go func() {
		<-ready
		// The lab waits for this line before it marks the Pod Ready.
		fmt.Println(ReadyLine)
	}()
	if err := Serve(ctx, c, ready); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	return 0
}

// Serve listens on the configured ports until ctx ends. ready, if not nil,
// is closed once every listener is bound.
func Serve(ctx context.Context, c Config, ready chan<- struct{}) error {
	if c.Name == "" {
		return errors.New("backend needs --name")
	}
	errc := make(chan error, 4)
	var closers []func()
	if c.HTTPPort != 0 {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(c.HTTPPort))
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", c.Name)
			fmt.Fprintf(w, "%s %s\n", c.Name, r.RemoteAddr)
		}), ReadHeaderTimeout: 10 * time.Second}
		closers = append(closers, func() { srv.Close() })
		go func() { errc <- ignoreClosed(srv.Serve(ln)) }()
	}
	for _, port := range []int{c.TCPPort, c.AltTCPPort} {
		if port == 0 {
			continue
		}
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		closers = append(closers, func() { ln.Close() })
		go func() { errc <- ignoreClosed(serveTCP(ln, c.Name)) }()
	}
	if c.UDPPort != 0 {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(c.UDPPort))
		if err != nil {
			return err
		}
		closers = append(closers, func() { pc.Close() })
		go func() { errc <- ignoreClosed(serveUDP(pc, c.Name)) }()
	}
	if ready != nil {
		close(ready)
	}
	defer func() {
		for _, f := range closers {
			f()
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// serveTCP writes the reply line as soon as a connection arrives, then
// echoes whatever the client sends until it closes, which lets probes test
// both connection setup and data transfer.
func serveTCP(ln net.Listener, name string) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			if _, err := conn.Write([]byte(Reply(name, conn.RemoteAddr()))); err != nil {
				return
			}
			conn.SetDeadline(time.Now().Add(5 * time.Minute))
			buf := make([]byte, 32<<10)
			for {
				n, err := conn.Read(buf)
				if n > 0 {
					if _, werr := conn.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func serveUDP(pc net.PacketConn, name string) error {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		pc.WriteTo([]byte(Reply(name, from)), from)
	}
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
