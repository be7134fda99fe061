package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
)

// mcpHandler is /mcp for the control plane listening on ln. It calls the control plane's
// own /v1 API over loopback with each agent's token, so an agent can do through /mcp
// exactly what its token can do on /v1 and nothing more (it holds no key of its own).
//
// Its requests end when shutdown ends. An agent's session holds a stream open (the
// standalone SSE GET) and a call may wait minutes for its approval; neither must hold up
// a graceful shutdown. Ending them is a dropped connection to the agent: the jobs go on,
// and their results can be fetched later (castellan_job_result).
func mcpHandler(cfg ServerConfig, ln net.Listener, shutdown context.Context, log *zap.Logger) (http.Handler, error) {
	self, err := selfURL(ln.Addr(), cfg.TLSCert != "")
	if err != nil {
		return nil, err
	}
	var opts []client.Option
	if cfg.TLSCert != "" {
		tc, err := selfTLS(cfg.TLSCert)
		if err != nil {
			return nil, usagef("--mcp with --tls-cert %s: %v (or turn /mcp off with --mcp=false)", cfg.TLSCert, err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tc
		opts = append(opts, client.WithHTTPClient(&http.Client{Transport: t}))
	}
	b, err := mcp.NewV1Backend(self, opts...)
	if err != nil {
		return nil, err
	}
	o := mcp.Options{Logger: mcp.SlogLogger(log)}
	if cfg.PublicURL != "" {
		u, err := url.Parse(cfg.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, usagef("--public-url %q: want the URL clients use to reach this server, scheme://host[:port] with no path", cfg.PublicURL)
		}
		o.ResourceURL = u.Scheme + "://" + u.Host + mcp.Path
	}
	h := mcp.Handler(b, o)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(shutdown, cancel)()
		h.ServeHTTP(w, r.WithContext(ctx))
	}), nil
}

// endingWith runs serve and ends the context of mcpHandler's requests once serve's own
// context ends, which is when the graceful shutdown begins.
func endingWith(serve func(context.Context, net.Listener) error, end context.CancelFunc) func(context.Context, net.Listener) error {
	return func(ctx context.Context, ln net.Listener) error {
		defer context.AfterFunc(ctx, end)()
		return serve(ctx, ln)
	}
}

// selfURL is a URL that reaches the listener at addr from this host: a wildcard address
// (0.0.0.0, ::) becomes its loopback.
func selfURL(addr net.Addr, tlsOn bool) (string, error) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("listener address %s is not TCP", addr)
	}
	ip := ta.IP
	switch {
	case ip == nil || ip.Equal(net.IPv4zero):
		ip = net.IPv4(127, 0, 0, 1)
	case ip.Equal(net.IPv6unspecified):
		ip = net.IPv6loopback
	}
	scheme := "http"
	if tlsOn {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(ip.String(), fmt.Sprint(ta.Port)), nil
}

// selfTLS trusts exactly the certificates of the server's own --tls-cert file, and checks
// the leaf against a name it was issued for: the loopback address /mcp dials is usually
// not among them. A leaf in the root pool verifies without its CA (crypto/x509).
func selfTLS(certFile string) (*tls.Config, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	var leaf *x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		if leaf == nil {
			leaf = c
		}
		pool.AddCert(c)
	}
	if leaf == nil {
		return nil, fmt.Errorf("no PEM certificate in the file")
	}
	var name string
	switch {
	case len(leaf.DNSNames) > 0:
		// A wildcard name is checked with a host it covers.
		name = strings.Replace(leaf.DNSNames[0], "*.", "castellan.", 1)
	case len(leaf.IPAddresses) > 0:
		name = leaf.IPAddresses[0].String()
	default:
		return nil, fmt.Errorf("the certificate names no DNS name or IP address (subjectAltName)")
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: name}, nil
}
