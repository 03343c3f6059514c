package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
)

// Exit statuses of the export command.
const (
	exportExitOK        = 0
	exportExitFailed    = 1
	exportExitUsage     = 2
	exportExitInterrupt = 130
)

// exportMaxProblems is how many validation problems are listed.
const exportMaxProblems = 20

const exportUsageText = `Usage: fhir-bulk-proxy export --base URL (--group ID | --cohort FILE | --patients | --system | --status URL) --out DIR [flags]

Runs a FHIR Bulk Data export against any Bulk Data server (this proxy or
another): kick-off, polling, parallel downloads with resume, validation of
every line. Exit status: 0 complete and valid, 1 failed or invalid, 2 usage,
130 interrupted.

Flags:
`

// exportList is a repeatable flag.
type exportList []string

func (l *exportList) String() string { return strings.Join(*l, ",") }
func (l *exportList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// exportCommaList is a repeatable flag whose values are comma lists.
type exportCommaList []string

func (l *exportCommaList) String() string { return strings.Join(*l, ",") }
func (l *exportCommaList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// exportFlags are the export command's flags.
type exportFlags struct {
	base, out, status, group string
	patientsLevel, system    bool

	types, elements, associated          exportCommaList
	typeFilters, patients, headers       exportList
	since, until, organizeBy, format     string
	partialManifests, lenient            bool
	token, clientID, keyFile, tokenURL   string
	scope, keyID, alg                    string
	parallel, retries                    int
	maxWait                              time.Duration
	cancelOnInterrupt, force             bool
	progress                             string
	request                              bulkclient.Request
	header                               http.Header
	statusGiven, levelGiven, paramsGiven bool
	// cohort is a Bulk Cohort Group file: created first, then exported.
	cohort string
}

func parseExportFlags(args []string, stderr io.Writer) (*exportFlags, error) {
	f := &exportFlags{}
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, exportUsageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.base, "base", "", "FHIR base URL of the Bulk Data server (required)")
	fs.StringVar(&f.out, "out", "", "directory for the files and manifest.json (required; empty or new, see --force)")
	fs.BoolVar(&f.force, "force", false, "export into a non-empty --out: first remove the files an earlier export wrote there (*.ndjson, errors/, deleted/, manifest.json); other files stay")
	fs.StringVar(&f.group, "group", "", "export the Group with this id ([base]/Group/ID/$export)")
	fs.BoolVar(&f.patientsLevel, "patients", false, "export all patients ([base]/Patient/$export)")
	fs.StringVar(&f.cohort, "cohort", "", "create the Bulk Cohort Group in this JSON file (POST [base]/Group, async), then export it (needs a Group create scope, e.g. --scope 'system/*.read system/Group.c')")
	fs.BoolVar(&f.system, "system", false, "system-level export ([base]/$export)")
	fs.StringVar(&f.status, "status", "", "re-attach to a running export by its status URL instead of kicking one off")
	fs.Var(&f.types, "type", "_type: resource types, comma separated (repeatable)")
	fs.StringVar(&f.since, "since", "", "_since: only resources changed after this FHIR instant")
	fs.StringVar(&f.until, "until", "", "_until: only resources changed at or before this FHIR instant")
	fs.Var(&f.typeFilters, "type-filter", "_typeFilter, e.g. 'Observation?category=laboratory' (repeatable)")
	fs.Var(&f.elements, "elements", "_elements, comma separated (repeatable)")
	fs.Var(&f.patients, "patient", "patient: a Patient id or reference (repeatable; the kick-off becomes a POST with a Parameters body)")
	fs.Var(&f.associated, "include-associated-data", "includeAssociatedData values, comma separated (repeatable)")
	fs.StringVar(&f.organizeBy, "organize-output-by", "", "organizeOutputBy, e.g. Patient")
	fs.BoolVar(&f.partialManifests, "allow-partial-manifests", false, "allowPartialManifests=true (the pages of the manifest are merged)")
	fs.StringVar(&f.format, "output-format", "", "_outputFormat (e.g. application/fhir+ndjson)")
	fs.BoolVar(&f.lenient, "lenient", false, "send Prefer: handling=lenient")
	fs.Var(&f.headers, "header", "extra request header 'Name: value', sent only to the origin of --base (repeatable)")
	fs.StringVar(&f.token, "token", "", "static bearer token (sent only to the origin of --base)")
	fs.StringVar(&f.clientID, "client-id", "", "SMART Backend Services client id (with --private-key)")
	fs.StringVar(&f.keyFile, "private-key", "", "SMART Backend Services private key (RSA, EC or Ed25519): a PEM file, a private JWK, or a JWK Set holding one private key")
	fs.StringVar(&f.tokenURL, "token-url", "", "token endpoint (default: token_endpoint of [base]/.well-known/smart-configuration)")
	fs.StringVar(&f.scope, "scope", "system/*.read", "scope requested with SMART Backend Services")
	fs.StringVar(&f.keyID, "key-id", "", "kid of the client assertions: the key's kid in the JWK Set the server registered (servers require one; default: the kid of a JWK --private-key, else the key's RFC 7638 JWK thumbprint)")
	fs.StringVar(&f.alg, "alg", "", "JWS algorithm of the client assertions (default after the key: RS384, ES256/ES384/ES512, EdDSA)")
	fs.IntVar(&f.parallel, "parallel", 4, "files downloaded at once")
	fs.IntVar(&f.retries, "retries", 5, "retries of a file download and of failed status polls in a row")
	fs.DurationVar(&f.maxWait, "max-wait", 60*time.Second, "longest wait between polls when the server sends no Retry-After (exponential backoff from 1s)")
	fs.BoolVar(&f.cancelOnInterrupt, "cancel-on-interrupt", false, "on Ctrl-C, delete the export on the server (DELETE on the status URL)")
	fs.StringVar(&f.progress, "progress", "auto", "progress display: auto (bars on a terminal), bars, plain or none")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })

	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	if fs.NArg() > 0 {
		bad("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if u, err := url.Parse(f.base); f.base == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("--base must be the absolute http(s) URL of the FHIR base")
	}
	f.base = strings.TrimSuffix(f.base, "/")
	if f.out == "" {
		bad("--out is required")
	}
	levels := 0
	for _, on := range []bool{f.group != "", f.patientsLevel, f.system, f.cohort != ""} {
		if on {
			levels++
		}
	}
	f.statusGiven = f.status != ""
	f.levelGiven = levels > 0
	if f.statusGiven {
		if u, err := url.Parse(f.status); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("--status must be an absolute http(s) URL")
		}
	} else if levels != 1 {
		bad("give exactly one of --group ID, --cohort FILE, --patients and --system (or --status URL)")
	}
	for _, name := range []string{"type", "since", "until", "type-filter", "elements", "patient", "include-associated-data",
		"organize-output-by", "allow-partial-manifests", "output-format", "lenient"} {
		f.paramsGiven = f.paramsGiven || set[name]
	}
	if f.system && len(f.patients) > 0 {
		bad("--patient needs --group or --patients")
	}
	if f.token != "" && (f.clientID != "" || f.keyFile != "") {
		bad("give --token or --client-id with --private-key, not both")
	}
	if (f.clientID == "") != (f.keyFile == "") {
		bad("--client-id and --private-key go together")
	}
	if f.parallel < 1 {
		bad("--parallel must be at least 1")
	}
	if f.retries < 1 {
		bad("--retries must be at least 1")
	}
	if f.maxWait <= 0 {
		bad("--max-wait must be positive")
	}
	switch f.progress {
	case "auto", "bars", "plain", "none":
	default:
		bad("--progress must be auto, bars, plain or none")
	}
	f.header = http.Header{}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			bad("--header %q is not 'Name: value'", h)
			continue
		}
		f.header.Add(k, strings.TrimSpace(v))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(stderr, "export: %s\n", p)
		}
		fmt.Fprintln(stderr, "run 'fhir-bulk-proxy export --help' for the flags")
		return nil, errUsage
	}

	r := bulkclient.Request{
		Types: f.types, Since: f.since, Until: f.until, TypeFilters: f.typeFilters, Elements: f.elements,
		Patients: f.patients, IncludeAssociatedData: f.associated, OrganizeOutputBy: f.organizeBy,
		AllowPartialManifests: f.partialManifests, OutputFormat: f.format, Lenient: f.lenient,
	}
	switch {
	case f.group != "" || f.cohort != "":
		r.Level, r.Group = bulkclient.LevelGroup, f.group
	case f.patientsLevel:
		r.Level = bulkclient.LevelPatient
	default:
		r.Level = bulkclient.LevelSystem
	}
	f.request = r
	return f, nil
}

