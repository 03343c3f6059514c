package proxy

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// authorizeKickoff decides whether the caller may start the export and
// binds the job to the caller: it sets req.ClientID, and checks (or, when
// the client named no types, narrows) req.Types against the caller's
// scopes. With inbound authorization off every caller may export every type
// and jobs belong to nobody in particular.
//
// Scopes are SMART system scopes (auth.Scopes.CanRead): system/*.read,
// system/*.rs, system/Type.read, system/Type.rs and wider. A type named in
// _type that the scopes do not cover is a 403 naming it; without _type the
// default types are narrowed to the permitted ones (the others go to
// req.ScopeExcluded, which the manifest names in a note), and a 403
// follows when none is left.
func (h *handlers) authorizeKickoff(r *http.Request, req *exporter.Request) error {
	if !h.sec.on {
		req.ClientID = h.gatewayClient(r)
		return nil
	}
	id, ok := auth.FromContext(r.Context())
	if !ok || id.ClientID == "" {
		return exporter.Errorf(exporter.EFORBIDDEN, "the access token does not identify a client")
	}
	req.ClientID = id.ClientID
	if req.ExplicitTypes {
		var denied []string
		for _, t := range req.Types {
			if !id.Scopes.CanRead(t) {
				denied = append(denied, t)
			}
		}
		if len(denied) > 0 {
			e := exporter.Errorf(exporter.EFORBIDDEN,
				"the access token's scopes do not permit exporting %s (a system/%s.read or system/%s.rs scope is needed)",
				strings.Join(denied, ", "), denied[0], denied[0])
			e.Param = "_type"
			return e
		}
		return nil
	}
	allowed := id.Scopes.Filter(req.Types)
	req.ScopeExcluded = nil
	for _, t := range req.Types {
		if !slices.Contains(allowed, t) {
			req.ScopeExcluded = append(req.ScopeExcluded, t)
		}
	}
	if len(allowed) == 0 {
		return exporter.Errorf(exporter.EFORBIDDEN,
			"the access token's scopes permit none of the resource types of this export (granted: %q)", id.Scopes.String())
	}
	req.Types = allowed
	return nil
}

// owns reports whether the caller may see a job (status, delete, files):
// only the client that started it, once inbound authorization is on. A job
// the caller may not see answers 404, never 403, so that job ids leak
// nothing. With authorization off, the client is the one a trusted
// gateway names (gatewayClient), or nobody: anonymous callers see the jobs
// started anonymously, never those of a named client or of a token.
func (h *handlers) owns(r *http.Request, j *exporter.Job) bool {
	if !h.sec.on {
		return j.Request.ClientID == h.gatewayClient(r)
	}
	id, ok := auth.FromContext(r.Context())
	return ok && id.ClientID != "" && j.Request.ClientID == id.ClientID
}

// mayRead reports whether the caller's scopes still cover the type of an
// output file (Oracle checks the system read scope of the file's type at
// download, not only at kick-off). Error and deleted files carry no
// clinical data of a type and are covered by owning the job; so is
// everything while inbound authorization is off.
func (h *handlers) mayRead(r *http.Request, f exporter.File) bool {
	if !h.sec.on || f.Kind != exporter.KindOutput || f.Type == "" {
		return true
	}
	id, ok := auth.FromContext(r.Context())
	return ok && id.Scopes.CanRead(f.Type)
}

// GatewayClientPrefix starts the client ids taken from the gateway's
// header, so that they never equal the client id of an access token (jobs
// started while tokens were required stay out of reach).
const GatewayClientPrefix = "gateway:"

// gatewayClient returns the client a trusted gateway names in the
// configured header ("gateway:" + its value), or "" (anonymous) when no
// header is configured, the request does not come from a trusted address,
// or the header is absent or empty.
func (h *handlers) gatewayClient(r *http.Request) string {
	if h.clientHeader == "" {
		return ""
	}
	v := strings.TrimSpace(r.Header.Get(h.clientHeader))
	if v == "" || !h.fromTrustedProxy(r) {
		return ""
	}
	return GatewayClientPrefix + v
}

// fromTrustedProxy reports whether the request's peer address is one of
// the trusted proxies.
func (h *handlers) fromTrustedProxy(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range h.trustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
