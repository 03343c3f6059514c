package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestServerDropsConstrainedScopes: scopes with a query part
// (system/Observation.rs?category=...) are not granted: no kick-off and no
// download could use them. The rest of the request is granted; a request
// of nothing else is invalid_scope, saying why.
func TestServerDropsConstrainedScopes(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	for _, tc := range []struct{ scope, want string }{
		{"system/Patient.rs system/Observation.rs?category=laboratory", "system/Patient.rs"},
		{"system/Observation.rs?category=laboratory system/Observation.rs", "system/Observation.rs"},
	} {
		tok, _, granted, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "rs-client", e.rsaKey, "RS384", "rs1", tc.scope)
		if err != nil {
			t.Fatalf("%q: %v", tc.scope, err)
		}
		if granted != tc.want {
			t.Errorf("%q: granted %q, want %q", tc.scope, granted, tc.want)
		}
		id, err := e.srv.Authenticator().Authenticate(ctx, tok)
		if err != nil || id.Scopes.String() != tc.want {
			t.Errorf("%q: token scopes %v, err %v", tc.scope, id, err)
		}
	}
	_, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "rs-client", e.rsaKey, "RS384", "rs1",
		"system/Observation.rs?category=laboratory")
	var te *TokenError
	if !errors.As(err, &te) || te.Code != "invalid_scope" || te.StatusCode != 400 || !strings.Contains(te.Error(), "query part") {
		t.Errorf("only a constrained scope: %v", err)
	}
}

func TestSmartConfigurationPermissions(t *testing.T) {
	caps, _ := SmartConfiguration("https://x/token", nil)["capabilities"].([]string)
	for _, want := range []string{"client-confidential-asymmetric", "permission-v1", "permission-v2"} {
		found := false
		for _, c := range caps {
			found = found || c == want
		}
		if !found {
			t.Errorf("capabilities %v lack %s", caps, want)
		}
	}
}

func TestWithoutConstraints(t *testing.T) {
	kept, dropped := ParseScopes("openid system/Patient.rs system/Observation.rs?category=laboratory patient/Condition.rs?code=x").withoutConstraints()
	if kept.String() != "openid system/Patient.rs" {
		t.Errorf("kept %q", kept)
	}
	if strings.Join(dropped, " ") != "system/Observation.rs?category=laboratory patient/Condition.rs?code=x" {
		t.Errorf("dropped %q", dropped)
	}
}
