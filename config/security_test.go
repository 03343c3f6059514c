package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestSecurityOptionsFromFileEnvFlags(t *testing.T) {
	p := writeFile(t, `
upstream: http://fhir.example.com/r4
auth:
  mode: smart-builtin
  token_ttl: 2m
  clients:
    - id: analytics
      jwks: '{"keys":[]}'
      scopes: system/*.read
    - id: payer
      jwks_url: https://payer.example/jwks.json
      scopes: [system/Patient.read, system/Coverage.rs]
    - id: mapped
      jwks:
        keys: []
      scopes: system/*.rs
upstream_auth:
  mode: client-secret
  token_url: https://idp.example/token
  client_id: proxy
  client_secret: file-secret
tls:
  cert_file: /etc/fbp/cert.pem
  key_file: /etc/fbp/key.pem
limits:
  max_body_bytes: 2MiB
`)
	c, err := Load(p, []string{"FBP_UPSTREAM_AUTH_CLIENT_SECRET=env-secret"}, []string{"--limits-idle-timeout", "30s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.Mode != AuthSMARTBuiltin || c.Auth.TokenTTL != 2*time.Minute || len(c.Auth.Clients) != 3 {
		t.Fatalf("auth = %+v", c.Auth)
	}
	if got := c.Auth.Clients[1]; got.JWKSURL != "https://payer.example/jwks.json" || got.Scopes != "system/Patient.read system/Coverage.rs" {
		t.Errorf("client 1 = %+v", got)
	}
	if got := c.Auth.Clients[2].JWKS; got != `{"keys":[]}` {
		t.Errorf("jwks mapping = %s", got)
	}
	if c.UpstreamAuth.ClientSecret != "env-secret" || c.Limits.MaxBodyBytes != 2<<20 || c.Limits.IdleTimeout != 30*time.Second {
		t.Errorf("env/flags not applied: %+v %+v", c.UpstreamAuth, c.Limits)
	}
	if !c.TLSEnabled() {
		t.Error("TLS not enabled")
	}

	// Clients from the environment, as a JSON or YAML flow list.
	c, err = Load("", []string{"FBP_UPSTREAM=http://u/fhir", "FBP_AUTH_MODE=smart-builtin",
		`FBP_AUTH_CLIENTS=[{"id":"a","jwks_url":"https://a.example/jwks","scopes":"system/*.read"}]`}, nil)
	if err != nil || len(c.Auth.Clients) != 1 || c.Auth.Clients[0].ID != "a" {
		t.Fatalf("env clients: %v %+v", err, c.Auth.Clients)
	}
	_, err = Load("", nil, []string{"--upstream", "http://u/fhir", "--auth-clients", "[{id: a, color: red}]"})
	if err == nil || !strings.Contains(err.Error(), `unknown client key "color"`) {
		t.Errorf("unknown client key: %v", err)
	}
}

func TestSecurityValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string // "" = valid
	}{
		{"none is the default", func(c *Config) {}, nil},
		{"unknown mode", func(c *Config) { c.Auth.Mode = "magic" }, []string{"auth.mode"}},
		{"external needs issuer, audience and keys", func(c *Config) { c.Auth.Mode = AuthSMARTExternal },
			[]string{"auth.issuer is required", "auth.audience is required", "auth.jwks_url or auth.introspection_url"}},
		{"external with jwks", func(c *Config) {
			c.Auth = AuthConfig{Mode: AuthSMARTExternal, Issuer: "https://i", Audience: "https://a", JWKSURL: "https://i/jwks"}
		}, nil},
		{"external introspection secret alone", func(c *Config) {
			c.Auth = AuthConfig{Mode: AuthSMARTExternal, Issuer: "https://i", Audience: "https://a",
				IntrospectionURL: "https://i/introspect", IntrospectionClientSecret: "hunter2-secret"}
		}, []string{"introspection_client_id and auth.introspection_client_secret go together"}},
		{"builtin needs clients", func(c *Config) { c.Auth.Mode = AuthSMARTBuiltin }, []string{"at least one client"}},
		{"builtin client problems", func(c *Config) {
			c.Auth.Mode = AuthSMARTBuiltin
			c.Auth.TokenTTL = time.Hour
			c.Auth.Clients = []AuthClient{{ID: "a"}, {ID: "a", JWKS: "{", JWKSURL: "x", Scopes: "system/*.read"}}
		}, []string{"token_ttl", "exactly one of jwks_url and jwks", "appears twice", "not valid JSON", "scopes are required"}},
		{"bearer needs token", func(c *Config) { c.UpstreamAuth.Mode = UpstreamAuthBearer }, []string{"upstream_auth.token is required"}},
		{"client-secret needs all", func(c *Config) { c.UpstreamAuth.Mode = UpstreamAuthClientSecret },
			[]string{"token_url is required", "client_id is required", "client_secret is required"}},
		{"backend-services needs key", func(c *Config) {
			c.UpstreamAuth = UpstreamAuthConfig{Mode: UpstreamAuthBackendServices, TokenURL: "https://t", ClientID: "p"}
		}, []string{"private_key_file is required"}},
		{"tls pair", func(c *Config) { c.TLS.CertFile = "c.pem" }, []string{"tls.cert_file and tls.key_file"}},
		{"limits", func(c *Config) { c.Limits.MaxBodyBytes = 0 }, []string{"limits.max_body_bytes must be > 0"}},
	} {
		c := Default()
		c.Upstream = testUpstream
		tc.mod(&c)
		err := c.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not mention %q: %v", tc.name, w, err)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error shows a secret: %v", tc.name, err)
		}
	}
}

func TestSecretsAreNotPrinted(t *testing.T) {
	c := Default()
	c.UpstreamAuth.Token = "tok-hunter2"
	c.UpstreamAuth.ClientSecret = "sec-hunter2"
	c.Auth.IntrospectionClientSecret = "intro-hunter2"
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(verb, c); strings.Contains(s, "hunter2") {
			t.Errorf("%s shows a secret: %s", verb, s)
		}
	}
	if string(c.UpstreamAuth.Token) != "tok-hunter2" {
		t.Error("the value itself is lost")
	}
}
