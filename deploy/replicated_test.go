package deploy_test

// The replicated variants: compose-replicated.yaml and
// kubernetes-replicated.yaml run several proxies on one PostgreSQL job store
// and one S3 bucket. Their checks mirror those of compose.yaml and
// kubernetes.yaml (hardening, variables the proxy reads, a valid
// configuration, probes, ports) and add what replicas need: a shared store
// and bucket, wired to the servers and credentials of the file, no state on
// a volume of one replica, a disruption budget, spreading and rollout.

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"go.yaml.in/yaml/v3"
)

const (
	composeReplicatedPath    = "compose-replicated.yaml"
	kubernetesReplicatedPath = "kubernetes-replicated.yaml"

	// serve drains for up to this long on SIGTERM (cmd/fhir-bulk-proxy,
	// main.go): the grace period must be longer.
	serveDrain = 30 * time.Second
	// serve gives PostgreSQL (migrations included) and S3 this long each at
	// start (startTimeout in app/backends.go) before it listens: the probes
	// must not kill a replica that waits for another's migration.
	serveStartTimeout = time.Minute

	postgresImage = "postgres"
	postgresPort  = 5432
	s3ServerImage = "versity/versitygw"
	// versitygw's defaults.
	versitygwPort   = 7070
	versitygwRegion = "us-east-1"

	// Secret values in kubernetes-replicated.yaml are placeholders with this
	// marker, never credentials.
	placeholder = "REPLACE-ME"
)

// TestServeTimings keeps serveDrain and serveStartTimeout in step with the
// code they stand for.
func TestServeTimings(t *testing.T) {
	for _, c := range []struct{ file, want string }{
		{"../cmd/fhir-bulk-proxy/main.go", "context.WithTimeout(context.Background(), " + goDuration(serveDrain) + ")\n\tdefer cancel()\n\treturn errors.Join(err, a.Shutdown(sctx))"},
		{"../app/backends.go", "const startTimeout = " + goDuration(serveStartTimeout) + "\n"},
	} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), c.want) {
			t.Errorf("%s no longer has %q: update the constants of this test", c.file, c.want)
		}
	}
}

// goDuration writes d as the Go source above does: 30*time.Second, time.Minute.
func goDuration(d time.Duration) string {
	switch {
	case d == time.Minute:
		return "time.Minute"
	case d%time.Second == 0:
		return strconv.Itoa(int(d/time.Second)) + "*time.Second"
	}
	return d.String()
}

// imageTag returns the tag of an image reference ("" if none) and whether it
// is pinned by digest.
func imageTag(ref string) (tag string, digest bool) {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return "", strings.HasPrefix(d, "sha256:")
	}
	name := ref[strings.LastIndex(ref, "/")+1:]
	if _, t, ok := strings.Cut(name, ":"); ok {
		return t, false
	}
	return "", false
}

// pinned reports whether an image reference names a version: a digest, or a
// tag with a digit that is not latest.
func pinned(ref string) bool {
	tag, digest := imageTag(ref)
	return digest || tag != "" && tag != "latest" && strings.ContainsAny(tag, "0123456789")
}

// imageIs reports whether ref is the image name (any tag or digest).
func imageIs(ref, name string) bool {
	return ref == name || strings.HasPrefix(ref, name+":") || strings.HasPrefix(ref, name+"@")
}

// words returns a compose command, entrypoint or tmpfs: a list, or a string
// split like a shell does (variables left as they are).
func words(n yaml.Node) ([]string, error) {
	switch n.Kind {
	case 0:
		return nil, nil
	case yaml.SequenceNode:
		return nodeNames(n), nil
	case yaml.ScalarNode:
		return shellWords(n.Value, nil)
	}
	return nil, fmt.Errorf("line %d: want a string or a list", n.Line)
}

// dependsOn returns the services of depends_on with their conditions (a
// list means service_started).
func dependsOn(n yaml.Node) map[string]string {
	out := map[string]string{}
	switch n.Kind {
	case yaml.SequenceNode:
		for _, c := range n.Content {
			out[c.Value] = "service_started"
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			var d struct {
				Condition string `yaml:"condition"`
			}
			_ = n.Content[i+1].Decode(&d)
			out[n.Content[i].Value] = orDefault(d.Condition, "service_started")
		}
	}
	return out
}

// versitygw is what the command and environment of a versitygw service
// configure.
type versitygw struct {
	Port           int
	Region         string
	Access, Secret string
	Backend, Root  string // posix /data
}

// versitygwFlags take a value in the next word (or after =); other flags are
// not understood by this test.
var versitygwFlags = map[string]string{
	"port": "port", "p": "port", "region": "region", "r": "region",
	"access": "access", "a": "access", "secret": "secret", "s": "secret",
	"health": "health",
}

func parseVersitygw(args []string, env map[string]string) (*versitygw, error) {
	v := &versitygw{
		Region: orDefault(env["VGW_REGION"], versitygwRegion),
		Access: orDefault(env["ROOT_ACCESS_KEY_ID"], env["ROOT_ACCESS_KEY"]),
		Secret: orDefault(env["ROOT_SECRET_ACCESS_KEY"], env["ROOT_SECRET_KEY"]),
	}
	port := orDefault(env["VGW_PORT"], ":"+strconv.Itoa(versitygwPort))
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		args = args[1:]
		key, ok := versitygwFlags[name]
		if !ok {
			return nil, fmt.Errorf("versitygw flag -%s is not understood by this test", name)
		}
		if !hasVal {
			if len(args) == 0 {
				return nil, fmt.Errorf("versitygw flag -%s without a value", name)
			}
			val, args = args[0], args[1:]
		}
		switch key {
		case "port":
			port = val
		case "region":
			v.Region = val
		case "access":
			v.Access = val
		case "secret":
			v.Secret = val
		}
	}
	if len(args) < 2 || args[0] != "posix" {
		return nil, fmt.Errorf("versitygw %q: want [flags] posix ROOT", args)
	}
	v.Backend, v.Root = args[0], path.Clean(args[1])
	_, p, err := listenPort(port)
	if err != nil {
		return nil, fmt.Errorf("versitygw --port %q: %v", port, err)
	}
	v.Port = p
	return v, nil
}

