package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// leanTransport carries bodiless GET and HEAD requests to a plain-http
// upstream over HTTP/1.1 keep-alive connections in the caller's goroutine:
// it writes the request and reads the response itself, where http.Transport
// hands each request to a writer and a reader goroutine per connection.
// Everything else (https, request bodies, upgrades, proxies from the
// environment, user info in the URL, ...) goes to the fallback transport.
//
// A request on a reused connection that fails before any response arrives
// (the upstream may have closed the idle connection) is retried once on a
// new connection; GET and HEAD are idempotent.
type leanTransport struct {
	fallback *http.Transport
	dialer   *net.Dialer
	// headerTimeout bounds the wait for response headers (0: none).
	headerTimeout time.Duration
	idleTimeout   time.Duration
	maxIdle       int // per host

	mu    sync.Mutex
	hosts map[string]*leanHost
}

// leanHost is the idle pool and proxy decision for one scheme and host.
type leanHost struct {
	direct bool // no proxy from the environment applies
	idle   []*leanConn
}

type leanConn struct {
	key      string
	addr     string
	conn     net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	idleFrom time.Time
}

func newLeanTransport(fallback *http.Transport, headerTimeout, dialTimeout time.Duration) *leanTransport {
	return &leanTransport{
		fallback:      fallback,
		dialer:        &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second},
		headerTimeout: headerTimeout,
		idleTimeout:   fallback.IdleConnTimeout,
		maxIdle:       fallback.MaxIdleConnsPerHost,
		hosts:         map[string]*leanHost{},
	}
}

// CloseIdleConnections closes the idle connections of both transports.
func (t *leanTransport) CloseIdleConnections() {
	t.mu.Lock()
	var idle []*leanConn
	for _, h := range t.hosts {
		idle = append(idle, h.idle...)
		h.idle = nil
	}
	t.mu.Unlock()
	for _, c := range idle {
		_ = c.conn.Close()
	}
	t.fallback.CloseIdleConnections()
}

// eligible reports whether the lean path may carry req.
func (t *leanTransport) eligible(req *http.Request) bool {
	if req.URL.Scheme != "http" || req.URL.User != nil || req.URL.Host == "" || req.URL.Opaque != "" ||
		(req.Method != http.MethodGet && req.Method != http.MethodHead) ||
		(req.Body != nil && req.Body != http.NoBody) || req.ContentLength != 0 ||
		len(req.TransferEncoding) > 0 || len(req.Trailer) > 0 || req.Close || req.Host != "" {
		return false
	}
	h := req.Header
	if h["Connection"] != nil || h["Upgrade"] != nil || h["Expect"] != nil || h["Host"] != nil ||
		h["Content-Length"] != nil || h["Transfer-Encoding"] != nil || h["Te"] != nil {
		return false
	}
	return t.host(req).direct
}

