package fhirtest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// Claim-side per-patient types. They are generated after the clinical
// data, from random streams of their own, so that adding them left every
// other resource byte-identical for a given Seed.
const (
	cCoverage = iota
	cClaim
	cEOB
	cImaging
	cMedAdmin
	numCT
)

// ctNames are the resource type names of the claim-side types.
var ctNames = [numCT]string{"Coverage", "Claim", "ExplanationOfBenefit", "ImagingStudy", "MedicationAdministration"}

// emptyTypes are Patient-compartment types the CapabilityStatement
// declares (as real servers do) but that hold no generated data: their
// searches answer empty searchset Bundles.
var emptyTypes = []string{"Account", "Communication", "FamilyMemberHistory", "Flag"}

const (
	sysClaimType   = "http://terminology.hl7.org/CodeSystem/claim-type"
	sysAdjudicat   = "http://terminology.hl7.org/CodeSystem/adjudication"
	sysDICOM       = "http://dicom.nema.org/resources/ontology/DCM"
	sysSubscriber  = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
	sysProcessPrio = "http://terminology.hl7.org/CodeSystem/processpriority"
)

var (
	claimInstitutional = code{sysClaimType, "institutional", "Institutional"}
	claimProfessional  = code{sysClaimType, "professional", "Professional"}
	adjSubmitted       = code{sysAdjudicat, "submitted", "Submitted Amount"}
	adjBenefit         = code{sysAdjudicat, "benefit", "Benefit Amount"}
	prioNormal         = code{sysProcessPrio, "normal", "Normal"}
	relSelf            = code{sysSubscriber, "self", "Self"}
	coverageTypes      = []code{
		{sysActCode, "HIP", "health insurance plan policy"},
		{sysActCode, "PUBLICPOL", "public healthcare"},
		{sysActCode, "MCPOL", "managed care policy"},
	}
	imagingKinds = []struct{ modality, site, sop code }{
		{code{sysDICOM, "CT", "Computed Tomography"}, code{sysSNOMED, "51185008", "Thoracic structure"}, code{"urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"}},
		{code{sysDICOM, "MR", "Magnetic Resonance"}, code{sysSNOMED, "12738006", "Brain structure"}, code{"urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"}},
		{code{sysDICOM, "DX", "Digital Radiography"}, code{sysSNOMED, "40983000", "Upper arm structure"}, code{"urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage"}},
		{code{sysDICOM, "US", "Ultrasound"}, code{sysSNOMED, "818981001", "Abdomen"}, code{"urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"}},
	}
)

// claimRand is the random stream of patient i's claim-side resources.
func claimRand(seed int64, i int) *rand.Rand {
	return newRand(seed, 0xc1a1<<40+uint64(i)*0x9e3779b1+0x77)
}

// encData is what the claim-side generator reads of an Encounter.
type encData struct {
	ID     string `json:"id"`
	Period struct {
		Start string `json:"start"`
		End   string `json:"end"`
	} `json:"period"`
	Type        []json.RawMessage `json:"type"`
	Participant []struct {
		Individual struct{ Reference string } `json:"individual"`
	} `json:"participant"`
	Location []struct {
		Location struct{ Reference string } `json:"location"`
	} `json:"location"`
	ServiceProvider struct{ Reference string } `json:"serviceProvider"`
	start, end      int64
}

func parseMS(v string) int64 {
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return 0
	}
	return t.UnixMilli()
}

// claimGen generates the claim-side resources of one patient at a time.
type claimGen struct {
	sz      sharedSizes
	w       jw
	a       arena
	r       *rand.Rand
	out     [numCT][]resource
	pid     string
	pref    string
	pats    []string
	encs    []encData
	covRefs []string
	covOrgs []string
}

func (g *claimGen) next(t int) string { return strconv.Itoa(len(g.out[t]) + 1) }

