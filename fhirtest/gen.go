package fhirtest

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The generated data lives in a fixed five-year window, so it is the same
// whatever the real clock says and is never in its future.
var (
	simEnd   = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	simStart = simEnd - 5*365*msDay
)

const (
	msMinute = int64(60 * 1000)
	msHour   = 60 * msMinute
	msDay    = 24 * msHour
)

// sharedSizes are the numbers of shared (non-compartment) resources.
type sharedSizes struct{ pract, org, loc, role, med int }

func sizesFor(patients int) sharedSizes {
	return sharedSizes{
		pract: patients/10 + 5,
		org:   patients/50 + 5,
		loc:   patients/50 + 5,
		role:  patients/20 + 3,
		med:   30,
	}
}

// usedOf is how many of n shared resources may be referenced: references
// only ever point to ids 1..usedOf(n), so the remaining ones are referenced
// by nobody.
func usedOf(n int) int { return n - max(2, n/10) }

// pick returns a random referencable id among n shared resources.
func pick(r *rand.Rand, n int) string { return strconv.Itoa(1 + r.IntN(usedOf(n))) }

func newRand(seed int64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), stream))
}

func patientRand(seed int64, i int) *rand.Rand {
	return newRand(seed, 0x9e3779b97f4a7c15*uint64(i+1)+0x100)
}

func randTime(r *rand.Rand, lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + r.Int64N(hi-lo)
}

func randVersion(r *rand.Rand) int {
	if r.IntN(8) == 0 {
		return 2 + r.IntN(2)
	}
	return 1
}

func clampLU(t int64) int64 { return min(t, simEnd-1) }

// servedTypes lists every resource type the server serves.
func servedTypes() []string {
	out := append([]string{}, ptNames[:]...)
	out = append(out, "Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Group")
	out = append(out, ctNames[:]...)
	return append(out, emptyTypes...)
}

func (s *Server) generate() {
	n := s.opts.Patients
	sz := sizesFor(n)
	s.genShared(sz)
	encs := s.genPatients(n, sz)
	s.genGroups(n)
	s.genClaims(sz, encs)
}

func orgName(i int) string {
	name := orgNameStarts[i%len(orgNameStarts)] + " " + orgNameEnds[(i/len(orgNameStarts))%len(orgNameEnds)]
	if k := i / (len(orgNameStarts) * len(orgNameEnds)); k > 0 {
		name += " " + strconv.Itoa(k+1)
	}
	return name
}

func writeAddress(w *jw, r *rand.Rand) {
	w.ka("address")
	w.obj()
	w.ka("line")
	w.str(strconv.Itoa(1+r.IntN(999)) + " " + streets[r.IntN(len(streets))])
	w.endArr()
	ci := r.IntN(len(cities))
	w.ks("city", cities[ci])
	w.ks("state", states[ci])
	w.ks("postalCode", fmt.Sprintf("%05d", 1000+r.IntN(98000)))
	w.ks("country", "US")
	w.end()
	w.endArr()
}

func writePhone(w *jw, r *rand.Rand, use string) {
	w.ka("telecom")
	w.obj()
	w.ks("system", "phone")
	w.ks("value", fmt.Sprintf("555-%03d-%04d", r.IntN(1000), r.IntN(10000)))
	w.ks("use", use)
	w.end()
	w.endArr()
}

