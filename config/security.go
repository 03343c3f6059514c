package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Inbound authorization modes (auth.mode).
const (
	AuthNone          = "none"
	AuthSMARTExternal = "smart-external"
	AuthSMARTBuiltin  = "smart-builtin"
)

// Upstream credential modes (upstream_auth.mode).
const (
	UpstreamAuthNone            = "none"
	UpstreamAuthBearer          = "bearer"
	UpstreamAuthClientSecret    = "client-secret"
	UpstreamAuthBackendServices = "backend-services"
)

// Modes lists the accepted values of auth.mode and upstream_auth.mode.
var (
	AuthModes         = []string{AuthNone, AuthSMARTExternal, AuthSMARTBuiltin}
	UpstreamAuthModes = []string{UpstreamAuthNone, UpstreamAuthBearer, UpstreamAuthClientSecret, UpstreamAuthBackendServices}
)

// MaxTokenTTL is the longest auth.token_ttl (SMART Backend Services: access
// tokens live at most 5 minutes).
const MaxTokenTTL = 300 * time.Second

// Secret is a configuration value that must never be printed: fmt shows
// "[redacted]" for a non-empty Secret (%v, %+v, %#v, %s). Convert it with
// string(s) to use it.
type Secret string

// String implements fmt.Stringer without revealing the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString implements fmt.GoStringer without revealing the value.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// MarshalJSON never reveals the value either.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// AuthConfig configures inbound authorization of the bulk data routes
// (kick-off, status, delete, files). Pass-through FHIR traffic is never
// authenticated by the proxy: the upstream decides, with the caller's own
// Authorization header.
type AuthConfig struct {
	// Mode is none (default: anyone who can reach the proxy may export),
	// smart-external (bearer tokens of an external authorization server) or
	// smart-builtin (the proxy's own SMART Backend Services token endpoint
	// at {public base}/auth/token).
	Mode string `yaml:"mode" usage:"inbound authorization: none, smart-external or smart-builtin"`
	// Issuer is the required iss of access tokens (smart-external).
	Issuer string `yaml:"issuer" usage:"smart-external: required iss of access tokens"`
	// Audience must be in the aud of access tokens (smart-external),
	// typically the public FHIR base URL.
	Audience string `yaml:"audience" usage:"smart-external: required aud of access tokens (usually the public FHIR base)"`
	// JWKSURL is the external issuer's JWK Set; tokens are validated
	// locally as JWTs. Either this or IntrospectionURL.
	JWKSURL string `yaml:"jwks_url" usage:"smart-external: JWK Set URL of the token issuer"`
	// IntrospectionURL is an RFC 7662 endpoint asked about every token
	// (cached up to a minute). Either this or JWKSURL.
	IntrospectionURL string `yaml:"introspection_url" usage:"smart-external: RFC 7662 token introspection URL (instead of jwks_url)"`
	// IntrospectionClientID and IntrospectionClientSecret authenticate the
	// proxy to the introspection endpoint (HTTP Basic).
	IntrospectionClientID     string `yaml:"introspection_client_id" usage:"smart-external: client id for the introspection endpoint"`
	IntrospectionClientSecret Secret `yaml:"introspection_client_secret" usage:"smart-external: client secret for the introspection endpoint"`
	// TokenURL is the external token endpoint advertised in
	// .well-known/smart-configuration and the CapabilityStatement.
	TokenURL string `yaml:"token_url" usage:"smart-external: token endpoint advertised to clients"`
	// Clients are the clients registered with the built-in server.
	Clients []AuthClient `yaml:"clients" usage:"smart-builtin: registered clients, a YAML/JSON list of {id, jwks_url or jwks, scopes}"`
	// TokenTTL is the lifetime of tokens the built-in server issues; at
	// most 300s. Default 300s.
	TokenTTL time.Duration `yaml:"token_ttl" usage:"smart-builtin: access token lifetime, at most 300s"`
	// ClientIDHeader names a request header that a trusted gateway sets to
	// the caller's identity (mode none only): it is the client of the
	// export for max_active_per_client and for the job ownership checks
	// (status, delete and files only for the client that started the
	// job). It is read only from TrustedProxies; "" (default): every
	// caller is anonymous, and the per-client limit does not apply.
	ClientIDHeader string `yaml:"client_id_header" usage:"none: request header a trusted gateway sets to the caller's client id"`
	// TrustedProxies are the addresses (IPs or CIDRs, comma separated)
	// whose ClientIDHeader is believed; required with ClientIDHeader.
	TrustedProxies string `yaml:"trusted_proxies" usage:"none: comma-separated IPs or CIDRs of the gateways whose client_id_header is trusted"`
}

