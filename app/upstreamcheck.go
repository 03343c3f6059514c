package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
)

// maxMetadataProbe bounds what the upstream check reads of /metadata
// (large servers' CapabilityStatements run to a few MiB; the resourceType
// usually comes first).
const maxMetadataProbe = 32 << 20

// ProbeUserAgent is the User-Agent of the upstream check (/readyz and the
// start-up check), so that the upstream's logs tell it from export
// requests. It sends no credentials.
const ProbeUserAgent = "fhir-bulk-proxy-upstream-check"

// metadataProbe is what GET [upstream]/metadata answered, described
// without its body (which is never logged nor shown).
type metadataProbe struct {
	// OK: a FHIR CapabilityStatement, or an answer asking for
	// authorization (the probe sends none; see Note).
	OK bool
	// Status is the HTTP status; 0 when no answer came.
	Status int
	// Problem says what came back and what was expected, or why nothing
	// came back; "" when OK.
	Problem string
	// Note qualifies an OK answer: the FHIR version, or that the
	// CapabilityStatement could not be checked without authorization.
	Note string
}

// probeMetadata sends GET [base]/metadata with client and judges the
// answer. timeout is only used to word a timeout; ctx bounds the request.
func probeMetadata(ctx context.Context, client *http.Client, base string, timeout fmt.Stringer) metadataProbe {
	u, err := url.Parse(strings.TrimRight(base, "/") + "/metadata")
	if err != nil {
		return metadataProbe{Problem: "the upstream URL does not parse"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return metadataProbe{Problem: "the upstream URL does not parse"}
	}
	req.Header.Set("Accept", "application/fhir+json, application/json;q=0.9, application/fhir+xml;q=0.5")
	req.Header.Set("User-Agent", ProbeUserAgent)
	resp, err := client.Do(req)
	if err != nil {
		return metadataProbe{Problem: "the upstream is unreachable: " + transportCause(ctx, err, u.Host, timeout)}
	}
	defer resp.Body.Close()
	return judgeMetadata(resp, u)
}

// judgeMetadata reads an answer to GET [upstream]/metadata.
func judgeMetadata(resp *http.Response, u *url.URL) metadataProbe {
	p := metadataProbe{Status: resp.StatusCode}
	media := "no Content-Type"
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		if m, _, err := mime.ParseMediaType(ct); err == nil && len(m) <= 100 {
			media = m
		} else {
			media = "an unparsable Content-Type"
		}
	}
	// The first bytes are kept to recognize a TLS server's complaint
	// about plain HTTP; they are never shown.
	head := &prefixWriter{max: 512}
	body := io.TeeReader(io.LimitReader(resp.Body, maxMetadataProbe), head)
	var rt, version, what string
	switch {
	case strings.Contains(media, "xml"):
		rt = xmlRootElement(body)
		what = ", XML"
		if rt == "" {
			what = ", not well-formed XML"
		}
	default:
		var err error
		rt, version, err = jsonResourceType(body)
		if err != nil {
			what = ", not JSON"
		}
	}
	if rt != "" {
		what += ", resourceType " + rt
	}
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300 && rt == "CapabilityStatement":
		p.OK = true
		if version != "" {
			p.Note = "FHIR " + version
		}
		return p
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		// Servers that protect their metadata: the probe sends no
		// credentials, and the callers' own tokens pass through.
		p.OK = true
		p.Note = fmt.Sprintf("the upstream answered %d: it wants authorization for /metadata, so its CapabilityStatement was not checked", code)
		return p
	}
	p.Problem = fmt.Sprintf("GET [upstream]/metadata answered %d (%s%s); expected a FHIR CapabilityStatement", code, media, what)
	switch {
	case code >= 300 && code < 400:
		p.Problem += " (a redirect, which is not followed): is the upstream URL's scheme, host and path right?"
	case code == http.StatusBadRequest && strings.EqualFold(u.Scheme, "http") && head.plainHTTPToTLS():
		p.Problem += ": the server speaks TLS at this address; the upstream URL must start with https://"
	case code >= 500:
		p.Problem += ": the upstream fails"
	case rt == "" || rt == "OperationOutcome" || code == http.StatusNotFound:
		if path := strings.Trim(u.Path, "/"); path == "metadata" || path == "" {
			p.Problem += ": the upstream URL has no path; is the FHIR base at a path such as /fhir?"
		} else {
			p.Problem += ": is the upstream URL the FHIR base (the URL that [base]/metadata is under)?"
		}
	}
	return p
}