// mountedAt returns the named volume of s mounted at dir, or "".
func (s *composeService) mountedAt(dir string) string {
	for _, m := range s.Volumes {
		if path.Clean(m.Target) == path.Clean(dir) {
			return m.Source
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// compose-replicated.yaml

func checkComposeReplicated(data []byte, img *image) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var cf composeFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		return []string{err.Error()}
	}
	var fhirName string
	var proxies []string
	for _, name := range slices.Sorted(maps.Keys(cf.Services)) {
		s := cf.Services[name]
		switch {
		case s.Build != nil:
			proxies = append(proxies, name)
		case imageIs(s.Image, fhirServerImage):
			fhirName = name
		case s.Image == "":
			bad("service %s has neither image nor build", name)
		case !pinned(s.Image):
			// HAPI is kept at latest as in compose.yaml; what this file adds
			// is pinned, so that the example keeps working as it was tested.
			bad("service %s: image %s is not pinned to a version", name, s.Image)
		}
	}
	if fhirName == "" || len(proxies) < 2 {
		bad("want a %s service and at least two proxy replicas built from the Dockerfile; services: %v",
			fhirServerImage, slices.Sorted(maps.Keys(cf.Services)))
		return problems
	}

	known := knownEnv()
	var cfgs []config.Config
	var envs []map[string]string
	hostPorts := map[string]string{}
	dataVolumes := map[string]string{}
	for _, name := range proxies {
		proxy := cf.Services[name]
		bad := func(format string, args ...any) { bad(name+": "+format, args...) }

		ctx := filepath.Join(filepath.Dir(composeReplicatedPath), proxy.Build.Context)
		wantRoot, _ := filepath.Abs(repoRoot)
		if got, _ := filepath.Abs(ctx); got != wantRoot {
			bad("build context %q is not the repository root", proxy.Build.Context)
		} else if _, err := os.Stat(filepath.Join(ctx, orDefault(proxy.Build.Dockerfile, "Dockerfile"))); err != nil {
			bad("build: %v", err)
		}
		if proxy.User != "" && isRoot(proxy.User) {
			bad("runs as user %s", proxy.User)
		}
		if !proxy.ReadOnly || !slices.Contains(proxy.CapDrop, "ALL") || !slices.Contains(proxy.SecurityOpt, "no-new-privileges:true") {
			bad("want read_only: true, cap_drop: [ALL] and security_opt: [no-new-privileges:true]")
		}
		if d, err := time.ParseDuration(proxy.StopGracePeriod); err != nil || d <= serveDrain {
			bad("stop_grace_period %q; want more than the %v serve drains for", proxy.StopGracePeriod, serveDrain)
		}
		if hc := proxy.Healthcheck; hc != nil {
			test := nodeNames(hc.Test)
			if hc.Test.Kind == yaml.ScalarNode {
				test = []string{"CMD-SHELL", hc.Test.Value}
			}
			if len(test) == 0 || test[0] != "NONE" && (test[0] != "CMD" || len(test) < 2 || test[1] != img.Entrypoint[0]) {
				bad("healthcheck %q needs a shell or tools the distroless image does not have", test)
			}
		}
		if _, ok := dependsOn(proxy.DependsOn)[fhirName]; !ok {
			bad("does not depend on %s", fhirName)
		}

		env := maps.Clone(img.Env)
		for k, v := range proxy.Environment {
			if strings.HasPrefix(k, config.EnvPrefix) && !known[k] {
				bad("environment %s is not a variable the proxy reads", k)
			}
			env[k] = v
		}
		if err := checkUpstream(env["FBP_UPSTREAM"], []string{fhirName}, fhirServerPort); err != nil {
			bad("FBP_UPSTREAM: %v", err)
		}
		cfg, err := loadConfig(env)
		if err != nil {
			bad("the proxy's environment is not a valid configuration: %v", err)
			continue
		}
		cfgs, envs = append(cfgs, cfg), append(envs, env)

		if _, port, err := listenPort(cfg.Listen); err != nil {
			bad("listen %q: %v", cfg.Listen, err)
		} else if i := slices.IndexFunc(proxy.Ports, func(p composePort) bool { return p.Target == strconv.Itoa(port) && p.Published != "" }); i < 0 {
			bad("the listen port %d is not published (ports: %v)", port, proxy.Ports)
		} else if other, ok := hostPorts[proxy.Ports[i].Published]; ok {
			bad("host port %s is published by %s too", proxy.Ports[i].Published, other)
		} else {
			hostPorts[proxy.Ports[i].Published] = name
		}

		// The data directory holds nothing with PostgreSQL and S3, but serve
		// creates it: a tmpfs or a volume of this replica's own.
		tmpfs, err := words(proxy.Tmpfs)
		if err != nil {
			bad("tmpfs: %v", err)
		}
		onTmpfs := slices.ContainsFunc(tmpfs, func(t string) bool { d, _, _ := strings.Cut(t, ":"); return path.Clean(d) == cfg.DataDir })
		vol := proxy.mountedAt(cfg.DataDir)
		switch {
		case !onTmpfs && !slices.ContainsFunc(proxy.Volumes, func(m composeMount) bool { return path.Clean(m.Target) == cfg.DataDir }):
			bad("no tmpfs or volume at the data directory %s", cfg.DataDir)
		case vol == "":
		case dataVolumes[vol] != "":
			bad("the data directory is on volume %s, which %s mounts too", vol, dataVolumes[vol])
		default:
			dataVolumes[vol] = name
		}
	}
	if len(cfgs) != len(proxies) {
		return problems
	}

	// One store and one bucket for all: replicas with stores of their own
	// would each know only the jobs started on them.
	cfg, env := cfgs[0], envs[0]
	for i, c := range cfgs[1:] {
		if c.Store.URL != cfg.Store.URL || c.Files != cfg.Files || envs[i+1]["AWS_ACCESS_KEY_ID"] != env["AWS_ACCESS_KEY_ID"] {
			bad("%s and %s do not share the job store, the files and their credentials", proxies[0], proxies[i+1])
		}
	}

	// PostgreSQL.
	su, err := url.Parse(string(cfg.Store.URL))
	if err != nil || su.Scheme != "postgres" && su.Scheme != "postgresql" {
		bad("FBP_STORE_URL is not a postgres:// URL: replicas need the PostgreSQL store")
	} else if pg, ok := cf.Services[su.Hostname()]; !ok || !imageIs(pg.Image, postgresImage) {
		bad("FBP_STORE_URL names host %q, not a %s service of this file", su.Hostname(), postgresImage)
	} else {
		user := orDefault(pg.Environment["POSTGRES_USER"], "postgres")
		pass, _ := su.User.Password()
		if su.Port() != strconv.Itoa(postgresPort) || su.User.Username() != user || pass != pg.Environment["POSTGRES_PASSWORD"] ||
			strings.TrimPrefix(su.Path, "/") != orDefault(pg.Environment["POSTGRES_DB"], user) {
			bad("FBP_STORE_URL: port, user, password or database differ from the %s service (port %d, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)", su.Hostname(), postgresPort)
		}
		if pg.Healthcheck == nil || !strings.Contains(strings.Join(nodeNames(pg.Healthcheck.Test), " ")+" "+pg.Healthcheck.Test.Value, "pg_isready") {
			bad("%s: want a healthcheck with pg_isready", su.Hostname())
		}
		// PGDATA of the postgres images up to 17 (18 moved it).
		if v := pg.mountedAt("/var/lib/postgresql/data"); v == "" {
			bad("%s: its data directory is not on a named volume", su.Hostname())
		} else if _, ok := cf.Volumes[v]; !ok {
			bad("volume %s is not declared under volumes:", v)
		}
		for _, name := range proxies {
			if c := dependsOn(cf.Services[name].DependsOn)[su.Hostname()]; c != "service_healthy" {
				bad("%s depends on %s with %q; want service_healthy (serve connects at start)", name, su.Hostname(), c)
			}
		}
	}

	// S3.
	bucket, _, err := config.ParseS3URL(cfg.Files.URL)
	if err != nil {
		bad("FBP_FILES_URL %q is not an s3:// URL: replicas need the files in S3 (%v)", cfg.Files.URL, err)
		return problems
	}
	eu, err := url.Parse(cfg.Files.S3.Endpoint)
	if err != nil {
		eu = &url.URL{}
	}
	s3, ok := cf.Services[eu.Hostname()]
	if !ok || !imageIs(s3.Image, s3ServerImage) {
		bad("FBP_FILES_S3_ENDPOINT %q does not name a %s service of this file", cfg.Files.S3.Endpoint, s3ServerImage)
		return problems
	}
	s3Name := eu.Hostname()
	args, err := words(s3.Command)
	if err != nil {
		bad("%s: command: %v", s3Name, err)
		return problems
	}
	gw, err := parseVersitygw(args, s3.Environment)
	if err != nil {
		bad("%s: %v", s3Name, err)
		return problems
	}
	if eu.Scheme != "http" || eu.Port() != strconv.Itoa(gw.Port) {
		bad("FBP_FILES_S3_ENDPOINT %q; %s listens on http port %d", cfg.Files.S3.Endpoint, s3Name, gw.Port)
	}
	if !cfg.Files.S3.PathStyle {
		bad("FBP_FILES_S3_PATH_STYLE is not true: virtual-hosted addressing would look up the host %s.%s", bucket, s3Name)
	}
	if region := orDefault(cfg.Files.S3.Region, "us-east-1"); region != gw.Region {
		bad("FBP_FILES_S3_REGION %q; %s signs for region %q", region, s3Name, gw.Region)
	}
	if gw.Access == "" || env["AWS_ACCESS_KEY_ID"] != gw.Access || env["AWS_SECRET_ACCESS_KEY"] != gw.Secret {
		bad("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not the access and secret key of %s", s3Name)
	}
	if files := cfg.Files.Redirect; files == "presigned" {
		bad("FBP_FILES_REDIRECT presigned would send clients to %s, which the host cannot reach", cfg.Files.S3.Endpoint)
	}
	root := s3.mountedAt(gw.Root)
	if root == "" {
		bad("%s: its root %s is not on a named volume", s3Name, gw.Root)
	} else if _, ok := cf.Volumes[root]; !ok {
		bad("volume %s is not declared under volumes:", root)
	}
	// The bucket: a one-shot service making its directory in the same volume.
	made := ""
	for _, name := range slices.Sorted(maps.Keys(cf.Services)) {
		s := cf.Services[name]
		cmd, _ := words(s.Entrypoint)
		c, _ := words(s.Command)
		cmd = append(cmd, c...)
		for _, m := range s.Volumes {
			if root != "" && m.Source == root && strings.Contains(strings.Join(cmd, " "), path.Join(m.Target, bucket)) {
				made = name
			}
		}
	}
	if made == "" {
		bad("no service makes the bucket %s in %s's volume %s (serve refuses to start without it)", bucket, s3Name, root)
	}
	for _, name := range proxies {
		deps := dependsOn(cf.Services[name].DependsOn)
		if _, ok := deps[s3Name]; !ok {
			bad("%s does not depend on %s", name, s3Name)
		}
		if made != "" && deps[made] != "service_completed_successfully" {
			bad("%s depends on %s with %q; want service_completed_successfully (the bucket must exist first)", name, made, deps[made])
		}
	}
	return problems
}

func TestComposeReplicated(t *testing.T) {
	_, _, img := readDockerfile(t)
	data, err := os.ReadFile(composeReplicatedPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkComposeReplicated(data, img) {
		t.Errorf("%s: %s", composeReplicatedPath, p)
	}

	src := string(data)
	cases := []struct{ name, old, new, want string }{
		{"same host port", `"8082:8080"`, `"8081:8080"`, "published by"},
		{"port not published", `"8083:8080"`, `"8083:9090"`, "not published"},
		{"unknown variable", "FBP_FILES_S3_PATH_STYLE:", "FBP_FILES_PATH_STYLE:", "not a variable"},
		{"bbolt store", "FBP_STORE_URL: postgres://fbp:fbp-compose-password@postgres:5432/fbp?sslmode=disable", `FBP_STORE_URL: ""`, "replicas need the PostgreSQL store"},
		{"files on disk", "FBP_FILES_URL: s3://fhir-exports/exports", `FBP_FILES_URL: ""`, "replicas need the files in S3"},
		{"a store of its own", "  fhir-bulk-proxy-3:\n    <<: *proxy\n",
			"  fhir-bulk-proxy-3:\n    <<: *proxy\n    environment:\n      FBP_UPSTREAM: http://hapi:8080/fhir\n      FBP_STORE_URL: \"\"\n", "do not share the job store"},
		{"wrong database password", "POSTGRES_PASSWORD: fbp-compose-password", "POSTGRES_PASSWORD: other", "password"},
		{"store on another host", "@postgres:5432/", "@db:5432/", "not a postgres service"},
		{"postgres not pinned", "image: postgres:17.6", "image: postgres:latest", "not pinned"},
		{"no pg_isready", `"pg_isready", `, `"psql", `, "pg_isready"},
		{"postgres merely started", "      condition: service_healthy\n    s3:", "      condition: service_started\n    s3:", "service_healthy"},
		{"endpoint port", "FBP_FILES_S3_ENDPOINT: http://s3:7070", "FBP_FILES_S3_ENDPOINT: http://s3:9000", "listens on http port 7070"},
		{"endpoint host", "FBP_FILES_S3_ENDPOINT: http://s3:7070", "FBP_FILES_S3_ENDPOINT: http://minio:7070", "does not name"},
		{"virtual-hosted", `FBP_FILES_S3_PATH_STYLE: "true"`, `FBP_FILES_S3_PATH_STYLE: "false"`, "PATH_STYLE"},
		{"region", "FBP_FILES_S3_REGION: us-east-1", "FBP_FILES_S3_REGION: eu-west-1", "region"},
		{"access key", "AWS_ACCESS_KEY_ID: fbp-compose-access", "AWS_ACCESS_KEY_ID: other", "AWS_ACCESS_KEY_ID"},
		{"secret key", "ROOT_SECRET_KEY: fbp-compose-secret-0123456789", "ROOT_SECRET_KEY: other", "AWS_SECRET_ACCESS_KEY"},
		{"bucket not made", "mkdir -p /data/fhir-exports", "mkdir -p /data/other", "no service makes the bucket"},
		{"bucket not awaited", "condition: service_completed_successfully", "condition: service_started", "service_completed_successfully"},
		{"presigned", "    FBP_DATA_DIR: /var/lib", "    FBP_FILES_REDIRECT: presigned\n    FBP_DATA_DIR: /var/lib", "presigned"},
		{"shared data volume", "  tmpfs:\n    - /var/lib/fhir-bulk-proxy\n", "  volumes:\n    - proxy-data:/var/lib/fhir-bulk-proxy\n", "mounts too"},
		{"no data mount", "  tmpfs:\n    - /var/lib/fhir-bulk-proxy\n", "", "no tmpfs or volume"},
		{"short grace", "stop_grace_period: 40s", "stop_grace_period: 30s", "stop_grace_period"},
		{"privileges", "no-new-privileges:true", "no-new-privileges:false", "no-new-privileges"},
		{"upstream elsewhere", "FBP_UPSTREAM: http://hapi:8080/fhir", "FBP_UPSTREAM: http://localhost:8080/fhir", "FBP_UPSTREAM"},
	}
	for _, c := range cases {
		expectProblem(t, c.name, checkComposeReplicated([]byte(mutate(t, src, c.old, c.new)), img), c.want)
	}

	one := src
	for _, name := range []string{"fhir-bulk-proxy-2", "fhir-bulk-proxy-3"} {
		one = mutate(t, one, "  "+name+":\n    <<: *proxy\n", "  "+name+":\n    image: alpine:3.20\n")
	}
	expectProblem(t, "one replica", checkComposeReplicated([]byte(one), img), "at least two proxy replicas")
}

// ---------------------------------------------------------------------------
// kubernetes-replicated.yaml

type pdbSpec struct {
	MinAvailable   yaml.Node `yaml:"minAvailable"`
	MaxUnavailable yaml.Node `yaml:"maxUnavailable"`
	Selector       struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
}

// intValue returns an int-or-string that is an int; percentages are not
// understood by these checks.
func intValue(n yaml.Node) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return 0, false
	}
	v, err := strconv.Atoi(n.Value)
	return v, err == nil
}

