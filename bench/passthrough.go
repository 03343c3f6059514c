package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// passTarget is one way of reaching the synthetic upstream.
type passTarget struct {
	name string
	base string // FHIR base URL
}

func runPassThrough(ctx context.Context, o Options, rep *Report) error {
	sim := fhirtest.New(fhirtest.Options{Patients: 100, Seed: 1})
	srv, err := startServer(sim.Handler())
	if err != nil {
		return err
	}
	defer srv.Close()
	a, stop, err := startProxy(ctx, srv.URL()+"/fhir", 0)
	if err != nil {
		return err
	}
	defer stop()
	rp, err := startReverseProxy(srv.URL(), o.PassConns)
	if err != nil {
		return err
	}
	defer rp.Close()

	targets := []passTarget{
		{"direct (no proxy)", srv.URL() + "/fhir"},
		{"fhir-bulk-proxy", a.URL() + "/fhir"},
		{"httputil.ReverseProxy", rp.URL() + "/fhir"},
	}
	ngx, err := startNginx(ctx, o.NginxPath, srv.URL())
	switch {
	case err != nil:
		rep.note("nginx not measured: %v", err)
	default:
		defer ngx.Stop()
		targets = append(targets, passTarget{"nginx " + ngx.version, ngx.URL() + "/fhir"})
	}

	ids := sim.PatientIDs()
	results := map[string]loadResult{}
	for _, t := range targets {
		urls := make([]string, len(ids))
		for i, id := range ids {
			urls[i] = t.base + "/Patient/" + id
		}
		if _, err := runLoad(ctx, urls, min(500, o.PassRequests), o.PassConns); err != nil { // warm-up
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r, err := runLoad(ctx, urls, o.PassRequests, o.PassConns)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		results[t.name] = r
		progress(o, "  %-28s %8.0f req/s  p50 %.3f ms  p99 %.3f ms", t.name, r.RPS, ms(r.P50), ms(r.P99))
	}
	direct, prox := results[targets[0].name], results[targets[1].name]
	for _, t := range targets {
		r := results[t.name]
		rep.add(Figure{
			Workload: "pass-through", Name: t.name + ": req/s / direct req/s", Value: r.RPS / direct.RPS, Unit: "x",
			Detail: fmt.Sprintf("%.0f req/s, p50 %.3f ms, p99 %.3f ms (%d GET Patient/{id}, %d connections)",
				r.RPS, ms(r.P50), ms(r.P99), r.Requests, o.PassConns),
		})
	}
	added := ms(prox.P50) - ms(direct.P50)
	rep.add(Figure{
		Workload: "pass-through", Name: "p50 added by fhir-bulk-proxy vs direct", Value: added, Unit: "ms",
		Detail: fmt.Sprintf("p50 %.3f ms vs %.3f ms (x%.2f); p99 %.3f ms vs %.3f ms", ms(prox.P50), ms(direct.P50),
			ms(prox.P50)/ms(direct.P50), ms(prox.P99), ms(direct.P99)),
		Goal: "<= 0.3 ms", Met: met(added <= 0.3),
	})
	if hp, ok := results["httputil.ReverseProxy"]; ok {
		rep.add(Figure{
			Workload: "pass-through", Name: "fhir-bulk-proxy req/s / httputil.ReverseProxy req/s", Value: prox.RPS / hp.RPS, Unit: "x",
			Detail: fmt.Sprintf("%.0f vs %.0f req/s", prox.RPS, hp.RPS),
		})
	}
	if ngx != nil {
		nr := results[targets[len(targets)-1].name]
		ratio := prox.RPS / nr.RPS
		rep.add(Figure{
			Workload: "pass-through", Name: "fhir-bulk-proxy req/s / nginx req/s", Value: ratio, Unit: "x",
			Detail: fmt.Sprintf("%.0f vs %.0f req/s; nginx p50 %.3f ms, p99 %.3f ms", prox.RPS, nr.RPS, ms(nr.P50), ms(nr.P99)),
			Goal:   ">= 0.9", Met: met(ratio >= 0.9),
		})
	} else {
		rep.add(Figure{Workload: "pass-through", Name: "fhir-bulk-proxy req/s / nginx req/s", Goal: ">= 0.9",
			Detail: "not measured: nginx is not installed"})
	}
	return nil
}

// startReverseProxy serves a bare httputil.ReverseProxy to target: no
// framework, no rewriting.
func startReverseProxy(target string, conns int) (*server, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(conns, 2)
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.SetXForwarded()
		},
		Transport: tr,
	}
	return startServer(rp)
}

// nginx is a running nginx reverse proxy.
type nginx struct {
	cmd     *exec.Cmd
	dir     string
	port    int
	version string
	done    chan error
}

func (n *nginx) URL() string { return "http://127.0.0.1:" + strconv.Itoa(n.port) }

// nginxConfig is a minimal reverse-proxy configuration: keep-alive to the
// upstream, no access log, every path under prefix.
func nginxConfig(prefix string, port int, upstreamHostPort string, asRoot bool) string {
	var b strings.Builder
	if asRoot {
		b.WriteString("user root;\n")
	}
	fmt.Fprintf(&b, `worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    upstream fhir { server %[3]s; keepalive 64; }
    server {
        listen 127.0.0.1:%[2]d;
        location / {
            proxy_pass http://fhir;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }
    }
}
`, prefix, port, upstreamHostPort)
	return b.String()
}

// startNginx runs nginx as a reverse proxy to target with a generated
// configuration in a temporary directory, as the current user.
func startNginx(ctx context.Context, path, target string) (*nginx, error) {
	if path == "none" {
		return nil, fmt.Errorf("skipped (--nginx none)")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s is not installed (apt-get install nginx); .ci/run does not need it", path)
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	out, _ := exec.CommandContext(ctx, path, "-v").CombinedOutput()
	version := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version:"))
	dir, err := os.MkdirTemp("", "fbp-bench-nginx-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(dir, port, u.Host, os.Geteuid() == 0)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(path, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	n := &nginx{cmd: cmd, dir: dir, port: port, version: version, done: make(chan error, 1)}
	go func() { n.done <- cmd.Wait() }()
	if err := waitHTTP(ctx, n.URL()+"/fhir/metadata", 5*time.Second); err != nil {
		n.Stop()
		logTail, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return nil, fmt.Errorf("nginx did not start: %v %s", err, strings.TrimSpace(string(logTail)))
	}
	return n, nil
}

// Stop ends nginx (its master and workers) and removes its directory.
func (n *nginx) Stop() {
	_ = n.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	os.RemoveAll(n.dir)
}
