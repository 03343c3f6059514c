package app

import (
	"bufio"
	"html"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// Markers of the upstream's error bodies: neither may reach the log.
const (
	htmlBodyMarker = "nginx-fragment-7c41d9"
	ooBodyMarker   = "hapi-diagnostics-fragment-5e2a07"
)

// phiPrefix starts every simulated patient id: a string that cannot appear
// in a log line by chance.
const phiPrefix = "phi-q8z3w-"

// echoingUpstream wraps the synthetic upstream with the manners of servers
// whose error answers echo the request (patient ids and all):
//   - every search of Encounter is answered 400 with an OperationOutcome
//     whose diagnostics quote the request URL and form body (as HAPI
//     FHIR's do for parameters it rejects);
//   - the first request of every distinct Condition search is answered
//     503 with an HTML page quoting the request (a load balancer's page);
//   - $everything has its connection cut before any answer.
func echoingUpstream(h http.Handler) http.Handler {
	var mu sync.Mutex
	seen := map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var form string
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			form = string(b)
			r.Body = io.NopCloser(strings.NewReader(form))
		}
		echo := r.Method + " " + r.URL.String() + " " + form
		switch p := r.URL.Path; {
		case strings.HasSuffix(p, "/$everything"):
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		case strings.HasSuffix(p, "/Encounter") || strings.HasSuffix(p, "/Encounter/_search"):
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":`+
				jsonString(ooBodyMarker+": cannot process "+echo)+`}]}`)
			return
		case strings.HasSuffix(p, "/Condition") || strings.HasSuffix(p, "/Condition/_search"):
			mu.Lock()
			first := !seen[echo]
			seen[echo] = true
			mu.Unlock()
			if first {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "<html><head><title>503 Service Unavailable</title></head><body><h1>"+htmlBodyMarker+
					"</h1><p>The server could not answer "+html.EscapeString(echo)+"</p></body></html>\n")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			b.WriteString(" ")
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// TestPatientIDsAreNeverLogged runs a faulty Group export (errors,
// throttling, cut connections, a type that always fails, upstream error
// bodies that echo the request) and pass-through requests at debug level,
// and looks for every patient id and every upstream body in the log.
// Patient ids are PHI: the log may carry types, parameter names, counts,
// statuses and unit ids, never parameter values or upstream bodies.
func TestPatientIDsAreNeverLogged(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	e := newEnvWrapped(t, fhirtest.Options{
		Patients:        30,
		PatientIDPrefix: phiPrefix,
		Faults:          fhirtest.Faults{ErrorRate: 0.08, ThrottleRate: 0.04, CutRate: 0.15},
		FailTypes:       []string{"Procedure"},
		FaultSeed:       11,
	}, func(c *config.Config) {
		c.UpstreamHTTP.GiveUpAfter = time.Second
		c.Export.BatchSize = 4 // several units per type, some with POST _search
	}, log, echoingUpstream)

	ids := e.sim.PatientIDs()
	members := e.sim.Members("small")
	if len(members) < 4 || !strings.HasPrefix(members[0], phiPrefix) {
		t.Fatalf("members of small: %v", members)
	}

	// The faulty export.
	m, status := e.export("small", url.Values{"_type": {"Patient,Observation,Condition,Encounter,Procedure"}})
	if len(m.Error) == 0 {
		t.Errorf("the export reported no errors: the failing types prove nothing")
	}
	e.do("GET", status, nil, "")
	// A system-level export: the planner's count probes (debug lines),
	// one of them answered with the echoing OperationOutcome.
	e.exportAt("/$export", url.Values{"_type": {"Patient,Encounter,Condition"}})

	// Kick-offs that name patients: in the path, and a non-member in a
	// Parameters body (refused, with the id in the error message).
	var outsider string
	for _, id := range ids {
		if !slices.Contains(members, id) {
			outsider = id
			break
		}
	}
	e.do("GET", "/Patient/"+members[1]+"/$export?_type=Patient", http.Header{"Prefer": {"respond-async"}}, "")
	if resp, b := e.postExport("/Group/small/$export", `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/`+outsider+`"}}]}`); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a non-member patient: %d %s", resp.StatusCode, b)
	}
	e.do("GET", "/Patient/"+ids[2]+"/$export?_type=Patient&_typeFilter="+url.QueryEscape("Observation?subject=Patient/"+ids[2]),
		http.Header{"Prefer": {"respond-async"}}, "")

	// Pass-through reads and searches, some answered with errors.
	e.do("GET", "/Patient/"+ids[0], nil, "")
	e.do("GET", "/Patient/"+ids[0]+"/_history", nil, "")
	e.do("GET", "/Observation?patient="+ids[0]+"&_count=3", nil, "")
	e.do("GET", "/Observation?subject=Patient/"+ids[1]+"&_count=3", nil, "")
	e.do("GET", "/Encounter?patient="+ids[1], nil, "")
	e.do("GET", "/Condition?_id="+ids[3], nil, "")
	e.do("GET", "/Patient/"+ids[4]+"/$everything", nil, "")
	e.do("GET", "/Patient/"+ids[5]+"/Observation?_count=2", nil, "")

	out := logs.String()
	for _, want := range []string{`"message":"request"`, "upstream request failed; retrying", "work unit failed", "pass-through request failed",
		"count probe"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log has no %q line: the test proves less than it should", want)
		}
	}
	if c := e.sim.FaultCounts(); c.Errors == 0 || c.Throttles == 0 || c.Cuts == 0 {
		t.Errorf("faults injected: %+v; want some of each", c)
	}

	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lines, bad := 0, 0
	for sc.Scan() {
		line := sc.Text()
		lines++
		var found []string
		for _, id := range ids {
			if strings.Contains(line, "Patient/"+id) {
				found = append(found, "Patient/"+id)
			} else if strings.Contains(line, id) {
				found = append(found, id)
			}
		}
		if len(found) == 0 && strings.Contains(line, phiPrefix) {
			found = append(found, phiPrefix+"…")
		}
		for _, marker := range []string{htmlBodyMarker, ooBodyMarker, "<html", "Service Unavailable", "Simulated"} {
			if strings.Contains(line, marker) {
				found = append(found, "body: "+marker)
			}
		}
		if len(found) > 0 {
			bad++
			if bad <= 15 {
				t.Errorf("log line carries %v:\n%s", found, line)
			}
		}
	}
	if bad > 15 {
		t.Errorf("... and %d more lines", bad-15)
	}
	if lines < 20 {
		t.Fatalf("only %d log lines", lines)
	}
	if testing.Verbose() {
		t.Log(out)
	}
	t.Logf("%d log lines scanned, %d with patient ids or upstream bodies", lines, bad)
}