// exportCmd runs `fhir-bulk-proxy export` and returns its exit status.
func exportCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, err := parseExportFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exportExitOK
	case err != nil:
		return exportExitUsage
	}
	start := time.Now()

	bars := false
	switch f.progress {
	case "bars":
		bars = true
	case "auto":
		bars = bulkclient.IsTerminal(stderr)
	}
	progressOut := stderr
	if f.progress == "none" {
		progressOut = io.Discard
	}
	rep := bulkclient.NewReporter(progressOut, bars)
	defer rep.Finish()
	fail := func(format string, a ...any) int {
		rep.Finish()
		fmt.Fprintf(stderr, "export: "+format+"\n", a...)
		return exportExitFailed
	}

	// One folder, one export: check (or, with --force, clear) it before
	// the kick-off, so that a refusal leaves no export behind.
	state, err := bulkclient.ReadDirState(f.out)
	if err != nil {
		state = nil // unreadable: not ours to trust
	}
	if f.force {
		n, err := bulkclient.ClearOutDir(f.out)
		if err != nil {
			return fail("--force: %v", err)
		}
		if n > 0 {
			rep.Logf("--force: removed %d files of an earlier export from %s", n, f.out)
		}
	} else if err := bulkclient.CheckOutDir(f.out, f.status); err != nil {
		rep.Finish()
		fmt.Fprintf(stderr, "export: %v\n", err)
		return exportExitUsage
	}

	creds, err := exportCredentials(ctx, f, rep)
	if err != nil {
		if ctx.Err() != nil {
			rep.Finish()
			fmt.Fprintln(stderr, "export: interrupted")
			return exportExitInterrupt
		}
		return fail("%v", err)
	}
	polls := &pollRecorder{Reporter: rep}
	ex := &bulkclient.Exporter{
		Base:        f.base,
		Header:      f.header,
		Credentials: creds,
		MaxWait:     f.maxWait,
		Parallel:    f.parallel,
		Retries:     f.retries,
		Progress:    polls,
	}

	statusURL := f.status
	interrupted := func() int {
		rep.Finish()
		switch {
		case statusURL == "":
			fmt.Fprintln(stderr, "export: interrupted before the server accepted the export")
		case f.cancelOnInterrupt:
			// The command's context has ended: the DELETE gets its own.
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := ex.Cancel(cctx, statusURL); err != nil {
				fmt.Fprintf(stderr, "export: interrupted; cancelling the export failed: %v\n", err)
			} else {
				fmt.Fprintf(stderr, "export: interrupted; the export was cancelled (DELETE %s)\n", statusURL)
			}
		default:
			// The re-attached client waits what the server last asked
			// (this client's last poll, or the one before it re-attached).
			next := polls.nextPoll()
			if next.IsZero() && state != nil && state.StatusURL == statusURL {
				next = state.NextPoll
			}
			_ = bulkclient.WriteDirState(f.out, &bulkclient.DirState{StatusURL: statusURL, NextPoll: next})
			fmt.Fprintf(stderr, "export: interrupted; the export goes on at the server. Re-attach with:\n"+
				"  fhir-bulk-proxy export --base %s --status %s --out %s\n", f.base, statusURL, f.out)
		}
		return exportExitInterrupt
	}

	if f.statusGiven {
		if f.levelGiven || f.paramsGiven {
			rep.Logf("--status given: the kick-off flags are ignored")
		}
		rep.Logf("re-attaching to %s", statusURL)
		if state != nil && state.StatusURL == statusURL {
			// An interrupted client was told when to poll next: a poll
			// before then is throttled (429).
			if wait := time.Until(state.NextPoll); wait > 0 {
				wait = min(wait, maxFirstPollWait)
				rep.Logf("waiting %s before the first status poll, as the server asked (Retry-After)", wait.Round(100*time.Millisecond))
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return interrupted()
				case <-t.C:
				}
			}
		}
	} else {
		if f.cohort != "" {
			if f.request.Group, err = createCohort(ctx, ex, f.cohort, rep); err != nil {
				if ctx.Err() != nil {
					return interrupted()
				}
				return fail("%v", err)
			}
		}
		method := "GET"
		if f.request.UsesPost() {
			method = "POST"
		}
		rep.Logf("kick-off: %s %s%s", method, f.base, f.request.Path())
		statusURL, err = ex.KickOff(ctx, f.request)
		if err != nil {
			if ctx.Err() != nil {
				return interrupted()
			}
			return fail("%v", err)
		}
	}
	// The folder now belongs to this export (CheckOutDir lets a
	// re-attached client in).
	if err := bulkclient.WriteDirState(f.out, &bulkclient.DirState{StatusURL: statusURL}); err != nil {
		return fail("--out: %v", err)
	}

	m, err := ex.Poll(ctx, statusURL)
	if err != nil {
		if ctx.Err() != nil {
			return interrupted()
		}
		return fail("%v", err)
	}
	waited := time.Since(start)
	if err := bulkclient.WriteManifest(f.out, m); err != nil {
		return fail("%v", err)
	}
	if m.RequiresAccessToken && (creds != nil || len(f.header) > 0) {
		other := 0
		for _, list := range [][]bulkclient.File{m.Output, m.Error, m.Deleted} {
			for _, fl := range list {
				if !ex.SameOrigin(fl.URL) {
					other++
				}
			}
		}
		if other > 0 {
			rep.Logf("warning: %d file URLs are not on the origin of --base; the access token is not sent there", other)
		}
	}

	dlStart := time.Now()
	res, err := ex.Download(ctx, m, f.out, exportMaxProblems)
	if err != nil {
		if ctx.Err() != nil {
			return interrupted()
		}
		return fail("%v", err)
	}
	rep.Finish()
	exportSummary(stdout, f, m, res, statusURL, time.Since(start), waited, time.Since(dlStart))
	if !res.OK() {
		fmt.Fprintf(stderr, "export: validation failed: %d problems\n", res.ProblemCount)
		for _, p := range res.Problems {
			fmt.Fprintf(stderr, "  %s\n", p)
		}
		if more := res.ProblemCount - len(res.Problems); more > 0 {
			fmt.Fprintf(stderr, "  ... and %d more\n", more)
		}
		return exportExitFailed
	}
	return exportExitOK
}

