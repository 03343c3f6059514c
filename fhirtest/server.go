// Package fhirtest is a synthetic FHIR R4 server used as the upstream in
// tests, demos and benchmarks of fhir-bulk-proxy.
//
// New generates a deterministic population of patients with a realistic mix
// of clinical resources plus shared Practitioners, Organizations, Locations,
// PractitionerRoles, Medications and Groups. Handler serves them with the
// REST behaviour of a typical server (HAPI FHIR): searchset Bundles with
// opaque, expiring next links, _count caps, comma OR lists, _lastUpdated
// ranges, strict rejection of unknown parameters, and injectable faults
// (latency with jitter and a long tail, errors, throttling, connections cut
// mid-body, stalled bodies, expiring cursors, authorization failures) with
// counters (FaultCounts, PageStats) to measure how a client copes. Expected
// computes the ground truth of a bulk export directly from the data.
//
// Resources can be deleted (DELETE, Delete, Options.Deleted at generation)
// and touched (Update); history (GET _history, [type]/_history) lists the
// changes and deletions since _since, and ExpectedDeleted gives the ground
// truth of an export's deleted[] output.
//
// Real servers are less kind, and the Server can act like them, each
// manner switched on its own (Options.WithRealManners turns on the usual
// set): next links on _summary=count answers (CountLinks), Bundle.total
// only with _total=accurate (TotalOnlyAccurate), _summary=count ignored
// (IgnoreSummaryCount), unknown parameters silently dropped
// (LenientParams), HAPI FHIR's or offset paging (Paging) and
// meta.lastUpdated shown to whole seconds (LastUpdatedSeconds).
// RequestCounts tells how a client used the server.
package fhirtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a Server. The zero value is usable: every zero field
// takes its documented default.
type Options struct {
	// Patients is the number of patients (default 100).
	Patients int
	// PatientIDPrefix is put before every Patient id: "1", "2", ... become
	// PatientIDPrefix+"1", ... (letters, digits, '-' and '.' only, so that
	// ids stay FHIR ids). A long random prefix makes ids that cannot appear
	// anywhere by chance, for tests that look for them (in logs, say).
	// Default "": ids are small integers.
	PatientIDPrefix string
	// Seed seeds the generator; the same Seed and Patients give
	// byte-identical data.
	Seed int64
	// BasePath is the path the FHIR base is served under (default "/fhir";
	// "/" serves at the root).
	BasePath string
	// DefaultCount is the page size when _count is absent or 0 (default 50).
	DefaultCount int
	// MaxCount caps _count (default 1000).
	MaxCount int
	// PageTTL is how long a next link stays valid (default 10m). Expired or
	// unknown page tokens are answered 410 Gone with an OperationOutcome.
	PageTTL time.Duration
	// Clock, if set, is the page cache's clock (tests move it instead of
	// sleeping); the default is time.Now.
	Clock func() time.Time
	// Latency is added to every request (reads and metadata included); the
	// sleep ends early when the request's context is cancelled. Faults.Latency
	// adds to it for searches and page fetches.
	Latency time.Duration
	// MaxConcurrent, if > 0, limits how many requests are served at once;
	// the others wait (this models a server's capacity).
	MaxConcurrent int
	// NoORLists makes a comma in any search value answer 400 with an
	// OperationOutcome "OR lists not supported".
	NoORLists bool
	// ErrorRate is the share of search and page requests answered 500. It
	// is the default of Faults.ErrorRate and of every TypeFaults entry's.
	ErrorRate float64
	// ThrottleRate is the share of search and page requests answered 429
	// with Retry-After. It is the default of Faults.ThrottleRate and of every
	// TypeFaults entry's.
	ThrottleRate float64
	// RetryAfter is the Retry-After of 429 answers, sent as delta-seconds
	// (rounded up, at least 1; default 1s). It is the default of
	// Faults.RetryAfter and of every TypeFaults entry's.
	RetryAfter time.Duration
	// FailTypes lists resource types whose searches always answer 500.
	FailTypes []string
	// Faults are injected into every search and page fetch (page fetches
	// count as the type of the search that made the token; fetches of
	// unknown or expired tokens use Faults).
	Faults Faults
	// TypeFaults, when it has an entry for a resource type, replaces Faults
	// for that type's searches and page fetches (zero fields still take
	// the top-level ErrorRate, ThrottleRate and RetryAfter defaults).
	TypeFaults map[string]Faults
	// FaultSeed seeds the fault source (0: Seed).
	FaultSeed int64
	// Authorize, when set, is asked about every request (metadata
	// included); a false answer is a 401 with an OperationOutcome and
	// WWW-Authenticate: Bearer.
	Authorize func(r *http.Request) bool
	// OutcomeEntries adds an OperationOutcome entry with search.mode
	// "outcome" to every search page, as HAPI does for warnings.
	OutcomeEntries bool
	// Pretty indents JSON responses.
	Pretty bool
	// Deleted is the share (0..1) of the generated clinical resources (the
	// per-patient types except Patient) that are deleted at generation time,
	// each at a random time after its lastUpdated within the last year of
	// the simulated window (which ends 2025-06-01), so that history and
	// exports with _since see deletions. The choice is deterministic in
	// Seed and leaves the surviving resources byte-identical.
	Deleted float64
	// NoHistory makes every _history request answer 404, as a server
	// without history support does, and leaves the history interactions
	// out of the CapabilityStatement.
	NoHistory bool
	// AttachmentURLs makes DocumentReference attachments point to
	// Binary/doc-{id} on this server (relative URLs, as HAPI writes them)
	// instead of carrying their data, and serves GET Binary/{id} with the
	// raw content (BinaryContent), behind Authorize like everything else.
	AttachmentURLs bool

	// The manners of real servers, all off by default (see
	// WithRealManners).

	// CountLinks gives _summary=count answers next and last links, as a
	// paged search with CountPageSize entries per page would have (as some
	// real servers, a Go FHIR server on PostgreSQL among them, do).
	// Following them works: each page is again a Bundle with the total and
	// no entries. Such fetches are counted in RequestCounts.CountPages (a
	// correct client makes none). Default false: count answers carry no
	// next link.
	CountLinks bool
	// CountPageSize is the page size behind CountLinks (default 20 when
	// CountLinks is on).
	CountPageSize int
	// TotalOnlyAccurate makes ordinary search pages (first and following)
	// carry Bundle.total only when the search had _total=accurate.
	// _summary=count answers still carry it. Default false: every page
	// carries the total unless the first request had _total=none (then
	// its first page does not).
	TotalOnlyAccurate bool
	// IgnoreSummaryCount makes the server ignore _summary=count: the answer
	// is an ordinary searchset page with entries (total as
	// TotalOnlyAccurate says), and _summary is left out of its self link.
	// Default false.
	IgnoreSummaryCount bool
	// LenientParams makes the server silently ignore unknown search
	// parameters, as HAPI FHIR does by default: the search runs without
	// them and they are left out of the Bundle's self link (which always
	// lists the applied parameters, so a client can notice). Default
	// false: unknown parameters are answered 400 with an OperationOutcome.
	LenientParams bool
	// Paging is the paging style (default PagingToken; unknown values act
	// as PagingToken).
	Paging PagingStyle
	// LastUpdatedSeconds shows meta.lastUpdated to whole seconds in served
	// resources (and so in Expected), while _lastUpdated compares against
	// the full stored instant (milliseconds), as servers that store finer
	// than they show do. Default false: milliseconds are shown.
	LastUpdatedSeconds bool
}