func (g *claimGen) emit(t int, id string, lu int64, ver int) {
	g.w.end()
	g.out[t] = append(g.out[t], resource{id: id, lu: lu, version: ver, body: g.a.keep(g.w.b), patients: g.pats})
}

func (g *claimGen) money(k string, v float64) {
	g.w.ko(k)
	g.w.key("value")
	g.w.float(v, 2)
	g.w.ks("currency", "USD")
	g.w.end()
}

// genClaims generates Coverage, Claim, ExplanationOfBenefit, ImagingStudy
// and MedicationAdministration for every patient, from the patient's
// generated Encounters (encs, in patient order, deleted ones included so
// that Options.Deleted leaves the surviving claim-side resources
// byte-identical).
func (s *Server) genClaims(sz sharedSizes, encs []resource) {
	g := &claimGen{sz: sz}
	patients := s.types["Patient"].list
	j := 0
	for i, p := range patients {
		g.r = claimRand(s.opts.Seed, i)
		g.pid, g.pref, g.pats = p.id, "Patient/"+p.id, []string{p.id}
		g.encs = g.encs[:0]
		for ; j < len(encs) && len(encs[j].patients) == 1 && encs[j].patients[0] == p.id; j++ {
			var d encData
			if json.Unmarshal(encs[j].body, &d) != nil {
				continue
			}
			d.start, d.end = parseMS(d.Period.Start), parseMS(d.Period.End)
			if d.end < d.start {
				d.end = d.start + 30*msMinute
			}
			g.encs = append(g.encs, d)
		}
		g.coverages()
		for k := range g.encs {
			g.claim(&g.encs[k])
		}
		g.imaging()
		g.medAdmins()
	}
	for t := range numCT {
		ts := s.types[ctNames[t]]
		list := g.out[t]
		var tombs []*resource
		if s.opts.Deleted > 0 {
			list, tombs = predelete(list, s.opts.Deleted, newRand(s.opts.Seed, 0xde1e7ed0+0x100+uint64(t)))
		}
		ts.load(list)
		for _, tomb := range tombs {
			ts.gone[tomb.id] = tomb
			ts.nextSeq = max(ts.nextSeq, tomb.seq+1)
		}
	}
}

func (g *claimGen) coverages() {
	r, w := g.r, &g.w
	g.covRefs, g.covOrgs = g.covRefs[:0], g.covOrgs[:0]
	n := 1
	if r.IntN(5) == 0 {
		n = 2
	}
	for k := range n {
		id, ver := g.next(cCoverage), randVersion(r)
		lu := randTime(r, simStart, simEnd)
		payor := "Organization/" + pick(r, g.sz.org)
		w.header("Coverage", id, ver, lu)
		w.ka("identifier")
		w.obj()
		w.ks("system", "http://payer.example.org/member-id")
		w.ks("value", fmt.Sprintf("MBR%08d", r.IntN(100000000)))
		w.end()
		w.endArr()
		w.ks("status", "active")
		w.cc("type", coverageTypes[(k+r.IntN(len(coverageTypes)))%len(coverageTypes)])
		w.ks("subscriberId", fmt.Sprintf("SUB%07d", r.IntN(10000000)))
		w.ref("beneficiary", g.pref)
		w.cc("relationship", relSelf)
		w.ko("period")
		w.kt("start", randTime(r, simStart-5*365*msDay, simStart), layoutDate)
		w.end()
		w.ka("payor")
		w.refVal(payor)
		w.endArr()
		g.emit(cCoverage, id, lu, ver)
		g.covRefs = append(g.covRefs, "Coverage/"+id)
		g.covOrgs = append(g.covOrgs, payor)
	}
}