// genShared generates Organizations, Locations, Practitioners,
// PractitionerRoles and Medications.
func (s *Server) genShared(sz sharedSizes) {
	r := newRand(s.opts.Seed, 1)
	var w jw
	var a arena
	keep := func(id string, lu int64, ver int) resource {
		w.end()
		return resource{id: id, lu: lu, version: ver, body: a.keep(w.b)}
	}

	orgs := make([]resource, sz.org)
	for i := range orgs {
		id, lu, ver := strconv.Itoa(i+1), randTime(r, simStart, simEnd), randVersion(r)
		w.header("Organization", id, ver, lu)
		w.ka("identifier")
		w.obj()
		w.ks("system", sysOrgID)
		w.ks("value", fmt.Sprintf("ORG-%04d", i+1))
		w.end()
		w.endArr()
		w.kb("active", true)
		w.ccArr("type", orgProv)
		w.ks("name", orgName(i))
		writePhone(&w, r, "work")
		writeAddress(&w, r)
		if i > 0 && r.IntN(10) < 4 {
			w.ref("partOf", "Organization/"+strconv.Itoa(1+r.IntN(min(i, usedOf(sz.org)))))
		}
		orgs[i] = keep(id, lu, ver)
	}

	locs := make([]resource, sz.loc)
	for i := range locs {
		id, lu, ver := strconv.Itoa(i+1), randTime(r, simStart, simEnd), randVersion(r)
		lt := locTypes[r.IntN(len(locTypes))]
		w.header("Location", id, ver, lu)
		w.ks("status", "active")
		w.ks("name", cities[i%len(cities)]+" "+lt.display+" "+strconv.Itoa(i+1))
		w.ks("mode", "instance")
		w.ccArr("type", lt)
		writePhone(&w, r, "work")
		w.key("address")
		w.obj()
		w.ks("city", cities[i%len(cities)])
		w.ks("state", states[i%len(states)])
		w.ks("country", "US")
		w.end()
		w.ref("managingOrganization", "Organization/"+pick(r, sz.org))
		locs[i] = keep(id, lu, ver)
	}

	practs := make([]resource, sz.pract)
	for i := range practs {
		id, lu, ver := strconv.Itoa(i+1), randTime(r, simStart, simEnd), randVersion(r)
		male := r.IntN(2) == 0
		given := femaleNames[r.IntN(len(femaleNames))]
		gender := "female"
		if male {
			given, gender = maleNames[r.IntN(len(maleNames))], "male"
		}
		w.header("Practitioner", id, ver, lu)
		w.ka("identifier")
		w.obj()
		w.ks("system", sysNPI)
		w.ks("value", strconv.Itoa(1000000000+r.IntN(999999999)))
		w.end()
		w.endArr()
		w.kb("active", true)
		w.ka("name")
		w.obj()
		w.ks("family", familyNames[r.IntN(len(familyNames))])
		w.ka("given")
		w.str(given)
		w.endArr()
		w.ka("prefix")
		w.str("Dr.")
		w.endArr()
		w.end()
		w.endArr()
		w.ks("gender", gender)
		practs[i] = keep(id, lu, ver)
	}

	roles := make([]resource, sz.role)
	for i := range roles {
		id, lu, ver := strconv.Itoa(i+1), randTime(r, simStart, simEnd), randVersion(r)
		w.header("PractitionerRole", id, ver, lu)
		w.kb("active", true)
		w.ref("practitioner", "Practitioner/"+pick(r, sz.pract))
		w.ref("organization", "Organization/"+pick(r, sz.org))
		w.ccArr("code", roleDoctor)
		w.ccArr("specialty", specialtyGP)
		if r.IntN(2) == 0 {
			w.ka("location")
			w.refVal("Location/" + pick(r, sz.loc))
			w.endArr()
		}
		roles[i] = keep(id, lu, ver)
	}

	meds := make([]resource, sz.med)
	for i := range meds {
		id, lu, ver := strconv.Itoa(i+1), randTime(r, simStart, simEnd), randVersion(r)
		w.header("Medication", id, ver, lu)
		w.cc("code", rxnormCodes[i%len(rxnormCodes)])
		w.ks("status", "active")
		if r.IntN(10) < 4 {
			w.ref("manufacturer", "Organization/"+pick(r, sz.org))
		}
		w.cc("form", medForms[i%len(medForms)])
		meds[i] = keep(id, lu, ver)
	}

	s.types["Organization"].load(orgs)
	s.types["Location"].load(locs)
	s.types["Practitioner"].load(practs)
	s.types["PractitionerRole"].load(roles)
	s.types["Medication"].load(meds)
}

// genPatients generates every patient and its compartment. Each patient has
// its own random stream, so patients are generated in parallel: a first pass
// draws the per-type counts, prefix sums give every patient its id ranges,
// and workers then fill disjoint slots.
//
// It returns every generated Encounter, deleted ones included (in patient
// order), for genClaims.
func (s *Server) genPatients(n int, sz sharedSizes) []resource {
	bases := make([]counts, n)
	var totals counts
	for i := range n {
		c := drawCounts(patientRand(s.opts.Seed, i))
		for t := range numPT {
			bases[i][t] = totals[t] + 1
			totals[t] += c[t]
		}
	}
	var backing [numPT][]resource
	for t := range numPT {
		backing[t] = make([]resource, totals[t])
	}

	const chunk = 16
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), (n+chunk-1)/chunk)) {
		wg.Go(func() {
			g := &patientGen{seed: s.opts.Seed, sz: sz, backing: &backing, urls: s.opts.AttachmentURLs, idPrefix: s.opts.PatientIDPrefix}
			for {
				start := int(next.Add(chunk)) - chunk
				if start >= n {
					return
				}
				for i := start; i < min(start+chunk, n); i++ {
					g.reset(i, bases[i])
					g.run()
				}
			}
		})
	}
	wg.Wait()
	encs := slices.Clone(backing[tEncounter])
	for t := range numPT {
		ts := s.types[ptNames[t]]
		wg.Go(func() {
			list := backing[t]
			var tombs []*resource
			if t != tPatient && s.opts.Deleted > 0 {
				list, tombs = predelete(list, s.opts.Deleted, newRand(s.opts.Seed, 0xde1e7ed0+uint64(t)))
			}
			ts.load(list)
			for _, tomb := range tombs {
				ts.gone[tomb.id] = tomb
				ts.nextSeq = max(ts.nextSeq, tomb.seq+1)
			}
		})
	}
	wg.Wait()
	return encs
}