func (o Options) withDefaults() Options {
	if o.Patients <= 0 {
		o.Patients = 100
	}
	switch o.BasePath {
	case "":
		o.BasePath = "/fhir"
	case "/":
		o.BasePath = ""
	default:
		o.BasePath = "/" + strings.Trim(o.BasePath, "/")
	}
	if o.DefaultCount <= 0 {
		o.DefaultCount = 50
	}
	if o.MaxCount <= 0 {
		o.MaxCount = 1000
	}
	if o.DefaultCount > o.MaxCount {
		o.DefaultCount = o.MaxCount
	}
	if o.PageTTL <= 0 {
		o.PageTTL = 10 * time.Minute
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = time.Second
	}
	o.Deleted = min(max(o.Deleted, 0), 1)
	if o.CountPageSize <= 0 {
		o.CountPageSize = 20
	}
	switch o.Paging {
	case PagingHAPI, PagingOffset:
	default:
		o.Paging = PagingToken
	}
	return o
}

// resource is one stored resource. A *resource is immutable once stored,
// so it may be shared freely between goroutines: updates and deletions
// replace it. A deleted resource is kept as a tombstone with a nil body.
type resource struct {
	id       string
	seq      int   // the stable search order within its type
	lu       int64 // meta.lastUpdated (deletion time of tombstones), unix ms
	version  int
	body     []byte   // compact JSON, exactly as served; nil: deleted
	patients []string // ids of the patients whose compartment holds it
}