// claim writes one Claim and its ExplanationOfBenefit for an encounter.
func (g *claimGen) claim(e *encData) {
	r, w := g.r, &g.w
	cov := r.IntN(len(g.covRefs))
	typ := claimProfessional
	if e.end-e.start > 12*msHour {
		typ = claimInstitutional
	}
	provider := e.ServiceProvider.Reference
	if provider == "" {
		provider = "Organization/" + pick(r, g.sz.org)
	}
	pract := ""
	if len(e.Participant) > 0 {
		pract = e.Participant[0].Individual.Reference
	}
	facility := ""
	if len(e.Location) > 0 {
		facility = e.Location[0].Location.Reference
	}
	type item struct {
		product []byte
		net     float64
	}
	var items []item
	if len(e.Type) > 0 {
		items = append(items, item{e.Type[0], 50 + float64(r.IntN(40000))/100})
	}
	for range r.IntN(3) {
		var c jw
		c.ccVal(procedureCodes[r.IntN(len(procedureCodes))])
		items = append(items, item{c.b, 20 + float64(r.IntN(150000))/100})
	}
	var total float64
	for _, it := range items {
		total += it.net
	}
	created := e.end
	claimID, ver := g.next(cClaim), randVersion(r)
	lu := clampLU(created + r.Int64N(3*msDay))
	head := func(rt, id string, ver int, lu int64) {
		w.header(rt, id, ver, lu)
		w.ks("status", "active")
		w.cc("type", typ)
		w.ks("use", "claim")
		w.ref("patient", g.pref)
		w.ko("billablePeriod")
		w.kt("start", e.start, layoutDateTime)
		w.kt("end", e.end, layoutDateTime)
		w.end()
		w.kt("created", created, layoutDateTime)
	}
	careTeam := func() {
		if pract == "" {
			return
		}
		w.ka("careTeam")
		w.obj()
		w.ki("sequence", 1)
		w.ref("provider", pract)
		w.end()
		w.endArr()
	}
	insurance := func() {
		w.ka("insurance")
		w.obj()
		w.ki("sequence", 1)
		w.kb("focal", true)
		w.ref("coverage", g.covRefs[cov])
		w.end()
		w.endArr()
	}
	head("Claim", claimID, ver, lu)
	w.ref("insurer", g.covOrgs[cov])
	w.ref("provider", provider)
	w.cc("priority", prioNormal)
	if facility != "" {
		w.ref("facility", facility)
	}
	careTeam()
	insurance()
	w.ka("item")
	for k, it := range items {
		w.obj()
		w.ki("sequence", k+1)
		w.key("productOrService")
		w.rawBytes(it.product)
		w.ka("encounter")
		w.refVal("Encounter/" + e.ID)
		w.endArr()
		g.money("net", it.net)
		w.end()
	}
	w.endArr()
	g.money("total", total)
	g.emit(cClaim, claimID, lu, ver)

	eobID, ever := g.next(cEOB), randVersion(r)
	elu := clampLU(lu + r.Int64N(30*msDay))
	head("ExplanationOfBenefit", eobID, ever, elu)
	w.ref("insurer", g.covOrgs[cov])
	w.ref("provider", provider)
	if facility != "" {
		w.ref("facility", facility)
	}
	w.ref("claim", "Claim/"+claimID)
	w.ks("outcome", "complete")
	careTeam()
	insurance()
	share := 0.5 + float64(r.IntN(50))/100
	w.ka("item")
	for k, it := range items {
		w.obj()
		w.ki("sequence", k+1)
		w.key("productOrService")
		w.rawBytes(it.product)
		w.ka("encounter")
		w.refVal("Encounter/" + e.ID)
		w.endArr()
		g.money("net", it.net)
		w.ka("adjudication")
		w.obj()
		w.cc("category", adjSubmitted)
		g.money("amount", it.net)
		w.end()
		w.obj()
		w.cc("category", adjBenefit)
		g.money("amount", it.net*share)
		w.end()
		w.endArr()
		w.end()
	}
	w.endArr()
	w.ka("total")
	w.obj()
	w.cc("category", adjSubmitted)
	g.money("amount", total)
	w.end()
	w.obj()
	w.cc("category", adjBenefit)
	g.money("amount", total*share)
	w.end()
	w.endArr()
	w.ko("payment")
	g.money("amount", total*share)
	w.end()
	g.emit(cEOB, eobID, elu, ever)
}

