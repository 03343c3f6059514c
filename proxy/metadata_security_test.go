package proxy

import (
	"encoding/json"
	"testing"
)

func TestAddSMARTSecurity(t *testing.T) {
	var cs map[string]any
	if err := json.Unmarshal([]byte(`{"resourceType":"CapabilityStatement","rest":[{"mode":"server","security":{
		"cors":true,
		"extension":[{"url":"http://example.org/other"},
			{"url":"`+OAuthURIsExtension+`","extension":[{"url":"token","valueUri":"https://upstream/token"}]}],
		"service":[{"coding":[{"system":"`+SecurityServiceSystem+`","code":"`+SecurityServiceSMART+`"}]}]}}]}`), &cs); err != nil {
		t.Fatal(err)
	}
	AddSMARTSecurity(cs, "https://proxy/fhir/auth/token")
	AddSMARTSecurity(cs, "https://proxy/fhir/auth/token") // idempotent
	sec := cs["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
	if sec["cors"] != true {
		t.Error("other security content lost")
	}
	if n := len(sec["service"].([]any)); n != 1 {
		t.Errorf("%d services, want 1", n)
	}
	exts := sec["extension"].([]any)
	if len(exts) != 2 {
		t.Fatalf("extensions = %v", exts)
	}
	oauth := exts[1].(map[string]any)
	tok := oauth["extension"].([]any)[0].(map[string]any)
	if oauth["url"] != OAuthURIsExtension || tok["url"] != "token" || tok["valueUri"] != "https://proxy/fhir/auth/token" {
		t.Errorf("oauth-uris = %v", oauth)
	}

	// With a client-mode rest entry first, SMART goes to the server one.
	var two map[string]any
	if err := json.Unmarshal([]byte(`{"resourceType":"CapabilityStatement","rest":[{"mode":"client"},{"mode":"server"}]}`), &two); err != nil {
		t.Fatal(err)
	}
	AddSMARTSecurity(two, "https://proxy/fhir/auth/token")
	rests := two["rest"].([]any)
	if _, ok := rests[0].(map[string]any)["security"]; ok {
		t.Error("security added to the client-mode rest entry")
	}
	if _, ok := rests[1].(map[string]any)["security"]; !ok {
		t.Error("no security on the server-mode rest entry")
	}

	bare := map[string]any{"resourceType": "CapabilityStatement"}
	AddSMARTSecurity(bare, "")
	sec = bare["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
	if sec["extension"] != nil || len(sec["service"].([]any)) != 1 {
		t.Errorf("without a token URL: %v", sec)
	}
}
