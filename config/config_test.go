package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const testUpstream = "http://localhost:8081/fhir"

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefault(t *testing.T) {
	c := Default()
	want := Config{
		Listen:  ":8080",
		DataDir: "./data",
		Log:     LogConfig{Level: "info", Format: "auto"},
		Export: ExportConfig{
			BatchSize: 1000, PageSize: 1000, MaxURLLength: 2000, Concurrency: 4, MaxJobs: 2,
			MaxFileSize: 256 * 1024 * 1024, Retention: 720 * time.Hour, RetryAfter: 4 * time.Second,
			MaxActivePerClient: 1, MaxActive: 10, PollThrottle: true, SliceSystemExports: true,
			AdaptiveConcurrency: true, MaxConcurrency: 16, DefaultTypes: "all",
		},
		UpstreamHTTP: UpstreamHTTPConfig{ResponseHeaderTimeout: 60 * time.Second, DialTimeout: 10 * time.Second, Retries: 5,
			GiveUpAfter: 15 * time.Minute},
		Auth:         AuthConfig{Mode: "none", TokenTTL: 300 * time.Second},
		UpstreamAuth: UpstreamAuthConfig{Mode: "none"},
		Limits: LimitsConfig{MaxBodyBytes: 1 << 20, MaxHeaderBytes: 64 << 10,
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second},
		Admin:   AdminConfig{MetricsToken: true, ReadyTimeout: 2 * time.Second},
		Cohorts: CohortsConfig{Enabled: true},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Default() = %+v, want %+v", c, want)
	}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "upstream is required") {
		t.Fatalf("Default().Validate() = %v, want upstream required", err)
	}
	c.Upstream = testUpstream
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() with upstream: %v", err)
	}
}

