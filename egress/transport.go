package egress

import (
	"compress/gzip"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Connection limits of every endpoint's transport.
const (
	dialTimeout        = 5 * time.Second
	maxIdleConnsPerEp  = 32
	idleConnTimeout    = 90 * time.Second
	maxResponseHeaders = 1 << 20
)

// newTransport returns the transport of one endpoint: net/http's, speaking HTTP/1.1 only,
// with no proxy (never the environment's), its own dialer and connection pool, and the
// endpoint's TLS settings. Each endpoint has its own, so a CA or client certificate never
// applies to another endpoint's connections and retiring a gateway closes all of them.
//
// Compression is left to the gateway (DisableCompression): net/http would decode only when
// the first Content-Encoding line says gzip and then drop every line, so a second coding
// would reach the task undecoded, past the redactor. The gateway asks for gzip itself and
// decides what it can read from all the lines together (decodeBody).
func newTransport(ep *endpoint) *http.Transport {
	var protos http.Protocols
	protos.SetHTTP1(true)
	d := &guardedDialer{net.Dialer{Timeout: min(dialTimeout, ep.timeout), KeepAlive: 30 * time.Second}}
	return &http.Transport{
		Proxy:       nil,
		DialContext: d.DialContext,
		TLSClientConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			RootCAs:      ep.rootCAs,
			Certificates: ep.clientCerts,
		},
		TLSHandshakeTimeout:    ep.timeout,
		DisableCompression:     true,
		MaxIdleConnsPerHost:    maxIdleConnsPerEp,
		IdleConnTimeout:        idleConnTimeout,
		MaxResponseHeaderBytes: maxResponseHeaders,
		Protocols:              &protos,
	}
}

// codingError is the failure of a response whose content coding the gateway
// cannot decode: a credential inside it would reach the task unredacted.
type codingError struct{ codings string }

func (e *codingError) Error() string {
	return fmt.Sprintf("the response has Content-Encoding %q, which the gateway cannot inspect", e.codings)
}

// contentCodings returns the content codings applied to a response, in order, from all of its
// Content-Encoding field lines taken together (RFC 9110 §5.3 and §8.4): values joined by
// commas, split, trimmed and lower-cased, with empty elements and "identity" (no coding)
// left out.
func contentCodings(lines []string) []string {
	var out []string
	for _, line := range lines {
		for c := range strings.SplitSeq(line, ",") {
			c = strings.ToLower(strings.Trim(c, " \t"))
			if c != "" && c != "identity" {
				out = append(out, c)
			}
		}
	}
	return out
}

// decodeBody returns the body the redactor must read: resp.Body itself when no coding was
// applied, decompressed when exactly one gzip layer was (the only coding the gateway asks
// for), and an error for anything else, including gzip twice. A response without a body has
// nothing to decode whatever its headers say.
func decodeBody(resp *http.Response, method string) (io.ReadCloser, error) {
	codings := contentCodings(resp.Header["Content-Encoding"])
	if len(codings) == 0 || method == http.MethodHead || resp.ContentLength == 0 ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		return resp.Body, nil
	}
	// RFC 9110 §8.4.1.3: x-gzip is gzip.
	if len(codings) == 1 && (codings[0] == "gzip" || codings[0] == "x-gzip") {
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		resp.Uncompressed = true
		return &gzipBody{body: resp.Body}, nil
	}
	return nil, &codingError{codings: clip(strings.Join(codings, ", "))}
}

// gzipBody decompresses a body that the gateway asked to have gzipped.
type gzipBody struct {
	body io.ReadCloser
	zr   *gzip.Reader
	err  error
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		zr, err := gzip.NewReader(g.body)
		if err != nil {
			g.err = fmt.Errorf("gzip: %w", noEOF(err))
			return 0, g.err
		}
		zr.Multistream(false)
		g.zr = zr
	}
	n, err := g.zr.Read(p)
	if err == io.EOF {
		// One more read of the body tells net/http it ended with the stream, so that the
		// connection can be reused; bytes after the stream are dropped, and then the body
		// is closed early and the connection with it.
		var one [1]byte
		_, _ = g.body.Read(one[:])
	} else if err != nil {
		err = fmt.Errorf("gzip: %w", noEOF(err))
	}
	if err != nil {
		g.err = err
	}
	return n, err
}

// noEOF turns a premature end of a compressed stream into an error that reads as one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (g *gzipBody) Close() error { return g.body.Close() }
