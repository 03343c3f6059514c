// Package config turns a YAML file, FBP_* environment variables and
// command-line flags into one validated Config. Precedence, lowest first:
// defaults, file, environment, flags.
package config

import "time"

// Config is the whole configuration of `fhir-bulk-proxy serve`.
//
// Every leaf field is one option, declared once here: its yaml tag gives the
// file key (sections joined with "."), the environment variable (FBP_ + the
// upper-cased path joined with "_") and the flag (the path joined with "-";
// a section's `flag` tag replaces its name in flags). The `usage` tag is the
// flag help. time.Duration fields accept Go durations and days ("30d");
// int64 fields are byte sizes ("256MiB").
type Config struct {
	// Listen is the address the proxy listens on. Default ":8080".
	Listen string `yaml:"listen" usage:"address to listen on, host:port"`
	// Upstream is the base URL of the FHIR server behind the proxy. Its path
	// may contain the placeholders of BasePath, such as {tenant}. Required.
	Upstream string `yaml:"upstream" usage:"base URL of the upstream FHIR R4 server; required"`
	// PublicURL is the FHIR base URL clients see, used in Content-Location
	// and manifest URLs; it may contain the placeholders of BasePath. When
	// empty, it is built from the request's Host header and BasePath.
	PublicURL string `yaml:"public_url" usage:"FHIR base URL clients see; empty: built from the Host header"`
	// BasePath is the path prefix the FHIR base is served under ("/fhir",
	// "/r4/{tenant}"). Default: the path of PublicURL, or "" (the root).
	BasePath string `yaml:"base_path" usage:"path prefix of the FHIR base, e.g. /fhir or /r4/{tenant}; empty: path of public_url"`
	// DataDir holds the job store (jobs.db) and exported files. Default "./data".
	DataDir string `yaml:"data_dir" usage:"directory for the job store and exported files"`

	Log    LogConfig    `yaml:"log"`
	Export ExportConfig `yaml:"export"`
	// UpstreamHTTP tunes the connections to the upstream.
	UpstreamHTTP UpstreamHTTPConfig `yaml:"upstream_http" flag:"upstream"`

	// Auth is inbound authorization of the bulk data routes.
	Auth AuthConfig `yaml:"auth"`
	// UpstreamAuth are the credentials export jobs present to the upstream.
	UpstreamAuth UpstreamAuthConfig `yaml:"upstream_auth"`
	// TLS serves HTTPS when both files are set.
	TLS TLSConfig `yaml:"tls"`
	// Limits bound what clients may send.
	Limits LimitsConfig `yaml:"limits"`
	// Admin configures the operator surface: /metrics, /admin and health.
	Admin AdminConfig `yaml:"admin"`
	// Cohorts configures the Bulk Cohort API (Groups the proxy holds).
	Cohorts CohortsConfig `yaml:"cohorts"`
	// Store is where jobs, work units and cohorts are kept.
	Store StoreConfig `yaml:"store"`
	// Files is where exported files are kept.
	Files FilesConfig `yaml:"files"`
}

// StoreConfig chooses the job store.
type StoreConfig struct {
	// URL is empty for the embedded bbolt file DataDir/jobs.db, or a
	// postgres:// (postgresql://) URL for PostgreSQL. It may hold a
	// password: it is a Secret and never logged.
	URL Secret `yaml:"url" usage:"job store: empty for bbolt in data_dir, or a postgres:// URL"`
	// ReplicaID names this replica among those sharing a PostgreSQL store
	// (default: host name and random digits, new at every start).
	ReplicaID string `yaml:"replica_id" usage:"with PostgreSQL: this replica's id among those sharing the store (default host name and random digits)"`
	// LeaseTTL is, with PostgreSQL, how long a replica's heartbeat and its
	// work units' leases hold without renewal: a replica that dies is
	// noticed, and its units taken over, that much later (default 15s).
	LeaseTTL time.Duration `yaml:"lease_ttl" usage:"with PostgreSQL: how long heartbeats and unit leases hold unrenewed; a dead replica's work is taken over after it (default 15s)"`
}