func TestOptionNames(t *testing.T) {
	want := map[string][2]string{
		"listen":                                {"FBP_LISTEN", "listen"},
		"upstream":                              {"FBP_UPSTREAM", "upstream"},
		"public_url":                            {"FBP_PUBLIC_URL", "public-url"},
		"base_path":                             {"FBP_BASE_PATH", "base-path"},
		"data_dir":                              {"FBP_DATA_DIR", "data-dir"},
		"log.level":                             {"FBP_LOG_LEVEL", "log-level"},
		"log.format":                            {"FBP_LOG_FORMAT", "log-format"},
		"export.batch_size":                     {"FBP_EXPORT_BATCH_SIZE", "export-batch-size"},
		"export.page_size":                      {"FBP_EXPORT_PAGE_SIZE", "export-page-size"},
		"export.max_url_length":                 {"FBP_EXPORT_MAX_URL_LENGTH", "export-max-url-length"},
		"export.concurrency":                    {"FBP_EXPORT_CONCURRENCY", "export-concurrency"},
		"export.max_jobs":                       {"FBP_EXPORT_MAX_JOBS", "export-max-jobs"},
		"export.max_file_size":                  {"FBP_EXPORT_MAX_FILE_SIZE", "export-max-file-size"},
		"export.retention":                      {"FBP_EXPORT_RETENTION", "export-retention"},
		"export.retry_after":                    {"FBP_EXPORT_RETRY_AFTER", "export-retry-after"},
		"export.max_active_per_client":          {"FBP_EXPORT_MAX_ACTIVE_PER_CLIENT", "export-max-active-per-client"},
		"export.max_active":                     {"FBP_EXPORT_MAX_ACTIVE", "export-max-active"},
		"export.max_patients":                   {"FBP_EXPORT_MAX_PATIENTS", "export-max-patients"},
		"export.fail_on_partial":                {"FBP_EXPORT_FAIL_ON_PARTIAL", "export-fail-on-partial"},
		"export.adaptive_concurrency":           {"FBP_EXPORT_ADAPTIVE_CONCURRENCY", "export-adaptive-concurrency"},
		"export.max_concurrency":                {"FBP_EXPORT_MAX_CONCURRENCY", "export-max-concurrency"},
		"export.max_rps":                        {"FBP_EXPORT_MAX_RPS", "export-max-rps"},
		"export.poll_throttle":                  {"FBP_EXPORT_POLL_THROTTLE", "export-poll-throttle"},
		"export.slice_system_exports":           {"FBP_EXPORT_SLICE_SYSTEM_EXPORTS", "export-slice-system-exports"},
		"upstream_http.response_header_timeout": {"FBP_UPSTREAM_HTTP_RESPONSE_HEADER_TIMEOUT", "upstream-response-header-timeout"},
		"upstream_http.dial_timeout":            {"FBP_UPSTREAM_HTTP_DIAL_TIMEOUT", "upstream-dial-timeout"},
		"upstream_http.retries":                 {"FBP_UPSTREAM_HTTP_RETRIES", "upstream-retries"},
		"upstream_http.ca_file":                 {"FBP_UPSTREAM_HTTP_CA_FILE", "upstream-ca-file"},
		"auth.mode":                             {"FBP_AUTH_MODE", "auth-mode"},
		"auth.issuer":                           {"FBP_AUTH_ISSUER", "auth-issuer"},
		"admin.listen":                          {"FBP_ADMIN_LISTEN", "admin-listen"},
		"admin.token":                           {"FBP_ADMIN_TOKEN", "admin-token"},
		"admin.metrics_token":                   {"FBP_ADMIN_METRICS_TOKEN", "admin-metrics-token"},
		"admin.ready_timeout":                   {"FBP_ADMIN_READY_TIMEOUT", "admin-ready-timeout"},
		"cohorts.enabled":                       {"FBP_COHORTS_ENABLED", "cohorts-enabled"},
		"cohorts.shared":                        {"FBP_COHORTS_SHARED", "cohorts-shared"},
		"cohorts.hold_member_lists":             {"FBP_COHORTS_HOLD_MEMBER_LISTS", "cohorts-hold-member-lists"},
		"auth.audience":                         {"FBP_AUTH_AUDIENCE", "auth-audience"},
		"auth.jwks_url":                         {"FBP_AUTH_JWKS_URL", "auth-jwks-url"},
		"auth.introspection_url":                {"FBP_AUTH_INTROSPECTION_URL", "auth-introspection-url"},
		"auth.introspection_client_id":          {"FBP_AUTH_INTROSPECTION_CLIENT_ID", "auth-introspection-client-id"},
		"auth.introspection_client_secret":      {"FBP_AUTH_INTROSPECTION_CLIENT_SECRET", "auth-introspection-client-secret"},
		"auth.token_url":                        {"FBP_AUTH_TOKEN_URL", "auth-token-url"},
		"auth.clients":                          {"FBP_AUTH_CLIENTS", "auth-clients"},
		"auth.token_ttl":                        {"FBP_AUTH_TOKEN_TTL", "auth-token-ttl"},
		"auth.client_id_header":                 {"FBP_AUTH_CLIENT_ID_HEADER", "auth-client-id-header"},
		"auth.trusted_proxies":                  {"FBP_AUTH_TRUSTED_PROXIES", "auth-trusted-proxies"},
		"upstream_auth.mode":                    {"FBP_UPSTREAM_AUTH_MODE", "upstream-auth-mode"},
		"upstream_auth.token":                   {"FBP_UPSTREAM_AUTH_TOKEN", "upstream-auth-token"},
		"upstream_auth.token_url":               {"FBP_UPSTREAM_AUTH_TOKEN_URL", "upstream-auth-token-url"},
		"upstream_auth.client_id":               {"FBP_UPSTREAM_AUTH_CLIENT_ID", "upstream-auth-client-id"},
		"upstream_auth.client_secret":           {"FBP_UPSTREAM_AUTH_CLIENT_SECRET", "upstream-auth-client-secret"},
		"upstream_auth.scopes":                  {"FBP_UPSTREAM_AUTH_SCOPES", "upstream-auth-scopes"},
		"upstream_auth.private_key_file":        {"FBP_UPSTREAM_AUTH_PRIVATE_KEY_FILE", "upstream-auth-private-key-file"},
		"upstream_auth.key_id":                  {"FBP_UPSTREAM_AUTH_KEY_ID", "upstream-auth-key-id"},
		"upstream_auth.alg":                     {"FBP_UPSTREAM_AUTH_ALG", "upstream-auth-alg"},
		"upstream_auth.scope":                   {"FBP_UPSTREAM_AUTH_SCOPE", "upstream-auth-scope"},
		"tls.cert_file":                         {"FBP_TLS_CERT_FILE", "tls-cert-file"},
		"export.default_types":                  {"FBP_EXPORT_DEFAULT_TYPES", "export-default-types"},
		"upstream_http.give_up_after":           {"FBP_UPSTREAM_HTTP_GIVE_UP_AFTER", "upstream-give-up-after"},
		"tls.key_file":                          {"FBP_TLS_KEY_FILE", "tls-key-file"},
		"limits.max_body_bytes":                 {"FBP_LIMITS_MAX_BODY_BYTES", "limits-max-body-bytes"},
		"limits.max_header_bytes":               {"FBP_LIMITS_MAX_HEADER_BYTES", "limits-max-header-bytes"},
		"limits.read_header_timeout":            {"FBP_LIMITS_READ_HEADER_TIMEOUT", "limits-read-header-timeout"},
		"limits.idle_timeout":                   {"FBP_LIMITS_IDLE_TIMEOUT", "limits-idle-timeout"},
		"store.url":                             {"FBP_STORE_URL", "store-url"},
		"store.replica_id":                      {"FBP_STORE_REPLICA_ID", "store-replica-id"},
		"store.lease_ttl":                       {"FBP_STORE_LEASE_TTL", "store-lease-ttl"},
		"files.url":                             {"FBP_FILES_URL", "files-url"},
		"files.redirect":                        {"FBP_FILES_REDIRECT", "files-redirect"},
		"files.s3.endpoint":                     {"FBP_FILES_S3_ENDPOINT", "files-s3-endpoint"},
		"files.s3.region":                       {"FBP_FILES_S3_REGION", "files-s3-region"},
		"files.s3.path_style":                   {"FBP_FILES_S3_PATH_STYLE", "files-s3-path-style"},
	}
	got := map[string][2]string{}
	for _, o := range Options() {
		got[o.Key] = [2]string{o.Env, o.Flag}
		if o.Usage == "" {
			t.Errorf("%s has no usage text", o.Key)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("options = %v\nwant %v", got, want)
	}
}

func TestLoadFile(t *testing.T) {
	p := writeFile(t, `
listen: "127.0.0.1:9000"
upstream: http://fhir.example.com/r4/
data_dir: /var/lib/fbp
log:
  level: DEBUG
export:
  batch_size: 50
  max_file_size: 100MB
  retention: 7d
upstream_http:
  dial_timeout: 3s
  retries: 0
`)
	c, err := Load(p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Listen = "127.0.0.1:9000"
	want.Upstream = "http://fhir.example.com/r4" // trailing slash trimmed
	want.DataDir = "/var/lib/fbp"
	want.Log.Level = "debug"
	want.Export.BatchSize = 50
	want.Export.MaxFileSize = 100_000_000
	want.Export.Retention = 7 * 24 * time.Hour
	want.UpstreamHTTP.DialTimeout = 3 * time.Second
	want.UpstreamHTTP.Retries = 0
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load = %+v\nwant   %+v", c, want)
	}
}

func TestLoadEmptyFile(t *testing.T) {
	p := writeFile(t, "# nothing here\n")
	c, err := Load(p, nil, []string{"--upstream", testUpstream})
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Upstream = testUpstream
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load = %+v, want %+v", c, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil, nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

func TestEnvOverridesFile(t *testing.T) {
	p := writeFile(t, "upstream: http://file/fhir\nexport:\n  batch_size: 10\n  page_size: 20\n")
	env := []string{
		"PATH=/bin",
		"FBP_UPSTREAM=http://env/fhir",
		"FBP_EXPORT_BATCH_SIZE=30",
		"FBP_EXPORT_PAGE_SIZE=", // empty: unset
		"FBP_UPSTREAM_HTTP_RESPONSE_HEADER_TIMEOUT=2m",
		"FBP_EXPORT_MAX_FILE_SIZE=1GiB",
		"FBP_LOG_FORMAT=console",
	}
	c, err := Load(p, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream != "http://env/fhir" || c.Export.BatchSize != 30 || c.Export.PageSize != 20 ||
		c.UpstreamHTTP.ResponseHeaderTimeout != 2*time.Minute || c.Export.MaxFileSize != 1<<30 ||
		c.Log.Format != "console" {
		t.Fatalf("Load = %+v", c)
	}
}

func TestFlagOverridesEnv(t *testing.T) {
	p := writeFile(t, "upstream: http://file/fhir\nexport:\n  concurrency: 1\n  max_jobs: 3\n")
	env := []string{"FBP_UPSTREAM=http://env/fhir", "FBP_EXPORT_CONCURRENCY=2", "FBP_LISTEN=:1"}
	args := []string{
		"--upstream=http://flag/fhir",
		"--export-concurrency", "8",
		"-export-retention=30d",
		"--upstream-response-header-timeout", "90s",
		"--export-max-file-size", "1024",
	}
	c, err := Load(p, env, args)
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream != "http://flag/fhir" || c.Export.Concurrency != 8 || c.Export.MaxJobs != 3 ||
		c.Listen != ":1" || c.Export.Retention != 720*time.Hour ||
		c.UpstreamHTTP.ResponseHeaderTimeout != 90*time.Second || c.Export.MaxFileSize != 1024 {
		t.Fatalf("Load = %+v", c)
	}
}

func TestFlagsOnlySetOverride(t *testing.T) {
	// A flag not given must not reset a value from env to its default.
	c, err := Load("", []string{"FBP_EXPORT_BATCH_SIZE=7"}, []string{"--upstream", testUpstream})
	if err != nil {
		t.Fatal(err)
	}
	if c.Export.BatchSize != 7 {
		t.Fatalf("batch_size = %d, want 7", c.Export.BatchSize)
	}
	// A flag given with the default value still overrides.
	c, err = Load("", []string{"FBP_EXPORT_BATCH_SIZE=7"}, []string{"--upstream", testUpstream, "--export-batch-size=200"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Export.BatchSize != 200 {
		t.Fatalf("batch_size = %d, want 200", c.Export.BatchSize)
	}
}

func TestConfigPathPrecedence(t *testing.T) {
	a := writeFile(t, "upstream: http://a/fhir\n")
	b := writeFile(t, "upstream: http://b/fhir\n")
	cf := writeFile(t, "upstream: http://c/fhir\n")
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"param", nil, nil, "http://a/fhir"},
		{"env", []string{"FBP_CONFIG=" + b}, nil, "http://b/fhir"},
		{"flag", []string{"FBP_CONFIG=" + b}, []string{"--config", cf}, "http://c/fhir"},
	} {
		c, err := Load(a, tc.env, tc.args)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.Upstream != tc.want {
			t.Errorf("%s: upstream = %q, want %q", tc.name, c.Upstream, tc.want)
		}
	}
}

func TestFlagsAloneAreEnough(t *testing.T) {
	c, err := Load("", nil, []string{"--upstream", testUpstream, "--listen", ":9090", "--data-dir", "/tmp/x",
		"--log-level", "warn", "--log-format", "console", "--public-url", "https://proxy.example.com/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream != testUpstream || c.Listen != ":9090" || c.DataDir != "/tmp/x" || c.Log.Level != "warn" ||
		c.Log.Format != "console" || c.BasePath != "/fhir" {
		t.Fatalf("Load = %+v", c)
	}
}

func TestUnknownKey(t *testing.T) {
	p := writeFile(t, "upstream: http://x/fhir\nexport:\n  batchsize: 10\nlsten: ':1'\n")
	_, err := Load(p, nil, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`unknown key "export.batchsize"`, `line 3`, `unknown key "lsten"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestBadYAML(t *testing.T) {
	for name, content := range map[string]string{
		"section scalar": "export: 5\n",
		"leaf mapping":   "listen:\n  a: b\n",
		"repeated key":   "listen: ':1'\nlisten: ':2'\n",
		"bad int":        "export:\n  batch_size: many\n",
		"not a mapping":  "- a\n- b\n",
		"syntax":         "listen: [\n",
	} {
		if _, err := Load(writeFile(t, content), nil, []string{"--upstream", testUpstream}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBadDuration(t *testing.T) {
	_, err := Load(writeFile(t, "export:\n  retry_after: soon\n"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "export.retry_after") || !strings.Contains(err.Error(), `"soon"`) {
		t.Fatalf("file: err = %v", err)
	}
	_, err = Load("", []string{"FBP_EXPORT_RETENTION=30"}, nil)
	if err == nil || !strings.Contains(err.Error(), "FBP_EXPORT_RETENTION") {
		t.Fatalf("env: err = %v", err)
	}
	_, err = Load("", nil, []string{"--upstream-dial-timeout", "10 parsecs"})
	if err == nil || !strings.Contains(err.Error(), "upstream-dial-timeout") {
		t.Fatalf("flag: err = %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"30s":   30 * time.Second,
		"720h":  720 * time.Hour,
		"1h30m": 90 * time.Minute,
		"30d":   30 * 24 * time.Hour,
		"1d":    24 * time.Hour,
		"1.5d":  36 * time.Hour,
		"1d12h": 36 * time.Hour,
		" 2d ":  48 * time.Hour,
		"0":     0,
		"-1d":   -24 * time.Hour,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "30", "d", "xd", "1d-1h", "1e2d", "abc", "1dd", "99999999999d"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want error", in, got)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"268435456": 268435456,
		"256MiB":    256 << 20,
		"256mib":    256 << 20,
		"100MB":     100_000_000,
		"1GiB":      1 << 30,
		"1 GiB":     1 << 30,
		"1.5KiB":    1536,
		"10KB":      10_000,
		"2TiB":      2 << 40,
		"7B":        7,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "12XB", "1.2.3MB", "99999999TiB", "ten"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %v, want error", in, got)
		}
	}
	for n, want := range map[int64]string{256 << 20: "256MiB", 1000: "1000", 0: "0", 3 << 30: "3GiB"} {
		if got := FormatByteSize(n); got != want {
			t.Errorf("FormatByteSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestSizesFromAllSources(t *testing.T) {
	c, err := Load(writeFile(t, "upstream: http://x/fhir\nexport:\n  max_file_size: 1GiB\n"), nil, nil)
	if err != nil || c.Export.MaxFileSize != 1<<30 {
		t.Fatalf("file: %v %d", err, c.Export.MaxFileSize)
	}
	c, err = Load("", []string{"FBP_EXPORT_MAX_FILE_SIZE=100MB"}, []string{"--upstream", testUpstream})
	if err != nil || c.Export.MaxFileSize != 100_000_000 {
		t.Fatalf("env: %v %d", err, c.Export.MaxFileSize)
	}
	_, err = Load("", nil, []string{"--upstream", testUpstream, "--export-max-file-size", "lots"})
	if err == nil || !strings.Contains(err.Error(), "export-max-file-size") {
		t.Fatalf("flag: err = %v", err)
	}
}

func TestValidationErrorsTogether(t *testing.T) {
	c := Default()
	c.Listen = ""
	c.Upstream = "ftp://x/fhir"
	c.PublicURL = "/relative"
	c.Log.Level = "loud"
	c.Log.Format = "xml"
	c.Export.BatchSize = 0
	c.Export.PageSize = -1
	c.Export.MaxFileSize = 0
	c.Export.Retention = 0
	c.UpstreamHTTP.Retries = -1
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"listen must not be empty",
		"upstream",
		"public_url",
		"log.level",
		"log.format",
		"export.batch_size must be > 0",
		"export.page_size must be > 0",
		"export.max_file_size must be > 0",
		"export.retention must be > 0",
		"upstream_http.retries must be >= 0",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != 10 {
		t.Errorf("got %d errors, want 10:\n%v", n, err)
	}
}

func TestLoadValidates(t *testing.T) {
	_, err := Load("", []string{"FBP_EXPORT_BATCH_SIZE=0"}, nil)
	if err == nil || !strings.Contains(err.Error(), "upstream is required") ||
		!strings.Contains(err.Error(), "export.batch_size must be > 0") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidatePlaceholders(t *testing.T) {
	for _, tc := range []struct {
		name, upstream, public, base string
		wantErr                      string // "" = valid
		wantBase                     string
	}{
		{"plain", "http://u/fhir", "", "/fhir", "", "/fhir"},
		{"root", "http://u/fhir", "", "", "", ""},
		{"trailing slash", "http://u/fhir/", "", "/fhir/", "", "/fhir"},
		{"base from public", "http://u/fhir", "https://p.example.com/api/fhir", "", "", "/api/fhir"},
		{"tenant", "http://u/{tenant}/fhir", "https://p/r4/{tenant}", "/r4/{tenant}", "", "/r4/{tenant}"},
		{"tenant from public", "http://u/t-{tenant}", "https://p/r4/{tenant}", "", "", "/r4/{tenant}"},
		{"no leading slash", "http://u/fhir", "", "fhir", "base_path \"fhir\" must start with /", ""},
		{"partial segment", "http://u/{t}", "", "/r4/x{t}", "whole segment", ""},
		{"bad name", "http://u/{t-1}", "", "/r4/{t-1}", "not a valid name", ""},
		{"duplicate", "http://u/{t}", "", "/{t}/{t}", "appears twice", ""},
		{"unknown in upstream", "http://u/{tenant}/{x}", "", "/r4/{tenant}", "placeholder {x} is not in base_path", ""},
		{"unknown in public", "http://u/{tenant}", "https://p/{other}", "/r4/{tenant}", "public_url", ""},
		{"missing in upstream", "http://u/fhir", "", "/r4/{tenant}", "must contain the base_path placeholder {tenant}", ""},
		{"placeholder in host", "http://{tenant}.u/fhir", "", "/r4/{tenant}", "only allowed in the path", ""},
		{"relative upstream", "u/fhir", "", "", "absolute http or https", ""},
		{"upstream query", "http://u/fhir?x=1", "", "", "query", ""},
		{"reserved admin", "http://u/fhir", "", "/admin/fhir", "must not start with /admin", ""},
		{"reserved metrics", "http://u/fhir", "", "/metrics", "must not start with /metrics", ""},
		{"reserved healthz", "http://u/fhir", "https://p/healthz", "", "must not start with /healthz", ""},
		{"prefix of reserved is fine", "http://u/fhir", "", "/administration", "", "/administration"},
	} {
		c := Default()
		c.Upstream, c.PublicURL, c.BasePath = tc.upstream, tc.public, tc.base
		err := c.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.wantErr)
		case tc.wantErr == "" && c.BasePath != tc.wantBase:
			t.Errorf("%s: base_path = %q, want %q", tc.name, c.BasePath, tc.wantBase)
		}
	}
}

func TestHelpAndBadArgs(t *testing.T) {
	if _, err := Load("", nil, []string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: err = %v, want flag.ErrHelp", err)
	}
	if _, err := Load("", nil, []string{"--no-such-flag"}); err == nil {
		t.Error("unknown flag: no error")
	}
	if _, err := Load("", nil, []string{"--upstream", testUpstream, "extra"}); err == nil {
		t.Error("positional argument: no error")
	}
}

func TestUsage(t *testing.T) {
	u := Usage()
	for _, want := range []string{"--config FILE", "--export-batch-size N", "default 1000", "FBP_EXPORT_BATCH_SIZE",
		"--upstream-response-header-timeout DURATION", "default 256MiB", "default 720h"} {
		if !strings.Contains(u, want) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
	for _, o := range Options() {
		if !strings.Contains(u, "--"+o.Flag+" ") && !strings.Contains(u, "--"+o.Flag+"[=BOOL]") {
			t.Errorf("usage lacks --%s", o.Flag)
		}
	}
}

func TestExampleFile(t *testing.T) {
	const path = "../config.example.yaml"
	c, err := Load(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Upstream = testUpstream
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("example = %+v\nwant    %+v", c, want)
	}

	// Every option is spelled out in the example.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
			} else {
				keys = append(keys, prefix+k)
			}
		}
	}
	walk("", doc)
	var wantKeys []string
	for _, o := range Options() {
		wantKeys = append(wantKeys, o.Key)
	}
	sort.Strings(keys)
	sort.Strings(wantKeys)
	if !reflect.DeepEqual(keys, wantKeys) {
		t.Fatalf("example keys = %v\nwant %v", keys, wantKeys)
	}
}

func TestBoolOption(t *testing.T) {
	cfg, err := Load("", []string{"FBP_UPSTREAM=http://up/fhir", "FBP_EXPORT_POLL_THROTTLE=false"}, nil)
	if err != nil || cfg.Export.PollThrottle {
		t.Fatalf("env false: %v %v", cfg.Export.PollThrottle, err)
	}
	// The older spelling with a separate value still works.
	cfg, err = Load("", []string{"FBP_UPSTREAM=http://up/fhir", "FBP_EXPORT_POLL_THROTTLE=false"}, []string{"--export-poll-throttle", "true"})
	if err != nil || !cfg.Export.PollThrottle {
		t.Fatalf("flag true: %v %v", cfg.Export.PollThrottle, err)
	}
	if _, err := Load("", []string{"FBP_UPSTREAM=http://up/fhir", "FBP_EXPORT_POLL_THROTTLE=maybe"}, nil); err == nil {
		t.Fatal("maybe accepted as a boolean")
	}
	if _, err := Load("", []string{"FBP_UPSTREAM=http://up/fhir", "FBP_EXPORT_MAX_ACTIVE=-1"}, nil); err == nil {
		t.Fatal("negative max_active accepted")
	}
}
