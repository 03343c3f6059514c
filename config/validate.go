package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// ReservedPaths are the root paths of the operator surface (health,
// metrics, admin), which the FHIR base must not use.
var ReservedPaths = []string{"/healthz", "/readyz", "/metrics", "/admin"}

// LogLevels and LogFormats are the accepted values of log.level and log.format.
var (
	LogLevels  = []string{"trace", "debug", "info", "warn", "error"}
	LogFormats = []string{"json", "console", "auto"}
)

var (
	placeholderRE = regexp.MustCompile(`\{([^{}/]*)\}`)
	nameRE        = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate checks c and normalizes it: trailing slashes are trimmed from
// upstream, public_url and base_path; an empty base_path becomes the path of
// public_url; log level and format are lower-cased; empty auth and
// upstream_auth modes become "none". All problems are
// returned joined, each naming its key, e.g. "export.batch_size must be > 0".
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if strings.TrimSpace(c.Listen) == "" {
		add("listen must not be empty")
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen %q must be host:port (e.g. :8080)", c.Listen)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		add("data_dir must not be empty")
	}

	c.Upstream = strings.TrimRight(c.Upstream, "/")
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")

	// base_path, defaulting to the path of public_url.
	if c.BasePath == "" && c.PublicURL != "" {
		if _, path, err := splitURL(c.PublicURL); err == nil {
			c.BasePath = path
		}
	}
	c.BasePath = strings.TrimRight(c.BasePath, "/")
	names, err := basePathPlaceholders(c.BasePath)
	if err != nil {
		errs = append(errs, err)
	}
	// The operator routes sit at the root, outside the FHIR base.
	for _, reserved := range ReservedPaths {
		if first, _, _ := strings.Cut(strings.TrimPrefix(c.BasePath, "/"), "/"); "/"+first == reserved {
			add("base_path %q must not start with %s: the proxy serves it itself", c.BasePath, reserved)
		}
	}

	if c.Upstream == "" {
		add("upstream is required (e.g. http://localhost:8081/fhir)")
	} else {
		errs = append(errs, checkURL("upstream", c.Upstream, names)...)
	}
	if c.PublicURL != "" {
		errs = append(errs, checkURL("public_url", c.PublicURL, names)...)
	}

	c.Log.Level = strings.ToLower(strings.TrimSpace(c.Log.Level))
	if !slices.Contains(LogLevels, c.Log.Level) {
		add("log.level %q must be one of %s", c.Log.Level, strings.Join(LogLevels, ", "))
	}
	c.Log.Format = strings.ToLower(strings.TrimSpace(c.Log.Format))
	if !slices.Contains(LogFormats, c.Log.Format) {
		add("log.format %q must be one of %s", c.Log.Format, strings.Join(LogFormats, ", "))
	}

	positive := []struct {
		key string
		v   int64
	}{
		{"export.batch_size", int64(c.Export.BatchSize)},
		{"export.page_size", int64(c.Export.PageSize)},
		{"export.max_url_length", int64(c.Export.MaxURLLength)},
		{"export.concurrency", int64(c.Export.Concurrency)},
		{"export.max_jobs", int64(c.Export.MaxJobs)},
		{"export.max_concurrency", int64(c.Export.MaxConcurrency)},
		{"export.max_file_size", c.Export.MaxFileSize},
		{"export.retention", int64(c.Export.Retention)},
		{"export.retry_after", int64(c.Export.RetryAfter)},
		{"upstream_http.response_header_timeout", int64(c.UpstreamHTTP.ResponseHeaderTimeout)},
		{"upstream_http.dial_timeout", int64(c.UpstreamHTTP.DialTimeout)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			add("%s must be > 0", p.key)
		}
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"export.max_active_per_client", c.Export.MaxActivePerClient}, {"export.max_active", c.Export.MaxActive}, {"export.max_patients", c.Export.MaxPatients}, {"export.max_rps", c.Export.MaxRPS}} {
		if n.v < 0 {
			add("%s must be >= 0", n.key)
		}
	}
	if c.UpstreamHTTP.Retries < 0 {
		add("upstream_http.retries must be >= 0")
	}
	if c.UpstreamHTTP.GiveUpAfter < 0 {
		add("upstream_http.give_up_after must be >= 0")
	}
	if _, err := exporter.ParseTypePolicy(c.Export.DefaultTypes); err != nil {
		add("export.default_types: %v", err)
	}
	if c.Admin.ReadyTimeout <= 0 {
		add("admin.ready_timeout must be > 0")
	}
	if t := string(c.Admin.Token); t != "" && len(t) < 16 {
		add("admin.token must be at least 16 characters")
	}
	if c.Admin.Listen != "" && c.Admin.Listen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
		add("admin.listen must differ from listen (leave it empty to serve admin routes on the main listener)")
	}
	if u := string(c.Store.URL); u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") {
		// The URL may hold a password: name the scheme only.
		scheme, _, _ := strings.Cut(u, ":")
		add("store.url must be empty (bbolt in data_dir) or a postgres:// URL, not %q:...", scheme)
	}
	if c.Files.URL != "" {
		if _, _, err := ParseS3URL(c.Files.URL); err != nil {
			add("files.url: %v", err)
		}
	}
	switch c.Files.Redirect {
	case "":
	case "presigned":
		if c.Files.URL == "" {
			add("files.redirect: presigned needs files.url s3://...")
		}
	default:
		add("files.redirect must be empty or presigned, not %q", c.Files.Redirect)
	}
	errs = append(errs, c.validateSecurity()...)
	return errors.Join(errs...)
}