// FilesConfig chooses where exported files live.
type FilesConfig struct {
	// URL is empty for DataDir/files, or s3://bucket/prefix for S3
	// (credentials from the standard AWS chain: AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY, profiles, IRSA).
	URL string `yaml:"url" usage:"exported files: empty for data_dir/files, or s3://bucket/prefix"`
	// Redirect is empty to stream downloads through the proxy, or
	// "presigned" (S3 only) to answer them, after the token and ownership
	// checks, with 307 to a presigned URL valid for PresignTTL.
	Redirect string `yaml:"redirect" usage:"file downloads: empty streams them; presigned answers 307 to a short-lived presigned S3 URL"`
	// S3 tunes the S3 client when URL is s3://.
	S3 FilesS3Config `yaml:"s3"`
}

// PresignTTL is how long a presigned download URL (files.redirect:
// presigned) is valid.
const PresignTTL = 5 * time.Minute

// FilesS3Config tunes the S3 client.
type FilesS3Config struct {
	// Endpoint is the S3 endpoint URL for S3-compatible servers (MinIO,
	// versitygw, Ceph); empty: AWS.
	Endpoint string `yaml:"endpoint" usage:"S3 endpoint URL for S3-compatible servers; empty: AWS"`
	// Region is the bucket's region; empty: from the AWS chain, else
	// us-east-1.
	Region string `yaml:"region" usage:"S3 region; empty: from the AWS environment, else us-east-1"`
	// PathStyle addresses the bucket in the path (endpoint/bucket/key)
	// instead of the host name, as most S3-compatible servers need.
	PathStyle bool `yaml:"path_style" usage:"path-style S3 addressing (endpoint/bucket/key)"`
}

// AdminConfig configures /metrics, the operator page and admin API under
// /admin, and the health endpoints /healthz and /readyz.
type AdminConfig struct {
	// Listen, when set, serves /metrics, /admin, /healthz and /readyz on
	// this separate address (bind it to an internal interface); the main
	// listener then serves only /healthz and /readyz of them. Empty: all on
	// the main listener.
	Listen string `yaml:"listen" usage:"separate address for /metrics, /admin and health; empty: the main listener"`
	// Token guards /admin and /metrics (Authorization: Bearer, or the
	// operator page's login form). On the main listener /admin is off while
	// it is empty; on a separate admin listener it may be empty.
	Token Secret `yaml:"token" usage:"bearer token for /admin and /metrics; without it /admin is off on the main listener"`
	// MetricsToken, when false, serves /metrics without the token (for
	// scrapers on a trusted network). Default true.
	MetricsToken bool `yaml:"metrics_token" usage:"require admin.token for /metrics when admin.token is set"`
	// ReadyTimeout bounds the upstream check of /readyz. Default 2s.
	ReadyTimeout time.Duration `yaml:"ready_timeout" usage:"how long /readyz waits for the upstream"`
}

// LogConfig configures zerolog.
type LogConfig struct {
	// Level is trace, debug, info, warn or error. Default "info".
	Level string `yaml:"level" usage:"log level: trace, debug, info, warn or error"`
	// Format is json, console (coloured lines for humans) or auto
	// (console when standard error is a terminal, else json). Default
	// "auto".
	Format string `yaml:"format" usage:"log format: json, console, or auto (console on a terminal)"`
}