// deletedWindow is how far back from the end of the simulated window
// generated deletions go.
const deletedWindow = 365 * msDay

// predelete deletes the given share of list, drawing from r: it compacts
// the survivors in place (keeping their order) and returns them with the
// tombstones of the others, each deleted at a random time after its
// lastUpdated in the last year of the simulated window.
func predelete(list []resource, share float64, r *rand.Rand) ([]resource, []*resource) {
	var tombs []*resource
	live := list[:0]
	for i := range list {
		res := list[i]
		if r.Float64() >= share {
			live = append(live, res)
			continue
		}
		at := randTime(r, max(res.lu+1, simEnd-deletedWindow), simEnd)
		tombs = append(tombs, &resource{id: res.id, seq: i, lu: at, version: res.version + 1, patients: res.patients})
	}
	clear(list[len(live):])
	return live, tombs
}

// groupMember is one Group.member entry.
type groupMember struct {
	ref      string
	inactive bool
}

// genGroups generates the Groups "all", "small", "half", "quarter" and
// "empty". "small" holds ten patients plus an inactive member, a duplicated
// member and a Practitioner member.
func (s *Server) genGroups(n int) {
	r := newRand(s.opts.Seed, 2)
	pref := func(i int) string { return "Patient/" + s.opts.PatientIDPrefix + strconv.Itoa(i+1) }

	var all, half, quarter []groupMember
	for i := range n {
		all = append(all, groupMember{ref: pref(i)})
		if i%2 == 0 {
			half = append(half, groupMember{ref: pref(i)})
		}
		if r.IntN(4) == 0 {
			quarter = append(quarter, groupMember{ref: pref(i)})
		}
	}

	nActive := min(10, n-1)
	var small []groupMember
	for i := range nActive {
		small = append(small, groupMember{ref: pref(i)})
	}
	insert := func(at int, m groupMember) {
		at = min(at, len(small))
		small = append(small[:at], append([]groupMember{m}, small[at:]...)...)
	}
	insert(5, groupMember{ref: "Practitioner/1"})
	if nActive >= 0 && nActive < n {
		insert(8, groupMember{ref: pref(nActive), inactive: true})
	}
	if nActive > 0 {
		small = append(small, groupMember{ref: pref(min(1, nActive-1))})
	}

	groups := []struct {
		id, name string
		members  []groupMember
	}{
		{"all", "All patients", all},
		{"small", "Small test cohort", small},
		{"half", "Every second patient", half},
		{"quarter", "Random quarter of the patients", quarter},
		{"empty", "Empty cohort", nil},
	}
	var w jw
	var a arena
	out := make([]resource, len(groups))
	for i, g := range groups {
		lu, ver := randTime(r, simStart, simEnd), randVersion(r)
		w.header("Group", g.id, ver, lu)
		w.ka("identifier")
		w.obj()
		w.ks("system", "http://hospital.example.org/cohorts")
		w.ks("value", g.id)
		w.end()
		w.endArr()
		w.kb("active", true)
		w.ks("type", "person")
		w.kb("actual", true)
		w.ks("name", g.name)
		w.ki("quantity", len(g.members))
		if len(g.members) > 0 {
			w.ka("member")
			for _, m := range g.members {
				w.obj()
				w.ref("entity", m.ref)
				if m.inactive {
					w.kb("inactive", true)
				}
				w.end()
			}
			w.endArr()
		}
		w.end()
		out[i] = resource{id: g.id, lu: lu, version: ver, body: a.keep(w.b)}
	}
	s.types["Group"].load(out)
}
