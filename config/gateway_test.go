package config

import (
	"strings"
	"testing"
)

func TestClientIDHeaderValidation(t *testing.T) {
	cases := []struct {
		header, trusted, mode string
		wantErr               string
	}{
		{"X-Client-Id", "10.0.0.1, 192.168.0.0/16, ::1", AuthNone, ""},
		{"", "", AuthNone, ""},
		{"X-Client-Id", "", AuthNone, "auth.trusted_proxies is required"},
		{"X-Client-Id", "10.0.0.0/33", AuthNone, "auth.trusted_proxies"},
		{"X-Client-Id", "gateway.local", AuthNone, "neither an IP address nor a CIDR"},
		{"X Client", "10.0.0.1", AuthNone, "not a valid header name"},
		{"X-Client-Id", "10.0.0.1", AuthSMARTExternal, "only used with auth.mode none"},
	}
	for _, c := range cases {
		cfg := Default()
		cfg.Upstream = "http://upstream.example/fhir"
		cfg.Auth.ClientIDHeader, cfg.Auth.TrustedProxies, cfg.Auth.Mode = c.header, c.trusted, c.mode
		if c.mode == AuthSMARTExternal {
			cfg.Auth.Issuer, cfg.Auth.Audience, cfg.Auth.JWKSURL = "https://iss", "https://aud", "https://iss/jwks"
		}
		err := cfg.Validate()
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%+v: %v", c, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%+v: error %v, want one containing %q", c, err, c.wantErr)
		}
	}
	a := AuthConfig{TrustedProxies: "10.0.0.1,10.1.0.0/16"}
	p, err := a.TrustedPrefixes()
	if err != nil || len(p) != 2 || p[0].String() != "10.0.0.1/32" || p[1].String() != "10.1.0.0/16" {
		t.Errorf("TrustedPrefixes = %v, %v", p, err)
	}
}