// deleted reports whether r is a tombstone.
func (r *resource) deleted() bool { return r.body == nil }

// typeStore holds the resources of one type. list, byID and comp hold the
// live resources only; gone holds the tombstones of deleted ones. The
// slices in list and comp are never written in place below their length
// (readers scan them without the lock): removals and replacements copy.
type typeStore struct {
	name    string
	list    []*resource
	byID    map[string]*resource
	comp    map[string][]*resource // patient id -> compartment members, by seq
	gone    map[string]*resource   // id -> tombstone
	nextID  int
	nextSeq int
}

func newTypeStore(name string) *typeStore {
	return &typeStore{name: name, byID: map[string]*resource{}, comp: map[string][]*resource{},
		gone: map[string]*resource{}, nextID: 1}
}

// load installs generated resources (ordered) and builds the indexes.
// Generated compartment members of one patient are contiguous, so the
// compartment index is made of capacity-limited sub-slices of list.
func (ts *typeStore) load(backing []resource) {
	ts.list = make([]*resource, len(backing))
	ts.byID = make(map[string]*resource, len(backing))
	for i := range backing {
		r := &backing[i]
		r.seq = i
		ts.nextSeq = i + 1
		ts.list[i] = r
		ts.byID[r.id] = r
		if n, err := strconv.Atoi(r.id); err == nil && n >= ts.nextID {
			ts.nextID = n + 1
		}
	}
	for i := 0; i < len(ts.list); {
		r := ts.list[i]
		if len(r.patients) != 1 {
			for _, p := range r.patients {
				ts.comp[p] = append(ts.comp[p], r)
			}
			i++
			continue
		}
		j := i + 1
		for j < len(ts.list) && len(ts.list[j].patients) == 1 && ts.list[j].patients[0] == r.patients[0] {
			j++
		}
		p := r.patients[0]
		if cur, ok := ts.comp[p]; ok {
			ts.comp[p] = append(cur[:len(cur):len(cur)], ts.list[i:j]...)
		} else {
			ts.comp[p] = ts.list[i:j:j]
		}
		i = j
	}
}

// Server is a synthetic FHIR R4 server. It is safe for concurrent use.
type Server struct {
	opts      Options
	failTypes map[string]bool

	mu    sync.RWMutex
	types map[string]*typeStore

	pages pageCache
	sem   chan struct{}

	faults faultState

	requests atomic.Int64
	inflight atomic.Int64
	peak     atomic.Int64
	ctr      reqCounters
	ctrMu    sync.Mutex
	byType   map[string]int64

	capOnce sync.Once
	capBody []byte
}

// New generates the data set described by opts and returns the server.
// Generation is deterministic in opts.Seed and opts.Patients and takes a few
// seconds for 5,000 patients (about a million resources).
func New(opts Options) *Server {
	o := opts.withDefaults()
	s := &Server{
		opts:      o,
		failTypes: map[string]bool{},
		types:     map[string]*typeStore{},
		byType:    map[string]int64{},
	}
	faultSeed := o.FaultSeed
	if faultSeed == 0 {
		faultSeed = o.Seed
	}
	s.faults.rng = rand.New(rand.NewPCG(uint64(faultSeed), 0xfa017))
	s.faults.global = o.Faults.withDefaults(o)
	s.faults.byType = make(map[string]Faults, len(o.TypeFaults))
	for t, f := range o.TypeFaults {
		s.faults.byType[t] = f.withDefaults(o)
	}
	s.faults.reset()
	for _, t := range o.FailTypes {
		s.failTypes[t] = true
	}
	if o.MaxConcurrent > 0 {
		s.sem = make(chan struct{}, o.MaxConcurrent)
	}
	s.pages.m = map[string]*snapshot{}
	s.pages.now = o.Clock
	for _, t := range servedTypes() {
		s.types[t] = newTypeStore(t)
	}
	s.generate()
	if o.LastUpdatedSeconds {
		s.secondsDisplay()
	}
	return s
}