// TrustedPrefixes parses TrustedProxies: every entry an IP (a one-address
// prefix) or a CIDR.
func (a AuthConfig) TrustedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(a.TrustedProxies, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		ip, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR", f)
		}
		ip = ip.Unmap()
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out, nil
}

// AuthClient is a client registered with the built-in authorization server.
type AuthClient struct {
	// ID is the client_id (iss and sub of its client assertions).
	ID string `yaml:"id" json:"id"`
	// JWKSURL is where the client publishes its public keys.
	JWKSURL string `yaml:"jwks_url,omitempty" json:"jwks_url,omitempty"`
	// JWKS is the client's public JWK Set, inline, as JSON. In YAML it may
	// also be written as a mapping.
	JWKS string `yaml:"jwks,omitempty" json:"jwks,omitempty"`
	// Scopes is the most the client may be granted, space separated, e.g.
	// "system/*.read". In YAML it may also be a list.
	Scopes string `yaml:"scopes" json:"scopes"`
}

// UnmarshalYAML reads a client, accepting jwks as a JSON string or a YAML
// mapping and scopes as a string or a list. Unknown keys are errors.
func (a *AuthClient) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a client must be a mapping with id, jwks_url or jwks, scopes", n.Line)
	}
	var out AuthClient
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		if seen[k.Value] {
			return fmt.Errorf("line %d: client key %q repeated", k.Line, k.Value)
		}
		seen[k.Value] = true
		switch k.Value {
		case "id", "jwks_url":
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: client %s must be a string", v.Line, k.Value)
			}
			if k.Value == "id" {
				out.ID = v.Value
			} else {
				out.JWKSURL = v.Value
			}
		case "jwks":
			switch v.Kind {
			case yaml.ScalarNode:
				out.JWKS = v.Value
			case yaml.MappingNode:
				var m map[string]any
				if err := v.Decode(&m); err != nil {
					return fmt.Errorf("line %d: client jwks: %v", v.Line, err)
				}
				b, err := json.Marshal(m)
				if err != nil {
					return fmt.Errorf("line %d: client jwks: %v", v.Line, err)
				}
				out.JWKS = string(b)
			default:
				return fmt.Errorf("line %d: client jwks must be a JSON string or a mapping", v.Line)
			}
		case "scopes":
			switch v.Kind {
			case yaml.ScalarNode:
				out.Scopes = v.Value
			case yaml.SequenceNode:
				var l []string
				if err := v.Decode(&l); err != nil {
					return fmt.Errorf("line %d: client scopes: %v", v.Line, err)
				}
				out.Scopes = strings.Join(l, " ")
			default:
				return fmt.Errorf("line %d: client scopes must be a string or a list", v.Line)
			}
		default:
			return fmt.Errorf("line %d: unknown client key %q (want id, jwks_url, jwks, scopes)", k.Line, k.Value)
		}
	}
	*a = out
	return nil
}

// parseClients reads a YAML (or JSON) list of clients.
func parseClients(s string) ([]AuthClient, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		return nil, errors.New("invalid client list: want a YAML or JSON list of {id, jwks_url or jwks, scopes}")
	}
	return decodeClients(&n)
}