// jsonResourceType reads the top-level "resourceType" (and "fhirVersion")
// of a JSON object, stopping as soon as both are found. The names are kept
// only when they look like FHIR names, so nothing else of the body can
// reach a message.
func jsonResourceType(r io.Reader) (rt, version string, err error) {
	dec := json.NewDecoder(r)
	tok, err := dec.Token()
	if err != nil {
		return "", "", err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return "", "", errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return rt, version, err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return rt, version, err
		}
		var s string
		switch key {
		case "resourceType":
			if json.Unmarshal(v, &s) == nil && fhirName(s) {
				rt = s
			} else {
				rt = "(not a resource type)"
			}
		case "fhirVersion":
			if json.Unmarshal(v, &s) == nil && len(s) <= 20 && strings.Trim(s, "0123456789.-abcdefghijklmnopqrstuvwxyz") == "" {
				version = s
			}
		}
		if rt != "" && version != "" {
			break
		}
	}
	return rt, version, nil
}

// xmlRootElement returns the name of the root element of an XML document
// when it looks like a FHIR resource type, "" otherwise.
func xmlRootElement(r io.Reader) string {
	dec := xml.NewDecoder(r)
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok {
			if fhirName(se.Name.Local) {
				return se.Name.Local
			}
			return "(not a resource type)"
		}
	}
}

// fhirName reports whether s could be a FHIR resource type: a capital
// letter, then letters, at most 64.
func fhirName(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

// transportCause words why a request to host got no answer: DNS, refused,
// TLS spoken to a plain HTTP server (or the reverse), an untrusted
// certificate, a timeout. It never holds the URL (which may carry user
// info) nor a body.
func transportCause(ctx context.Context, err error, host string, timeout fmt.Stringer) string {
	var dnsErr *net.DNSError
	var recErr tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var ne net.Error
	var errno syscall.Errno
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return fmt.Sprintf("DNS lookup of %s: no such host", dnsErr.Name)
	case errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return fmt.Sprintf("DNS lookup of %s timed out", dnsErr.Name)
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("DNS lookup of %s failed: %s", dnsErr.Name, dnsErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused by %s (nothing listens on that port?)", host)
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &recErr):
		return fmt.Sprintf("TLS handshake with %s failed: the server answered in plain HTTP; the upstream URL says https:// where the server speaks http://", host)
	case errors.As(err, &certErr):
		reason := "refused"
		if certErr.Err != nil {
			reason = certErr.Err.Error()
		}
		return fmt.Sprintf("TLS certificate of %s not trusted (%s): set upstream_http.ca_file to its CA bundle, or check the host name", host, reason)
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalid):
		return fmt.Sprintf("TLS certificate of %s not trusted: set upstream_http.ca_file to its CA bundle, or check the host name", host)
	case ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no answer from %s within %s (timeout)", host, timeout)
	case errors.Is(err, syscall.ECONNRESET):
		return fmt.Sprintf("the connection to %s was reset (is it a FHIR server over HTTP? TLS where plain HTTP is expected?)", host)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Sprintf("%s closed the connection without an answer (TLS where plain HTTP is expected, or the reverse?)", host)
	case errors.As(err, &errno):
		return fmt.Sprintf("could not connect to %s: %s", host, errno.Error())
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // without the URL
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return fmt.Sprintf("%s %s: %s", op.Op, host, op.Err.Error())
	}
	return fmt.Sprintf("could not reach %s: %T", host, err)
}

// prefixWriter keeps the first max bytes written to it.
type prefixWriter struct {
	max int
	b   []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	if n := w.max - len(w.b); n > 0 {
		w.b = append(w.b, p[:min(n, len(p))]...)
	}
	return len(p), nil
}

// plainHTTPToTLS reports whether the kept bytes are a TLS server's
// complaint about a plain HTTP request (Go, nginx, Tomcat wordings).
func (w *prefixWriter) plainHTTPToTLS() bool {
	s := strings.ToLower(string(w.b))
	return strings.Contains(s, "http request to an https server") || strings.Contains(s, "plain http request was sent to https port")
}