// Options returns the effective options (with defaults applied).
func (s *Server) Options() Options { return s.opts }

// GroupIDs returns the ids of all Groups, in server order.
func (s *Server) GroupIDs() []string { return s.ids("Group") }

// PatientIDs returns the ids of all Patients, in server order.
func (s *Server) PatientIDs() []string { return s.ids("Patient") }

func (s *Server) ids(typ string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ts := s.types[typ]
	out := make([]string, len(ts.list))
	for i, r := range ts.list {
		out[i] = r.id
	}
	return out
}

// Count returns the number of (live, not deleted) resources of
// resourceType.
func (s *Server) Count(resourceType string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if ts := s.types[resourceType]; ts != nil {
		return len(ts.list)
	}
	return 0
}

// Resource returns the stored JSON of one resource, or nil (also once it
// is deleted).
func (s *Server) Resource(resourceType, id string) []byte {
	if r := s.lookup(resourceType, id); r != nil {
		return r.body
	}
	return nil
}

// tombstone returns the tombstone of a deleted resource, or nil.
func (s *Server) tombstone(typ, id string) *resource {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if ts := s.types[typ]; ts != nil {
		return ts.gone[id]
	}
	return nil
}

func (s *Server) lookup(typ, id string) *resource {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if ts := s.types[typ]; ts != nil {
		return ts.byID[id]
	}
	return nil
}

// Members returns the ids of the Group's active Patient members,
// de-duplicated, in member order. Inactive members and members that are not
// Patients are skipped. An unknown group gives nil.
func (s *Server) Members(groupID string) []string {
	r := s.lookup("Group", groupID)
	if r == nil {
		return nil
	}
	var g struct {
		Member []struct {
			Entity   struct{ Reference string } `json:"entity"`
			Inactive bool                       `json:"inactive"`
		} `json:"member"`
	}
	if err := json.Unmarshal(r.body, &g); err != nil {
		return nil
	}
	seen := map[string]bool{}
	out := []string{}
	for _, m := range g.Member {
		if m.Inactive {
			continue
		}
		typ, id, ok := splitRef(m.Entity.Reference)
		if !ok || typ != "Patient" || seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, id)
	}
	return out
}

// Requests returns the number of requests served (all kinds) since New or
// the last ResetCounters.
func (s *Server) Requests() int64 { return s.requests.Load() }

// RequestsByType returns the number of searches, history requests and page
// fetches per resource type since New or the last ResetCounters. System
// history requests (GET _history) and their page fetches count under
// "_history". Requests answered 404 because of Options.NoHistory are not
// counted.
func (s *Server) RequestsByType() map[string]int64 {
	s.ctrMu.Lock()
	defer s.ctrMu.Unlock()
	out := make(map[string]int64, len(s.byType))
	for k, v := range s.byType {
		out[k] = v
	}
	return out
}

// InFlight returns the requests being served now: arrived and not yet
// answered (waiting for a MaxConcurrent slot included).
func (s *Server) InFlight() int64 { return s.inflight.Load() }

// PeakInFlight returns the most requests that were in flight at once (as
// InFlight counts them) since New or the last ResetCounters.
func (s *Server) PeakInFlight() int64 { return s.peak.Load() }