// decodeClients decodes a sequence node (or a document holding one).
func decodeClients(n *yaml.Node) ([]AuthClient, error) {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	n = resolveAlias(n)
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: must be a list of clients", n.Line)
	}
	if len(n.Content) == 0 {
		return nil, nil
	}
	out := make([]AuthClient, len(n.Content))
	for i, item := range n.Content {
		if err := out[i].UnmarshalYAML(resolveAlias(item)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// formatClients renders clients as JSON ("" for none).
func formatClients(cs []AuthClient) string {
	if len(cs) == 0 {
		return ""
	}
	b, _ := json.Marshal(cs)
	return string(b)
}

// UpstreamAuthConfig are the credentials export jobs send to the upstream.
// Pass-through requests carry the caller's own Authorization header instead.
type UpstreamAuthConfig struct {
	// Mode is none (default), bearer, client-secret or backend-services.
	Mode string `yaml:"mode" usage:"credentials of export jobs towards the upstream: none, bearer, client-secret or backend-services"`
	// Token is the static bearer token (bearer).
	Token Secret `yaml:"token" usage:"bearer: static token sent to the upstream"`
	// TokenURL is the upstream's token endpoint (client-secret,
	// backend-services).
	TokenURL string `yaml:"token_url" usage:"client-secret, backend-services: token endpoint of the upstream's authorization server"`
	// ClientID identifies the proxy at that token endpoint.
	ClientID string `yaml:"client_id" usage:"client-secret, backend-services: client id of the proxy"`
	// ClientSecret authenticates the proxy (client-secret).
	ClientSecret Secret `yaml:"client_secret" usage:"client-secret: client secret of the proxy"`
	// Scopes are requested with every token (client-secret), space separated.
	Scopes string `yaml:"scopes" usage:"client-secret: scopes requested, space separated"`
	// PrivateKeyFile is the PEM private key signing client assertions
	// (backend-services): PKCS#8, PKCS#1 or SEC1, unencrypted.
	PrivateKeyFile string `yaml:"private_key_file" usage:"backend-services: PEM private key signing the client assertions"`
	// KeyID is the kid of that key in the proxy's registered JWK Set.
	KeyID string `yaml:"key_id" usage:"backend-services: kid of the key in the proxy's registered JWK Set"`
	// Alg is the assertion algorithm; empty: RS384 for RSA, ES384 for P-384.
	Alg string `yaml:"alg" usage:"backend-services: assertion algorithm (RS384, ES384, ...); empty: after the key"`
	// Scope is requested with every token (backend-services), e.g.
	// "system/*.rs".
	Scope string `yaml:"scope" usage:"backend-services: scope requested, e.g. system/*.rs"`
}

// TLSConfig makes the proxy serve HTTPS.
type TLSConfig struct {
	// CertFile is the PEM certificate chain; KeyFile its private key. Both
	// set: HTTPS; both empty: plain HTTP.
	CertFile string `yaml:"cert_file" usage:"PEM certificate (chain) to serve HTTPS; needs tls.key_file"`
	KeyFile  string `yaml:"key_file" usage:"PEM private key of tls.cert_file"`
}

// LimitsConfig bounds requests.
type LimitsConfig struct {
	// MaxBodyBytes bounds kick-off bodies and token requests. Pass-through
	// bodies are streamed and not limited. Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes" usage:"largest kick-off or token request body (pass-through bodies are not limited)"`
	// MaxHeaderBytes bounds request headers. Default 64 KiB.
	MaxHeaderBytes int64 `yaml:"max_header_bytes" usage:"largest request header block"`
	// ReadHeaderTimeout bounds reading request headers. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" usage:"time allowed to read a request's headers"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout" usage:"idle keep-alive connections are closed after this"`
}

// TLSEnabled reports whether the proxy serves HTTPS.
func (c *Config) TLSEnabled() bool { return c.TLS.CertFile != "" && c.TLS.KeyFile != "" }

// validateSecurity checks the auth, upstream_auth, tls and limits sections.
// Messages name keys, never values of secrets.
func (c *Config) validateSecurity() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	a := &c.Auth
	a.Mode = strings.ToLower(strings.TrimSpace(a.Mode))
	if a.Mode == "" {
		a.Mode = AuthNone
	}
	absURL := func(key, v string) {
		if v == "" {
			return
		}
		if _, _, err := splitURL(v); err != nil || strings.ContainsAny(v, "{}") {
			add("%s must be an absolute http or https URL without placeholders", key)
		}
	}
	a.ClientIDHeader = strings.TrimSpace(a.ClientIDHeader)
	if a.ClientIDHeader != "" && a.Mode != AuthNone {
		add("auth.client_id_header is only used with auth.mode none (with tokens, the client is the token's)")
	}
	if a.ClientIDHeader != "" && !validHeaderName(a.ClientIDHeader) {
		add("auth.client_id_header %q is not a valid header name", a.ClientIDHeader)
	}
	if prefixes, err := a.TrustedPrefixes(); err != nil {
		add("auth.trusted_proxies: %v", err)
	} else if a.ClientIDHeader != "" && len(prefixes) == 0 {
		add("auth.trusted_proxies is required with auth.client_id_header: the header is believed only from those addresses")
	}
	switch a.Mode {
	case AuthNone:
	case AuthSMARTExternal:
		if a.Issuer == "" {
			add("auth.issuer is required with auth.mode smart-external")
		}
		if a.Audience == "" {
			add("auth.audience is required with auth.mode smart-external")
		}
		switch {
		case a.JWKSURL == "" && a.IntrospectionURL == "":
			add("auth.jwks_url or auth.introspection_url is required with auth.mode smart-external")
		case a.JWKSURL != "" && a.IntrospectionURL != "":
			add("set auth.jwks_url or auth.introspection_url, not both")
		}
		absURL("auth.jwks_url", a.JWKSURL)
		absURL("auth.introspection_url", a.IntrospectionURL)
		absURL("auth.token_url", a.TokenURL)
		if (a.IntrospectionClientID == "") != (a.IntrospectionClientSecret == "") {
			add("auth.introspection_client_id and auth.introspection_client_secret go together")
		}
		if len(a.Clients) > 0 {
			add("auth.clients are only used with auth.mode smart-builtin")
		}
	case AuthSMARTBuiltin:
		if len(a.Clients) == 0 {
			add("auth.clients: at least one client is required with auth.mode smart-builtin")
		}
		ids := map[string]bool{}
		for i, cl := range a.Clients {
			switch {
			case cl.ID == "":
				add("auth.clients[%d]: id is required", i)
			case ids[cl.ID]:
				add("auth.clients[%d]: id %q appears twice", i, cl.ID)
			}
			ids[cl.ID] = true
			if (cl.JWKSURL == "") == (cl.JWKS == "") {
				add("auth.clients[%d]: set exactly one of jwks_url and jwks", i)
			}
			absURL(fmt.Sprintf("auth.clients[%d].jwks_url", i), cl.JWKSURL)
			if cl.JWKS != "" && !json.Valid([]byte(cl.JWKS)) {
				add("auth.clients[%d].jwks is not valid JSON", i)
			}
			if strings.TrimSpace(cl.Scopes) == "" {
				add("auth.clients[%d]: scopes are required (e.g. system/*.read)", i)
			}
		}
		if a.TokenTTL == 0 {
			a.TokenTTL = MaxTokenTTL
		}
		if a.TokenTTL < time.Second || a.TokenTTL > MaxTokenTTL {
			add("auth.token_ttl must be between 1s and %s", FormatDuration(MaxTokenTTL))
		}
	default:
		add("auth.mode %q must be one of %s", a.Mode, strings.Join(AuthModes, ", "))
	}

	u := &c.UpstreamAuth
	u.Mode = strings.ToLower(strings.TrimSpace(u.Mode))
	if u.Mode == "" {
		u.Mode = UpstreamAuthNone
	}
	need := func(key string, empty bool) {
		if empty {
			add("upstream_auth.%s is required with upstream_auth.mode %s", key, u.Mode)
		}
	}
	switch u.Mode {
	case UpstreamAuthNone:
	case UpstreamAuthBearer:
		need("token", strings.TrimSpace(string(u.Token)) == "")
	case UpstreamAuthClientSecret:
		need("token_url", u.TokenURL == "")
		need("client_id", u.ClientID == "")
		need("client_secret", u.ClientSecret == "")
		absURL("upstream_auth.token_url", u.TokenURL)
	case UpstreamAuthBackendServices:
		need("token_url", u.TokenURL == "")
		need("client_id", u.ClientID == "")
		need("private_key_file", u.PrivateKeyFile == "")
		absURL("upstream_auth.token_url", u.TokenURL)
	default:
		add("upstream_auth.mode %q must be one of %s", u.Mode, strings.Join(UpstreamAuthModes, ", "))
	}

	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls.cert_file and tls.key_file go together")
	}

	for _, p := range []struct {
		key string
		v   int64
	}{
		{"limits.max_body_bytes", c.Limits.MaxBodyBytes},
		{"limits.max_header_bytes", c.Limits.MaxHeaderBytes},
		{"limits.read_header_timeout", int64(c.Limits.ReadHeaderTimeout)},
		{"limits.idle_timeout", int64(c.Limits.IdleTimeout)},
	} {
		if p.v <= 0 {
			add("%s must be > 0", p.key)
		}
	}
	return errs
}

// validHeaderName reports whether s is an HTTP header field name (RFC 9110
// token).
func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return s != ""
}