// startupAllowance is how long a container may take to start before the
// kubelet kills it: the startup probe's budget, else the liveness probe's.
func startupAllowance(c *container) time.Duration {
	p := c.StartupProbe
	if p == nil {
		p = c.LivenessProbe
	}
	if p == nil {
		return time.Duration(1<<63 - 1)
	}
	period, failures := 10, 3
	if p.PeriodSeconds != nil {
		period = *p.PeriodSeconds
	}
	if p.FailureThreshold != nil {
		failures = *p.FailureThreshold
	}
	return time.Duration(p.InitialDelaySeconds+period*failures) * time.Second
}

type k8sDeployment struct {
	Name string
	deploymentSpec
}

func checkKubernetesReplicated(data []byte, img *image) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var deployments []k8sDeployment
	services := map[string]serviceSpec{}
	var pdbs []pdbSpec
	secrets, configMaps := map[string]map[string]string{}, map[string]map[string]string{}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	for {
		var obj k8sObject
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return []string{err.Error()}
		}
		switch obj.Kind {
		case "Deployment":
			d := k8sDeployment{Name: obj.Metadata.Name}
			if err := obj.Spec.Decode(&d.deploymentSpec); err != nil {
				return []string{err.Error()}
			}
			deployments = append(deployments, d)
		case "Service":
			var s serviceSpec
			if err := obj.Spec.Decode(&s); err != nil {
				return []string{err.Error()}
			}
			services[obj.Metadata.Name] = s
		case "PodDisruptionBudget":
			var p pdbSpec
			if err := obj.Spec.Decode(&p); err != nil {
				return []string{err.Error()}
			}
			pdbs = append(pdbs, p)
		case "Secret", "ConfigMap":
			m := maps.Clone(obj.StringData)
			if m == nil {
				m = map[string]string{}
			}
			for k, v := range obj.Data {
				if obj.Kind == "ConfigMap" {
					m[k] = v
					continue
				}
				b, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					return []string{fmt.Sprintf("Secret %s: data.%s: %v", obj.Metadata.Name, k, err)}
				}
				m[k] = string(b)
			}
			if obj.Kind == "Secret" {
				secrets[obj.Metadata.Name] = m
			} else {
				configMaps[obj.Metadata.Name] = m
			}
		case "":
			// an empty document
		default:
			bad("kind %s is not checked by this test", obj.Kind)
		}
	}

	var d *k8sDeployment
	var proxy *container
	for i := range deployments {
		for j, c := range deployments[i].Template.Spec.Containers {
			if c.Name == "fhir-bulk-proxy" {
				if d != nil {
					bad("two Deployments run the proxy")
				}
				d, proxy = &deployments[i], &deployments[i].Template.Spec.Containers[j]
			}
		}
	}
	if d == nil {
		bad("no Deployment with a container named fhir-bulk-proxy")
		return problems
	}
	pod := d.Template.Spec
	podLabels := d.Template.Metadata.Labels
	replicas := 0
	if d.Replicas != nil {
		replicas = *d.Replicas
	}
	if replicas != 3 {
		bad("replicas %d; want 3", replicas)
	}
	if !subset(d.Selector.MatchLabels, podLabels) {
		bad("selector %v does not match the Pod labels %v", d.Selector.MatchLabels, podLabels)
	}

	// Rollout: one Pod at a time.
	maxUnavailable := 0
	if d.Strategy.Type != "RollingUpdate" {
		bad("strategy %q; want RollingUpdate: the replicas share no volume", d.Strategy.Type)
	} else if ru := d.Strategy.RollingUpdate; ru == nil {
		bad("strategy RollingUpdate without rollingUpdate.maxUnavailable")
	} else if v, ok := intValue(ru.MaxUnavailable); !ok || v != 1 {
		bad("rollingUpdate.maxUnavailable: want 1")
	} else {
		maxUnavailable = v
	}

	for _, c := range pod.Containers {
		if imageIs(c.Image, fhirServerImage) {
			bad("container %s runs the FHIR server in the proxy's Pod: each replica would export from a server of its own", c.Name)
		}
	}
	// The hardening of kubernetes.yaml.
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		nonRoot := pod.SecurityContext.RunAsNonRoot
		if c.SecurityContext.RunAsNonRoot != nil {
			nonRoot = c.SecurityContext.RunAsNonRoot
		}
		user := pod.SecurityContext.RunAsUser
		if c.SecurityContext.RunAsUser != nil {
			user = c.SecurityContext.RunAsUser
		}
		if nonRoot == nil || !*nonRoot || user != nil && *user == 0 {
			bad("container %s: want runAsNonRoot: true (and no runAsUser 0)", c.Name)
		}
		if sc := c.SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("container %s: want allowPrivilegeEscalation: false and capabilities.drop: [ALL]", c.Name)
		}
		if ro := c.SecurityContext.ReadOnlyRootFilesystem; ro == nil || !*ro {
			bad("container %s: want readOnlyRootFilesystem: true", c.Name)
		}
		if sp := c.SecurityContext.SeccompProfile; sp == nil && (pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != "RuntimeDefault") ||
			sp != nil && sp.Type != "RuntimeDefault" {
			bad("container %s: want seccompProfile RuntimeDefault", c.Name)
		}
		if !pinned(c.Image) {
			bad("container %s: image %s is not pinned to a version", c.Name, c.Image)
		}
	}
	if len(proxy.Command) > 0 {
		bad("the proxy sets command %q, replacing the image's ENTRYPOINT", proxy.Command)
	}
	if len(proxy.Args) > 0 && proxy.Args[0] != "serve" {
		bad("the proxy runs %q, not serve", proxy.Args)
	}
	for _, kind := range []string{"cpu", "memory"} {
		if proxy.Resources.Requests[kind] == "" {
			bad("the proxy has no %s request", kind)
		}
	}
	if proxy.Resources.Limits["memory"] == "" {
		bad("the proxy has no memory limit")
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= serveDrain {
		bad("terminationGracePeriodSeconds: want more than the %v serve drains for", serveDrain)
	}

	// The environment, with the Secret's values.
	known := knownEnv()
	env := maps.Clone(img.Env)
	fromSecret := map[string]bool{}
	lookup := func(kind string, m map[string]map[string]string, ref *keyRef) (string, bool) {
		vals, ok := m[ref.Name]
		if !ok {
			bad("%s %s is not in this file", kind, ref.Name)
			return "", false
		}
		v, ok := vals[ref.Key]
		if !ok {
			bad("%s %s has no key %s", kind, ref.Name, ref.Key)
		}
		return v, ok
	}
	for _, ef := range proxy.EnvFrom {
		src, kind, m := ef.ConfigMapRef, "ConfigMap", configMaps
		if ef.SecretRef != nil {
			src, kind, m = ef.SecretRef, "Secret", secrets
		}
		if src == nil {
			bad("envFrom: only secretRef and configMapRef are understood by this test")
			continue
		}
		vals, ok := m[src.Name]
		if !ok {
			bad("%s %s is not in this file", kind, src.Name)
		}
		for k, v := range vals {
			env[k] = v
			fromSecret[k] = kind == "Secret"
		}
	}
	for _, e := range proxy.Env {
		v, secret := e.Value, false
		switch vf := e.ValueFrom; {
		case vf == nil:
		case vf.SecretKeyRef != nil:
			v, _ = lookup("Secret", secrets, vf.SecretKeyRef)
			secret = true
		case vf.ConfigMapKeyRef != nil:
			v, _ = lookup("ConfigMap", configMaps, vf.ConfigMapKeyRef)
		default:
			bad("env %s: only secretKeyRef and configMapKeyRef are understood by this test", e.Name)
		}
		env[e.Name], fromSecret[e.Name] = v, secret
	}
	for k := range env {
		if strings.HasPrefix(k, config.EnvPrefix) && !known[k] {
			bad("env %s is not a variable the proxy reads", k)
		}
	}
	for _, k := range []string{"FBP_STORE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if !fromSecret[k] {
			bad("%s does not come from a Secret (it is a credential)", k)
		}
	}
	for name, vals := range secrets {
		for k, v := range vals {
			if v != "" && !strings.Contains(v, placeholder) {
				bad("Secret %s: %s is not a %s placeholder; credentials do not belong in the example", name, k, placeholder)
			}
		}
	}

	cfg, err := loadConfig(env)
	if err != nil {
		bad("the proxy's environment is not a valid configuration: %v", err)
		return problems
	}
	if u, err := url.Parse(string(cfg.Store.URL)); err != nil || u.Scheme != "postgres" && u.Scheme != "postgresql" || u.Hostname() == "" {
		bad("FBP_STORE_URL is not a postgres:// URL with a host: replicas need the PostgreSQL store")
	}
	if _, _, err := config.ParseS3URL(cfg.Files.URL); err != nil {
		bad("FBP_FILES_URL %q is not an s3:// URL: replicas need the files in S3 (%v)", cfg.Files.URL, err)
	}
	if ep := cfg.Files.S3.Endpoint; ep != "" {
		if u, err := url.Parse(ep); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
			bad("FBP_FILES_S3_ENDPOINT %q is not an http(s) URL", ep)
		}
	}
	if env["AWS_ACCESS_KEY_ID"] == "" || env["AWS_SECRET_ACCESS_KEY"] == "" {
		bad("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set")
	}

	// The upstream: a Service of this file in front of HAPI, not a sidecar.
	if u, err := url.Parse(env["FBP_UPSTREAM"]); err != nil {
		bad("FBP_UPSTREAM: %v", err)
	} else if svc, ok := services[u.Hostname()]; !ok {
		bad("FBP_UPSTREAM %q does not name a Service of this file", env["FBP_UPSTREAM"])
	} else {
		target := 0
		for _, other := range deployments {
			if !subset(svc.Selector, other.Template.Metadata.Labels) {
				continue
			}
			for _, c := range other.Template.Spec.Containers {
				if !imageIs(c.Image, fhirServerImage) {
					continue
				}
				for _, p := range svc.Ports {
					if strconv.Itoa(p.Port) == u.Port() {
						target = c.portNumber(orDefault(p.TargetPort, strconv.Itoa(p.Port)))
					}
				}
			}
		}
		if target != fhirServerPort || strings.TrimRight(u.Path, "/") != fhirServerPath {
			bad("FBP_UPSTREAM %q does not reach %s's port %d at %s through its Service", env["FBP_UPSTREAM"], fhirServerImage, fhirServerPort, fhirServerPath)
		}
	}

	_, port, err := listenPort(cfg.Listen)
	if err != nil {
		bad("listen %q: %v", cfg.Listen, err)
	}
	if !slices.ContainsFunc(proxy.Ports, func(p containerPort) bool { return p.ContainerPort == port }) {
		bad("the proxy listens on %d, which is not one of its containerPorts", port)
	}
	for _, pr := range []struct {
		name  string
		probe *probe
		paths []string
	}{
		{"livenessProbe", proxy.LivenessProbe, []string{"/healthz"}},
		{"readinessProbe", proxy.ReadinessProbe, []string{"/readyz"}},
		{"startupProbe", proxy.StartupProbe, []string{"/healthz", "/readyz"}},
	} {
		if pr.probe == nil && pr.name == "startupProbe" {
			continue
		}
		if pr.probe == nil || pr.probe.HTTPGet == nil || !slices.Contains(pr.paths, pr.probe.HTTPGet.Path) || proxy.portNumber(pr.probe.HTTPGet.Port) != port {
			bad("the proxy's %s: want httpGet %s on port %d", pr.name, strings.Join(pr.paths, " or "), port)
		}
	}
	if a := startupAllowance(proxy); a < serveStartTimeout {
		bad("the probes kill a replica that has not listened after %v; serve may wait %v for PostgreSQL (another replica's migration) before it listens: add a startupProbe", a, serveStartTimeout)
	}

	// No state on a volume: the data directory on an emptyDir, no claims.
	if cfg.DataDir != img.DataDir {
		bad("data_dir is %q; the image's VOLUME is %s", cfg.DataDir, img.DataDir)
	}
	mount := slices.IndexFunc(proxy.VolumeMounts, func(m volumeMount) bool { return path.Clean(m.MountPath) == cfg.DataDir && !m.ReadOnly })
	if mount < 0 {
		bad("no writable volume mounted at the data directory %s", cfg.DataDir)
	}
	for _, v := range pod.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil:
			bad("volume %s is a PersistentVolumeClaim: the replicas keep their state in PostgreSQL and S3, and a ReadWriteOnce claim cannot follow them to other nodes", v.Name)
		case mount >= 0 && v.Name == proxy.VolumeMounts[mount].Name && v.EmptyDir == nil:
			bad("the data directory's volume %s is not an emptyDir", v.Name)
		}
	}

	// Spread over nodes.
	spread := false
	if aa := pod.Affinity.PodAntiAffinity; aa != nil {
		for _, p := range aa.Preferred {
			t := p.PodAffinityTerm
			spread = spread || p.Weight > 0 && t.TopologyKey == "kubernetes.io/hostname" && subset(t.LabelSelector.MatchLabels, podLabels)
		}
	}
	if !spread {
		bad("no preferred podAntiAffinity on kubernetes.io/hostname selecting the proxy's Pods: the replicas may share a node")
	}

	ann := d.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/port"] != strconv.Itoa(port) {
		bad("Pod annotations %v: want prometheus.io/scrape \"true\", path /metrics, port %d", ann, port)
	}

	// The disruption budget.
	if len(pdbs) != 1 {
		bad("%d PodDisruptionBudgets; want one", len(pdbs))
	} else {
		pdb := pdbs[0]
		if !subset(pdb.Selector.MatchLabels, podLabels) {
			bad("the PodDisruptionBudget's selector %v does not match the Pod labels %v", pdb.Selector.MatchLabels, podLabels)
		}
		minAvail, okMin := intValue(pdb.MinAvailable)
		maxUnavail, okMax := intValue(pdb.MaxUnavailable)
		switch {
		case okMin == okMax:
			bad("the PodDisruptionBudget: want an integer minAvailable or maxUnavailable, one of them")
		case okMax:
			minAvail = replicas - maxUnavail
		}
		if minAvail < 1 || minAvail >= replicas {
			bad("the PodDisruptionBudget keeps %d of %d replicas available; want at least 1 and fewer than all (a node drain would never end)", minAvail, replicas)
		} else if maxUnavailable > 0 && replicas-maxUnavailable < minAvail {
			bad("a rollout takes %d replicas down, more than the PodDisruptionBudget allows", maxUnavailable)
		}
	}

	// The Service in front of the replicas.
	var front []string
	for name, svc := range services {
		if subset(svc.Selector, podLabels) {
			front = append(front, name)
			if !slices.ContainsFunc(svc.Ports, func(p servicePort) bool {
				return proxy.portNumber(orDefault(p.TargetPort, strconv.Itoa(p.Port))) == port
			}) {
				bad("the Service %s does not expose the proxy's port %d", name, port)
			}
		}
		for _, other := range deployments {
			if other.Name != d.Name && subset(svc.Selector, podLabels) && subset(svc.Selector, other.Template.Metadata.Labels) {
				bad("the Service %s selects the Pods of %s too", name, other.Name)
			}
		}
	}
	if len(front) != 1 {
		bad("%d Services select the proxy's Pods; want one", len(front))
	}
	return problems
}