// enter counts a request in flight until the returned function is called.
func (s *Server) enter() func() {
	n := s.inflight.Add(1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return func() { s.inflight.Add(-1) }
}

// ResetCounters zeroes Requests, RequestsByType, RequestCounts,
// FaultCounts and PageStats, and sets PeakInFlight to InFlight.
func (s *Server) ResetCounters() {
	s.peak.Store(s.inflight.Load())
	s.ctrMu.Lock()
	s.byType = map[string]int64{}
	s.ctrMu.Unlock()
	s.ResetRequestCounts()
	s.faults.reset()
}

func (s *Server) countType(typ string) {
	s.ctrMu.Lock()
	s.byType[typ]++
	s.ctrMu.Unlock()
}

// errBadResource reports an unusable body given to Create.
var errBadResource = errors.New("fhirtest: invalid resource")

// Create stores a new resource of resourceType, as POST [type] does: the
// server assigns the id and meta (versionId 1, lastUpdated now) and returns
// the id. The resource's compartment is derived from its patient
// references.
func (s *Server) Create(resourceType string, resource []byte) (string, error) {
	r, err := s.create(resourceType, resource)
	if err != nil {
		return "", err
	}
	return r.id, nil
}

func (s *Server) create(typ string, body []byte) (*resource, error) {
	if s.types[typ] == nil {
		return nil, fmt.Errorf("%w: unknown resource type %q", errBadResource, typ)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, fmt.Errorf("%w: body is not a JSON object", errBadResource)
	}
	if rt, ok := m["resourceType"]; ok && rt != typ {
		return nil, fmt.Errorf("%w: resourceType %v does not match %s", errBadResource, rt, typ)
	}
	var patients []string
	if typ == "Patient" {
		patients = nil // filled with the new id below
	} else if p, ok := compartmentPaths[typ]; ok {
		for _, leaf := range collectPath(m, strings.Split(p, "."), nil) {
			if ref, ok := leafReference(leaf); ok {
				if t, id, ok := splitRef(ref); ok && t == "Patient" && !slices.Contains(patients, id) {
					patients = append(patients, id)
				}
			}
		}
	}
	meta, _ := m["meta"].(map[string]any)
	lu := time.Now().UTC().UnixMilli()

	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.types[typ]
	id := strconv.Itoa(ts.nextID)
	for ts.byID[id] != nil || ts.gone[id] != nil {
		ts.nextID++
		id = strconv.Itoa(ts.nextID)
	}
	ts.nextID++
	if typ == "Patient" {
		patients = []string{id}
	}

	var w jw
	w.obj()
	w.ks("resourceType", typ)
	w.ks("id", id)
	w.ko("meta")
	w.ks("versionId", "1")
	w.kt("lastUpdated", lu, layoutInstant)
	for _, k := range sortedKeys(meta) {
		if k == "versionId" || k == "lastUpdated" {
			continue
		}
		w.key(k)
		w.rawBytes(mustMarshal(meta[k]))
	}
	w.end()
	for _, k := range sortedKeys(m) {
		if k == "resourceType" || k == "id" || k == "meta" {
			continue
		}
		w.key(k)
		w.rawBytes(mustMarshal(m[k]))
	}
	w.end()
	if s.opts.LastUpdatedSeconds {
		w.b = truncLastUpdated(w.b)
	}

	r := &resource{id: id, seq: ts.nextSeq, lu: lu, version: 1, body: w.b, patients: patients}
	ts.nextSeq++
	ts.list = append(ts.list, r)
	ts.byID[id] = r
	for _, p := range patients {
		ts.comp[p] = append(ts.comp[p], r)
	}
	return r, nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte("null")
	}
	return b
}

// splitRef parses a reference "Type/id", "Type/id/_history/n" or an
// absolute URL ending in one of those. Contained ("#x") and urn:
// references give ok=false.
func splitRef(ref string) (typ, id string, ok bool) {
	if ref == "" || ref[0] == '#' || strings.HasPrefix(ref, "urn:") {
		return "", "", false
	}
	if i := strings.Index(ref, "?"); i >= 0 {
		ref = ref[:i]
	}
	parts := strings.Split(strings.TrimRight(ref, "/"), "/")
	if n := len(parts); n >= 4 && parts[n-2] == "_history" {
		parts = parts[:n-2]
	}
	n := len(parts)
	if n < 2 || parts[n-1] == "" || parts[n-2] == "" {
		return "", "", false
	}
	t := parts[n-2]
	if t[0] < 'A' || t[0] > 'Z' {
		return "", "", false
	}
	return t, parts[n-1], true
}