// ParseS3URL splits files.url "s3://bucket/prefix" into the bucket and the
// key prefix ("" or ending in "/").
func ParseS3URL(s string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return "", "", fmt.Errorf("%q must be empty (data_dir/files) or s3://bucket/prefix", s)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fmt.Errorf("%q names no bucket", s)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return bucket, prefix, nil
}

// basePathPlaceholders checks base_path and returns the names of its
// placeholders, in order.
func basePathPlaceholders(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("base_path %q must start with /", p)
	}
	var errs []error
	var names []string
	for seg := range strings.SplitSeq(p[1:], "/") {
		switch {
		case seg == "":
			errs = append(errs, fmt.Errorf("base_path %q has an empty segment", p))
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}"):
			name := seg[1 : len(seg)-1]
			if !nameRE.MatchString(name) {
				errs = append(errs, fmt.Errorf("base_path placeholder %q is not a valid name", seg))
			} else if slices.Contains(names, name) {
				errs = append(errs, fmt.Errorf("base_path placeholder %q appears twice", seg))
			} else {
				names = append(names, name)
			}
		case strings.ContainsAny(seg, "{}"):
			errs = append(errs, fmt.Errorf("base_path segment %q: a placeholder must be a whole segment such as {tenant}", seg))
		case strings.ContainsAny(seg, "?#%"):
			errs = append(errs, fmt.Errorf("base_path segment %q must not contain ?, # or %%", seg))
		}
	}
	return names, errors.Join(errs...)
}

// checkURL checks that raw is an absolute http(s) URL whose path uses every
// placeholder in names and no others.
func checkURL(key, raw string, names []string) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	authority, path, err := splitURL(raw)
	if err != nil {
		return []error{fmt.Errorf("%s %q: %v", key, raw, err)}
	}
	if strings.ContainsAny(authority, "{}") {
		add("%s %q: placeholders are only allowed in the path", key, raw)
	}
	used := map[string]bool{}
	for _, m := range placeholderRE.FindAllStringSubmatch(path, -1) {
		used[m[1]] = true
		if !slices.Contains(names, m[1]) {
			add("%s %q: placeholder %s is not in base_path", key, raw, m[0])
		}
	}
	for _, n := range names {
		if !used[n] {
			add("%s %q must contain the base_path placeholder {%s}", key, raw, n)
		}
	}
	return errs
}

// splitURL parses an absolute http(s) URL that may contain {name}
// placeholders and returns its authority and path.
func splitURL(raw string) (authority, path string, err error) {
	plain := placeholderRE.ReplaceAllString(raw, "x")
	u, err := url.Parse(plain)
	if err != nil {
		return "", "", errors.New("not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", errors.New("must be an absolute http or https URL")
	}
	if u.Host == "" {
		return "", "", errors.New("must have a host")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return "", "", errors.New("must not contain user info, a query or a fragment")
	}
	if strings.ContainsAny(placeholderRE.ReplaceAllString(raw, ""), "{}") {
		return "", "", errors.New("has an unbalanced { or }")
	}
	// Cut the original (placeholders intact) after "scheme://".
	rest := raw[len(u.Scheme)+len("://"):]
	authority, path = rest, ""
	if i := strings.Index(rest, "/"); i >= 0 {
		authority, path = rest[:i], rest[i:]
	}
	return authority, path, nil
}