func TestKubernetesReplicated(t *testing.T) {
	_, _, img := readDockerfile(t)
	data, err := os.ReadFile(kubernetesReplicatedPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkKubernetesReplicated(data, img) {
		t.Errorf("%s: %s", kubernetesReplicatedPath, p)
	}

	src := string(data)
	cases := []struct{ name, old, new, want string }{
		{"two replicas", "replicas: 3", "replicas: 2", "want 3"},
		{"recreate", "type: RollingUpdate", "type: Recreate", "RollingUpdate"},
		{"two at a time", "maxUnavailable: 1", "maxUnavailable: 2", "maxUnavailable"},
		{"budget blocks drains", "minAvailable: 2", "minAvailable: 3", "fewer than all"},
		{"budget selects nothing", "  minAvailable: 2\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: fhir-bulk-proxy",
			"  minAvailable: 2\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: proxy", "PodDisruptionBudget's selector"},
		{"readiness path", "path: /readyz", "path: /ready", "readinessProbe"},
		{"liveness path", "              path: /healthz\n              port: http\n            periodSeconds: 10",
			"              path: /metrics\n              port: http\n            periodSeconds: 10", "livenessProbe"},
		{"startup probe port", "              path: /healthz\n              port: http\n            periodSeconds: 5",
			"              path: /healthz\n              port: 8081\n            periodSeconds: 5", "startupProbe"},
		{"short startup", "failureThreshold: 30\n          # /healthz", "failureThreshold: 2\n          # /healthz", "startupProbe"},
		{"root allowed", "            runAsNonRoot: true", "            runAsNonRoot: false", "runAsNonRoot"},
		{"no seccomp", "          type: RuntimeDefault\n      affinity:", "          type: Unconfined\n      affinity:", "seccompProfile"},
		{"writable root", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"image latest", "image: registry.example/fhir-bulk-proxy:1.0.0", "image: registry.example/fhir-bulk-proxy:latest", "not pinned"},
		{"short grace", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds"},
		{"store URL inline", "            - name: FBP_STORE_URL\n              valueFrom:\n                secretKeyRef:\n                  name: fhir-bulk-proxy\n                  key: FBP_STORE_URL",
			"            - name: FBP_STORE_URL\n              value: postgres://fbp:pw@db:5432/fbp", "FBP_STORE_URL does not come from a Secret"},
		{"secret key missing", "key: AWS_SECRET_ACCESS_KEY", "key: AWS_SECRET_KEY", "has no key AWS_SECRET_KEY"},
		{"secret missing", "                  name: fhir-bulk-proxy\n                  key: AWS_ACCESS_KEY_ID", "                  name: s3-credentials\n                  key: AWS_ACCESS_KEY_ID", "Secret s3-credentials is not in this file"},
		{"real-looking credential", "AWS_ACCESS_KEY_ID: REPLACE-ME", "AWS_ACCESS_KEY_ID: AKIAIOSFODNN7EXAMPLE", "placeholder"},
		{"bbolt store", "FBP_STORE_URL: postgres://fbp:REPLACE-ME@postgres.example.internal:5432/fbp?sslmode=verify-full", `FBP_STORE_URL: ""`, "replicas need the PostgreSQL store"},
		{"files on disk", "value: s3://fhir-exports/exports", `value: ""`, "replicas need the files in S3"},
		{"endpoint not a URL", "value: https://s3.example.internal", "value: s3.example.internal", "FBP_FILES_S3_ENDPOINT"},
		{"unknown variable", "name: FBP_FILES_S3_PATH_STYLE", "name: FBP_S3_PATH_STYLE", "not a variable"},
		{"HAPI sidecar", "      containers:\n        - name: fhir-bulk-proxy\n",
			"      containers:\n        - name: hapi\n          image: hapiproject/hapi:v8.0.0\n          securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}\n        - name: fhir-bulk-proxy\n",
			"server of its own"},
		{"upstream elsewhere", "value: http://fhir-server:8080/fhir", "value: http://127.0.0.1:8080/fhir", "FBP_UPSTREAM"},
		{"upstream port", "value: http://fhir-server:8080/fhir", "value: http://fhir-server:8081/fhir", "FBP_UPSTREAM"},
		{"PVC", "          emptyDir:\n            sizeLimit: 64Mi\n        - name: tmp", "          persistentVolumeClaim:\n            claimName: fhir-bulk-proxy-data\n        - name: tmp", "PersistentVolumeClaim"},
		{"data dir elsewhere", "mountPath: " + img.DataDir, "mountPath: /data", "no writable volume"},
		{"no spreading", "topologyKey: kubernetes.io/hostname", "topologyKey: topology.kubernetes.io/region", "podAntiAffinity"},
		{"spreading selects nothing", "                  matchLabels:\n                    app.kubernetes.io/name: fhir-bulk-proxy",
			"                  matchLabels:\n                    app.kubernetes.io/name: other", "podAntiAffinity"},
		{"service port", "targetPort: http", "targetPort: 9090", "does not expose"},
	}
	for _, c := range cases {
		expectProblem(t, c.name, checkKubernetesReplicated([]byte(mutate(t, src, c.old, c.new)), img), c.want)
	}

	// A label both Deployments' Pods carry, chosen as the Service's selector.
	broad := src
	for _, name := range []string{"fhir-bulk-proxy", "fhir-server"} {
		broad = mutate(t, broad, "      labels:\n        app.kubernetes.io/name: "+name+"\n",
			"      labels:\n        app.kubernetes.io/name: "+name+"\n        app.kubernetes.io/part-of: fhir\n")
	}
	broad = mutate(t, broad, "  selector:\n    app.kubernetes.io/name: fhir-bulk-proxy\n  ports:", "  selector:\n    app.kubernetes.io/part-of: fhir\n  ports:")
	expectProblem(t, "service selects HAPI", checkKubernetesReplicated([]byte(broad), img), "selects the Pods of fhir-server")
}