// maxFirstPollWait bounds the wait before a re-attached client's first
// poll (a recorded time far ahead is no reason to sleep for days).
const maxFirstPollWait = time.Hour

// pollRecorder is the progress reporter, also noting when the server
// allows the next status poll by its Retry-After (for the state file of
// an interrupted export).
type pollRecorder struct {
	*bulkclient.Reporter
	mu   sync.Mutex
	next time.Time
}

func (p *pollRecorder) Polled(s bulkclient.PollStatus) {
	p.mu.Lock()
	p.next = time.Time{}
	if s.FromServer {
		p.next = time.Now().Add(s.Wait)
	}
	p.mu.Unlock()
	p.Reporter.Polled(s)
}

func (p *pollRecorder) nextPoll() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.next
}

// exportSummary prints what was exported: files, resources per type,
// bytes, durations, error files.
func exportSummary(w io.Writer, f *exportFlags, m *bulkclient.Manifest, res *bulkclient.Result, statusURL string, took, waited, downloading time.Duration) {
	filesByType := map[string]int{}
	outputs, errorFiles, deletedFiles := 0, 0, 0
	for _, fr := range res.Files {
		switch fr.Kind {
		case bulkclient.KindOutput:
			outputs++
			for t := range fr.Resources {
				filesByType[t]++
			}
		case bulkclient.KindError:
			errorFiles++
		case bulkclient.KindDeleted:
			deletedFiles++
		}
	}
	var total int64
	for _, n := range res.Resources {
		total += n
	}
	fmt.Fprintf(w, "export done in %s (waiting for the server %s, downloading %s)\n",
		took.Round(time.Millisecond), waited.Round(time.Millisecond), downloading.Round(time.Millisecond))
	fmt.Fprintf(w, "status URL:  %s\n", statusURL)
	fmt.Fprintf(w, "transaction: %s\n", m.TransactionTime)
	if m.OutputOrganizedBy != "" {
		fmt.Fprintf(w, "organized by %s\n", m.OutputOrganizedBy)
	}
	fmt.Fprintf(w, "files:       %d output, %d error, %d deleted; %s in %s\n",
		outputs, errorFiles, deletedFiles, bulkclient.HumanBytes(res.Bytes), f.out)
	fmt.Fprintf(w, "\n%-24s %6s %10s\n", "type", "files", "resources")
	for _, t := range bulkclient.SortedTypes(res.Resources) {
		fmt.Fprintf(w, "%-24s %6d %10d\n", t, filesByType[t], res.Resources[t])
	}
	fmt.Fprintf(w, "%-24s %6d %10d\n", "total", outputs, total)
	if errorFiles > 0 {
		fmt.Fprintf(w, "\n%d error files with %d issues in %s:\n", errorFiles, res.IssueCount, filepath.Join(f.out, bulkclient.ErrorsDir))
		shown := min(len(res.Issues), 10)
		for _, is := range res.Issues[:shown] {
			fmt.Fprintf(w, "  %s\n", is)
		}
		if res.IssueCount > shown {
			fmt.Fprintf(w, "  ... and %d more\n", res.IssueCount-shown)
		}
	}
	if deletedFiles > 0 {
		fmt.Fprintf(w, "\n%d deleted files in %s\n", deletedFiles, filepath.Join(f.out, bulkclient.DeletedDir))
	}
}