// host returns the state for the request's scheme and host, deciding once
// whether a proxy from the environment applies to it.
func (t *leanTransport) host(req *http.Request) *leanHost {
	key := req.URL.Host
	t.mu.Lock()
	h := t.hosts[key]
	t.mu.Unlock()
	if h != nil {
		return h
	}
	direct := true
	if t.fallback.Proxy != nil {
		u, err := t.fallback.Proxy(req)
		direct = err == nil && u == nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if h = t.hosts[key]; h == nil {
		if len(t.hosts) >= 64 {
			return &leanHost{} // too many hosts to remember: not lean
		}
		h = &leanHost{direct: direct}
		t.hosts[key] = h
	}
	return h
}

// RoundTrip implements http.RoundTripper.
func (t *leanTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.eligible(req) {
		return t.fallback.RoundTrip(req)
	}
	for _, v := range req.Header {
		for _, s := range v {
			if strings.ContainsAny(s, "\r\n") {
				return nil, errors.New("pass-through: invalid header value")
			}
		}
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		c, reused, err := t.getConn(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !reused || attempt > 0 || isTimeout(err) {
			return nil, err
		}
	}
}

// exchange writes req on c and reads the response headers. On failure c is
// closed.
func (t *leanTransport) exchange(ctx context.Context, c *leanConn, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = c.conn.Close()
		return nil, err
	}
	if err := writeRequest(c.bw, req); err != nil {
		return fail(err)
	}
	if t.headerTimeout > 0 {
		if err := c.conn.SetReadDeadline(time.Now().Add(t.headerTimeout)); err != nil {
			return fail(err)
		}
	}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx informational answers precede the real one.
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return fail(errors.New("pass-through: unexpected 101 from the upstream"))
	}
	if t.headerTimeout > 0 {
		if err := c.conn.SetReadDeadline(time.Time{}); err != nil {
			return fail(err)
		}
	}
	keep := !resp.Close
	if resp.Body == http.NoBody || resp.Body == nil {
		t.release(c, keep, stop)
		return resp, nil
	}
	resp.Body = &leanBody{rc: resp.Body, t: t, c: c, keep: keep, stop: stop}
	return resp, nil
}

// writeRequest writes a bodiless request line and headers, as
// http.Transport would for the requests eligible for the lean path.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.URL.Host)
	bw.WriteString("\r\n")
	if _, ok := req.Header["User-Agent"]; !ok {
		bw.WriteString("User-Agent: Go-http-client/1.1\r\n")
	}
	for k, vs := range req.Header {
		if k == "User-Agent" && len(vs) > 0 && vs[0] == "" {
			continue // ReverseProxy's way of asking for no User-Agent
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(strings.TrimSpace(v))
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// getConn takes an idle connection to addr or dials a new one.
func (t *leanTransport) getConn(ctx context.Context, addr string) (*leanConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	h := t.hosts[addr]
	for h != nil && len(h.idle) > 0 {
		c := h.idle[len(h.idle)-1]
		h.idle[len(h.idle)-1] = nil
		h.idle = h.idle[:len(h.idle)-1]
		if t.idleTimeout > 0 && now.Sub(c.idleFrom) > t.idleTimeout {
			t.mu.Unlock()
			_ = c.conn.Close()
			t.mu.Lock()
			continue
		}
		t.mu.Unlock()
		return c, true, nil
	}
	t.mu.Unlock()
	dialAddr := addr
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		dialAddr = net.JoinHostPort(strings.Trim(addr, "[]"), "80")
	}
	conn, err := t.dialer.DialContext(ctx, "tcp", dialAddr)
	if err != nil {
		return nil, false, err
	}
	return &leanConn{key: addr, conn: conn, br: bufio.NewReaderSize(conn, 16<<10), bw: bufio.NewWriterSize(conn, 4<<10)}, false, nil
}

// release puts c back in the pool after a complete response, or closes it.
func (t *leanTransport) release(c *leanConn, keep bool, stop func() bool) {
	if !stop() || !keep || c.br.Buffered() > 0 {
		// The request was cancelled (the deadline may be poisoned), the
		// upstream closes, or it sent more than the response.
		_ = c.conn.Close()
		return
	}
	c.idleFrom = time.Now()
	t.mu.Lock()
	h := t.hosts[c.key]
	if h != nil && len(h.idle) < t.maxIdle {
		h.idle = append(h.idle, c)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	_ = c.conn.Close()
}

// leanBody returns its connection to the pool once the body has been read
// to its end, and closes the connection when it is closed before.
type leanBody struct {
	rc   io.ReadCloser
	t    *leanTransport
	c    *leanConn
	keep bool
	stop func() bool
	mu   sync.Mutex
	done bool
}

func (b *leanBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *leanBody) finish(complete bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	if complete {
		b.t.release(b.c, b.keep, b.stop)
		return
	}
	b.stop()
	_ = b.c.conn.Close()
}

func (b *leanBody) Close() error {
	b.finish(false)
	return nil
}