func (g *claimGen) imaging() {
	r, w := g.r, &g.w
	if len(g.encs) == 0 || r.IntN(100) >= 20 {
		return
	}
	for range 1 + r.IntN(2) {
		e := &g.encs[r.IntN(len(g.encs))]
		kind := imagingKinds[r.IntN(len(imagingKinds))]
		id, ver := g.next(cImaging), randVersion(r)
		started := e.start + r.Int64N(max(e.end-e.start, msMinute))
		lu := clampLU(started + r.Int64N(2*msDay))
		uid := fmt.Sprintf("2.25.%d%012d", 1+r.IntN(9), r.Int64N(1e12))
		n := 1 + r.IntN(4)
		w.header("ImagingStudy", id, ver, lu)
		w.ka("identifier")
		w.obj()
		w.ks("use", "official")
		w.ks("system", "urn:dicom:uid")
		w.ks("value", "urn:oid:"+uid)
		w.end()
		w.endArr()
		w.ks("status", "available")
		w.ka("modality")
		w.coding(kind.modality)
		w.endArr()
		w.ref("subject", g.pref)
		w.ref("encounter", "Encounter/"+e.ID)
		w.kt("started", started, layoutDateTime)
		if len(e.Participant) > 0 {
			w.ref("referrer", e.Participant[0].Individual.Reference)
		}
		if len(e.Location) > 0 {
			w.ref("location", e.Location[0].Location.Reference)
		}
		w.ki("numberOfSeries", 1)
		w.ki("numberOfInstances", n)
		w.ka("series")
		w.obj()
		w.ks("uid", uid+".1")
		w.ki("number", 1)
		w.key("modality")
		w.coding(kind.modality)
		w.ki("numberOfInstances", n)
		w.key("bodySite")
		w.coding(kind.site)
		w.kt("started", started, layoutDateTime)
		w.ka("instance")
		for k := range n {
			w.obj()
			w.ks("uid", uid+".1."+strconv.Itoa(k+1))
			w.key("sopClass")
			w.coding(kind.sop)
			w.ki("number", k+1)
			w.end()
		}
		w.endArr()
		w.end()
		w.endArr()
		g.emit(cImaging, id, lu, ver)
	}
}

func (g *claimGen) medAdmins() {
	r, w := g.r, &g.w
	if len(g.encs) == 0 {
		return
	}
	for range r.IntN(5) {
		e := &g.encs[r.IntN(len(g.encs))]
		id, ver := g.next(cMedAdmin), randVersion(r)
		at := e.start + r.Int64N(max(e.end-e.start, msMinute))
		lu := clampLU(at + r.Int64N(2*msDay))
		w.header("MedicationAdministration", id, ver, lu)
		w.ks("status", "completed")
		if r.IntN(2) == 0 {
			w.cc("medicationCodeableConcept", rxnormCodes[r.IntN(len(rxnormCodes))])
		} else {
			w.ref("medicationReference", "Medication/"+pick(r, g.sz.med))
		}
		w.ref("subject", g.pref)
		w.ref("context", "Encounter/"+e.ID)
		w.kt("effectiveDateTime", at, layoutDateTime)
		if len(e.Participant) > 0 {
			w.ka("performer")
			w.obj()
			w.ref("actor", e.Participant[0].Individual.Reference)
			w.end()
			w.endArr()
		}
		w.ko("dosage")
		w.ko("dose")
		w.key("value")
		w.int(1 + r.IntN(4))
		w.ks("unit", "mg")
		w.ks("system", sysUCUM)
		w.ks("code", "mg")
		w.end()
		w.end()
		g.emit(cMedAdmin, id, lu, ver)
	}
}