// ExportConfig tunes export jobs.
type ExportConfig struct {
	// BatchSize is the most patients one search asks for (searches of more
	// than 200 patients are sized by density below it). Default 1000.
	BatchSize int `yaml:"batch_size" usage:"most patients one search asks for; exports of more than 200 patients count each type once (_summary=count) and cut the patients into batches of about 12 pages each (more for dense types, fewer for sparse ones)"`
	// PageSize is the _count asked of the upstream. Default 1000 (the
	// upstream may cap it lower; next links are followed either way).
	PageSize int `yaml:"page_size" usage:"_count asked of the upstream per page"`
	// MaxURLLength is the longest GET search URL; longer searches are sent
	// as POST [type]/_search. Default 2000.
	MaxURLLength int `yaml:"max_url_length" usage:"longest GET search URL; longer searches use POST _search"`
	// Concurrency is the number of upstream requests in flight across all
	// jobs. Default 4.
	Concurrency int `yaml:"concurrency" usage:"upstream requests in flight across all jobs"`
	// AdaptiveConcurrency raises and lowers the upstream requests in flight
	// from observed latency, 429s and Retry-After (AIMD), starting at
	// Concurrency and never above MaxConcurrency. Default true.
	AdaptiveConcurrency bool `yaml:"adaptive_concurrency" usage:"raise the upstream requests in flight while latency stays near its minimum, lower them on 429/503, Retry-After, timeouts and growing latency (AIMD)"`
	// MaxConcurrency is the hard cap of the adaptive limit. Default 16.
	MaxConcurrency int `yaml:"max_concurrency" usage:"hard cap of upstream requests in flight when adaptive"`
	// MaxRPS limits the upstream requests started per second; 0: no limit.
	MaxRPS int `yaml:"max_rps" usage:"most upstream requests started per second; 0: no limit"`
	// MaxJobs is the number of jobs that run at once; others wait queued.
	// Default 2.
	MaxJobs int `yaml:"max_jobs" usage:"export jobs running at once; others wait queued"`
	// MaxFileSize splits output files at about this many bytes. Default 256 MiB.
	MaxFileSize int64 `yaml:"max_file_size" usage:"split output files at about this size: bytes, 256MiB, 100MB, 1GiB"`
	// Retention is how long finished jobs and their files are kept. Default 720h (30 days).
	Retention time.Duration `yaml:"retention" usage:"how long finished jobs and their files are kept: 720h, 30d"`
	// RetryAfter is the longest Retry-After sent to status polls. Default 4s (queued jobs: up to three times it).
	RetryAfter time.Duration `yaml:"retry_after" usage:"longest Retry-After sent to status polls"`
	// MaxActivePerClient bounds the queued and running exports of one
	// client; more kick-offs get 429. 0: no bound. Default 1.
	MaxActivePerClient int `yaml:"max_active_per_client" usage:"exports in progress per client before kick-offs get 429; 0: no bound"`
	// MaxActive bounds the queued and running exports in all. 0: no bound.
	// Default 10.
	MaxActive int `yaml:"max_active" usage:"exports in progress in all before kick-offs get 429; 0: no bound"`
	// FailOnPartial fails an export when any of its searches failed for
	// good; by default those go to the manifest's error file and an export
	// fails only when nothing could be exported.
	FailOnPartial bool `yaml:"fail_on_partial" usage:"fail an export when any search failed for good (default: report it in the error file)"`
	// MaxPatients refuses (413) exports of more patients. 0: no bound.
	MaxPatients int `yaml:"max_patients" usage:"most patients one export may cover (413 beyond); 0: no bound"`
	// PollThrottle answers 429 to status polls that come well before the
	// Retry-After they were given. Default true.
	PollThrottle bool `yaml:"poll_throttle" usage:"answer 429 to status polls that ignore Retry-After"`
	// SliceSystemExports cuts each large type of a system-level export
	// into _lastUpdated slices searched in parallel (a few _summary=count
	// probes per type). Default true.
	SliceSystemExports bool `yaml:"slice_system_exports" usage:"cut each large type of a system-level export into _lastUpdated slices (about 24 pages each, sized by _summary=count probes) searched in parallel; off: one search per type"`
	// DefaultTypes is the type set of an export without _type: "all" (every
	// type the upstream's CapabilityStatement declares, as the IG asks),
	// "us-core" (the USCDI v1 / US Core set, as Oracle Health exports), or a
	// comma-separated list of resource types. Default "all".
	DefaultTypes string `yaml:"default_types" usage:"types of an export without _type: all (what the upstream declares), us-core, or a comma-separated list"`
}

// UpstreamHTTPConfig tunes the HTTP client used towards the upstream.
type UpstreamHTTPConfig struct {
	// ResponseHeaderTimeout bounds the wait for response headers (not the
	// body). Default 60s.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout" usage:"upstream response header timeout, not counting the body"`
	// DialTimeout bounds connection set-up. Default 10s.
	DialTimeout time.Duration `yaml:"dial_timeout" usage:"upstream connection set-up timeout"`
	// Retries is how often a failed page GET is retried. Default 5.
	Retries int `yaml:"retries" usage:"retries of a failed upstream request (backoff with jitter, Retry-After honoured)"`
	// GiveUpAfter is how long an export keeps retrying a page that keeps
	// failing (5xx, 429, timeouts, cut connections), from its checkpoint
	// with backoff, before the search goes to the error file. Default 15m.
	GiveUpAfter time.Duration `yaml:"give_up_after" usage:"after the retries, how long an export keeps retrying a failing page from its checkpoint (backoff up to 30s) before that search goes to the error file; 0: at once"`
	// CAFile is a PEM file of CA certificates trusted (besides the system
	// pool) for TLS to the upstream, by both the pass-through and export
	// jobs. Empty: the system pool only.
	CAFile string `yaml:"ca_file" usage:"PEM file of extra CA certificates trusted for TLS to the upstream"`
}
