package fhirtest

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// Per-patient resource types (indexes into counts).
const (
	tPatient = iota
	tAllergy
	tCarePlan
	tCareTeam
	tCondition
	tDevice
	tDiagReport
	tDocRef
	tEncounter
	tGoal
	tImmunization
	tMedReq
	tObservation
	tProcedure
	tProvenance
	numPT
)

// ptNames are the resource type names of the per-patient types.
var ptNames = [numPT]string{
	"Patient", "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device",
	"DiagnosticReport", "DocumentReference", "Encounter", "Goal", "Immunization",
	"MedicationRequest", "Observation", "Procedure", "Provenance",
}

// counts holds one number per per-patient type.
type counts [numPT]int

// drawCounts draws how many resources of each type a patient has (about
// 200 in total on average, most of them Observations).
func drawCounts(r *rand.Rand) counts {
	var c counts
	c[tPatient] = 1
	c[tEncounter] = 2 + r.IntN(20)
	c[tObservation] = 40 + r.IntN(120) + r.IntN(80)
	c[tCondition] = r.IntN(12)
	c[tDiagReport] = r.IntN(16)
	c[tDocRef] = r.IntN(9)
	c[tMedReq] = r.IntN(20)
	c[tProcedure] = r.IntN(12)
	c[tImmunization] = r.IntN(10)
	if r.IntN(10) < 6 {
		c[tAllergy] = 1 + r.IntN(3)
	}
	c[tCarePlan] = r.IntN(3)
	c[tCareTeam] = r.IntN(3)
	c[tGoal] = r.IntN(4)
	if r.IntN(10) < 4 {
		c[tDevice] = 1 + r.IntN(2)
	}
	c[tProvenance] = 1
	if r.IntN(10) == 0 {
		c[tProvenance] = 2
	}
	return c
}

type encInfo struct {
	ref        string
	start, end int64
}

// patientGen generates one patient at a time; a worker reuses it.
type patientGen struct {
	seed    int64
	sz      sharedSizes
	backing *[numPT][]resource
	w       jw
	a       arena

	r           *rand.Rand
	idx         int
	cnt, base   counts
	pid, pref   string
	patients    []string
	birth       int64
	encs        []encInfo
	labs, conds []string
	teams       []string
	// urls: DocumentReference attachments point to Binary/doc-{id}
	// (Options.AttachmentURLs) instead of carrying their data.
	urls bool
	// idPrefix is Options.PatientIDPrefix.
	idPrefix string
}

func (g *patientGen) reset(i int, base counts) {
	g.idx = i
	g.r = patientRand(g.seed, i)
	g.cnt = drawCounts(g.r)
	g.base = base
	g.pid = g.idPrefix + strconv.Itoa(base[tPatient])
	g.pref = "Patient/" + g.pid
	g.patients = []string{g.pid}
	g.encs, g.labs, g.conds, g.teams = g.encs[:0], g.labs[:0], g.conds[:0], g.teams[:0]
}

func (g *patientGen) run() {
	g.patient()
	g.encounters()
	g.conditions()
	g.observations()
	g.diagnosticReports()
	g.documentReferences()
	g.medicationRequests()
	g.procedures()
	g.immunizations()
	g.allergies()
	g.careTeams()
	g.carePlans()
	g.goals()
	g.devices()
	g.provenances()
}

func (g *patientGen) id(t, k int) string { return strconv.Itoa(g.base[t] + k) }

// emit closes the resource being written and stores it in its slot.
func (g *patientGen) emit(t, k int, id string, lu int64, ver int) {
	g.w.end()
	g.backing[t][g.base[t]-1+k] = resource{id: id, lu: lu, version: ver, body: g.a.keep(g.w.b), patients: g.patients}
}

func (g *patientGen) pract() string { return "Practitioner/" + pick(g.r, g.sz.pract) }
func (g *patientGen) org() string   { return "Organization/" + pick(g.r, g.sz.org) }
func (g *patientGen) loc() string   { return "Location/" + pick(g.r, g.sz.loc) }

// pickEnc returns one of the patient's encounters with probability pct%.
func (g *patientGen) pickEnc(pct int) *encInfo {
	if len(g.encs) == 0 || g.r.IntN(100) >= pct {
		return nil
	}
	return &g.encs[g.r.IntN(len(g.encs))]
}

// when returns a clinical time: in the encounter when there is one, else
// anywhere in the window.
func (g *patientGen) when(e *encInfo) int64 {
	if e != nil {
		return e.start + g.r.Int64N(max(e.end-e.start, msMinute))
	}
	return randTime(g.r, simStart, simEnd-2*msDay)
}

func (g *patientGen) encRef(e *encInfo) {
	if e != nil {
		g.w.ref("encounter", e.ref)
	}
}

var (
	birthLo = time.Date(1940, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	birthHi = time.Date(2019, 12, 31, 0, 0, 0, 0, time.UTC).UnixMilli()
)

func (g *patientGen) patient() {
	r, w := g.r, &g.w
	gender, given := "female", femaleNames[r.IntN(len(femaleNames))]
	if r.IntN(2) == 0 {
		gender, given = "male", maleNames[r.IntN(len(maleNames))]
	}
	if r.IntN(100) == 0 {
		gender = "other"
	}
	family := familyNames[r.IntN(len(familyNames))]
	g.birth = randTime(r, birthLo, birthHi)
	lu, ver := randTime(r, simStart, simEnd), randVersion(r)

	w.header("Patient", g.pid, ver, lu)
	w.ka("identifier")
	w.obj()
	w.ks("use", "usual")
	w.cc("type", mrnType)
	w.ks("system", sysMRN)
	w.ks("value", fmt.Sprintf("MRN%07d", g.idx+1))
	w.end()
	w.endArr()
	w.kb("active", true)
	w.ka("name")
	w.obj()
	w.ks("use", "official")
	w.ks("family", family)
	w.ka("given")
	w.str(given)
	if r.IntN(3) == 0 {
		w.str(familyNames[r.IntN(len(familyNames))] + "a")
	}
	w.endArr()
	w.end()
	w.endArr()
	writePhone(w, r, "home")
	w.ks("gender", gender)
	w.kt("birthDate", g.birth, layoutDate)
	if r.IntN(50) == 0 {
		w.kt("deceasedDateTime", randTime(r, simStart, lu), layoutDateTime)
	}
	writeAddress(w, r)
	w.ka("generalPractitioner")
	w.refVal(g.pract())
	w.endArr()
	w.ref("managingOrganization", g.org())
	g.emit(tPatient, 0, g.pid, lu, ver)
}

var participantPPRF = code{"http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer"}

func (g *patientGen) encounters() {
	r, w := g.r, &g.w
	for k := range g.cnt[tEncounter] {
		id, ver := g.id(tEncounter, k), randVersion(r)
		var kind int
		switch x := r.IntN(10); {
		case x < 6:
			kind = x % 3
		case x < 8:
			kind = 5
		case x < 9:
			kind = 3
		default:
			kind = 4
		}
		ek := encounterKinds[kind]
		start := randTime(r, simStart, simEnd-10*msDay)
		end := start + 15*msMinute + r.Int64N(int64(ek.hours)*msHour)
		status := "finished"
		if r.IntN(40) == 0 {
			status = "in-progress"
		}
		lu := clampLU(end + r.Int64N(7*msDay))
		w.header("Encounter", id, ver, lu)
		w.ks("status", status)
		w.key("class")
		w.coding(ek.class)
		w.ccArr("type", ek.typ)
		w.ref("subject", g.pref)
		w.ka("participant")
		w.obj()
		w.ccArr("type", participantPPRF)
		w.ref("individual", g.pract())
		w.end()
		w.endArr()
		w.ko("period")
		w.kt("start", start, layoutDateTime)
		if status == "finished" {
			w.kt("end", end, layoutDateTime)
		}
		w.end()
		w.ka("location")
		w.obj()
		w.ref("location", g.loc())
		w.end()
		w.endArr()
		w.ref("serviceProvider", g.org())
		g.emit(tEncounter, k, id, lu, ver)
		g.encs = append(g.encs, encInfo{ref: "Encounter/" + id, start: start, end: end})
	}
}

func (g *patientGen) conditions() {
	r, w := g.r, &g.w
	for k := range g.cnt[tCondition] {
		id, ver := g.id(tCondition, k), randVersion(r)
		c := conditionCodes[r.IntN(len(conditionCodes))]
		e := g.pickEnc(70)
		onset := g.when(e)
		lu := clampLU(onset + r.Int64N(30*msDay))
		clinical, cat := condActive, condProblem
		switch x := r.IntN(10); {
		case x < 3:
			clinical = condResolved
		case x < 4:
			clinical = condInactive
		}
		if e != nil {
			cat = condEncDiag
		}
		w.header("Condition", id, ver, lu)
		w.cc("clinicalStatus", clinical)
		w.cc("verificationStatus", condVerified)
		w.ccArr("category", cat)
		w.cc("code", c)
		w.ref("subject", g.pref)
		g.encRef(e)
		w.kt("onsetDateTime", onset, layoutDateTime)
		if clinical == condResolved {
			w.kt("abatementDateTime", onset+r.Int64N(lu-onset+1), layoutDateTime)
		}
		w.kt("recordedDate", onset, layoutDateTime)
		g.emit(tCondition, k, id, lu, ver)
		g.conds = append(g.conds, "Condition/"+id)
	}
}

func (g *patientGen) quantity(key string, value float64, decimals int, unit string) {
	w := &g.w
	w.ko(key)
	w.key("value")
	w.float(value, decimals)
	w.ks("unit", unit)
	w.ks("system", sysUCUM)
	w.ks("code", unit)
	w.end()
}

func (g *patientGen) observations() {
	r, w := g.r, &g.w
	const nVital, iSmoking = 8, 8
	for k := range g.cnt[tObservation] {
		id, ver := g.id(tObservation, k), randVersion(r)
		var d *obsDef
		switch x := r.IntN(100); {
		case x < 68:
			d = &obsDefs[r.IntN(nVital)]
		case x < 71:
			d = &obsDefs[iSmoking]
		default:
			d = &obsDefs[iSmoking+1+r.IntN(len(obsDefs)-iSmoking-1)]
		}
		e := g.pickEnc(85)
		eff := g.when(e)
		lu := clampLU(eff + r.Int64N(3*msDay))
		w.header("Observation", id, ver, lu)
		w.ks("status", obsStatuses[r.IntN(len(obsStatuses))])
		w.ccArr("category", d.category)
		w.cc("code", d.code)
		w.ref("subject", g.pref)
		g.encRef(e)
		w.kt("effectiveDateTime", eff, layoutDateTime)
		w.kt("issued", eff+r.Int64N(lu-eff+1), layoutInstant)
		if r.IntN(2) == 0 {
			w.ka("performer")
			w.refVal(g.pract())
			w.endArr()
		}
		switch d.kind {
		case obsQuantity:
			g.quantity("valueQuantity", d.lo+r.Float64()*(d.hi-d.lo), d.decimals, d.unit)
		case obsBloodPressure:
			w.ka("component")
			for i, c := range []code{loincSystolic, loincDiastolic} {
				w.obj()
				w.cc("code", c)
				base := 105.0
				if i == 1 {
					base = 65
				}
				g.quantity("valueQuantity", base+float64(r.IntN(40)), 0, d.unit)
				w.end()
			}
			w.endArr()
		case obsSmoking:
			w.cc("valueCodeableConcept", smokingValues[r.IntN(len(smokingValues))])
		}
		g.emit(tObservation, k, id, lu, ver)
		if d.category == catLab {
			g.labs = append(g.labs, "Observation/"+id)
		}
	}
}

func (g *patientGen) diagnosticReports() {
	r, w := g.r, &g.w
	for k := range g.cnt[tDiagReport] {
		id, ver := g.id(tDiagReport, k), randVersion(r)
		e := g.pickEnc(80)
		eff := g.when(e)
		lu := clampLU(eff + r.Int64N(5*msDay))
		status := "final"
		if r.IntN(20) == 0 {
			status = "amended"
		}
		w.header("DiagnosticReport", id, ver, lu)
		w.ks("status", status)
		w.ccArr("category", reportCategory)
		w.cc("code", reportCodes[r.IntN(len(reportCodes))])
		w.ref("subject", g.pref)
		g.encRef(e)
		w.kt("effectiveDateTime", eff, layoutDateTime)
		w.kt("issued", eff+r.Int64N(lu-eff+1), layoutInstant)
		w.ka("performer")
		w.refVal(g.pract())
		w.endArr()
		if n := len(g.labs); n > 0 {
			start, m := r.IntN(n), 1+r.IntN(4)
			w.ka("result")
			for i := start; i < min(n, start+m); i++ {
				w.refVal(g.labs[i])
			}
			w.endArr()
		}
		g.emit(tDiagReport, k, id, lu, ver)
	}
}

func (g *patientGen) documentReferences() {
	r, w := g.r, &g.w
	for k := range g.cnt[tDocRef] {
		id, ver := g.id(tDocRef, k), randVersion(r)
		e := g.pickEnc(90)
		date := g.when(e)
		lu := clampLU(date + r.Int64N(2*msDay))
		dt := docTypes[r.IntN(len(docTypes))]
		w.header("DocumentReference", id, ver, lu)
		w.ks("status", "current")
		w.cc("type", dt)
		w.ccArr("category", docCategory)
		w.ref("subject", g.pref)
		w.kt("date", date, layoutInstant)
		w.ka("author")
		w.refVal(g.pract())
		w.endArr()
		w.ka("content")
		w.obj()
		w.ko("attachment")
		w.ks("contentType", "text/plain")
		if g.urls {
			w.ks("url", "Binary/"+binaryID(id))
		} else {
			note := dt.display + " for patient " + g.pid + ". Patient is doing well."
			w.ks("data", base64.StdEncoding.EncodeToString([]byte(note)))
		}
		w.ks("title", dt.display)
		w.end()
		w.end()
		w.endArr()
		if e != nil {
			w.ko("context")
			w.ka("encounter")
			w.refVal(e.ref)
			w.endArr()
			w.ko("period")
			w.kt("start", e.start, layoutDateTime)
			w.end()
			w.end()
		}
		g.emit(tDocRef, k, id, lu, ver)
	}
}

func (g *patientGen) medicationRequests() {
	r, w := g.r, &g.w
	for k := range g.cnt[tMedReq] {
		id, ver := g.id(tMedReq, k), randVersion(r)
		e := g.pickEnc(75)
		authored := g.when(e)
		lu := clampLU(authored + r.Int64N(10*msDay))
		status := "active"
		switch x := r.IntN(10); {
		case x < 4:
			status = "completed"
		case x < 5:
			status = "stopped"
		}
		intent := "order"
		if r.IntN(10) == 0 {
			intent = "plan"
		}
		rx := rxnormCodes[r.IntN(len(rxnormCodes))]
		choice := r.IntN(20)
		w.header("MedicationRequest", id, ver, lu)
		if choice >= 12 && choice < 17 {
			w.ka("contained")
			w.obj()
			w.ks("resourceType", "Medication")
			w.ks("id", "med")
			w.cc("code", rx)
			w.end()
			w.endArr()
		}
		w.ks("status", status)
		w.ks("intent", intent)
		switch {
		case choice < 12:
			w.ref("medicationReference", "Medication/"+pick(r, g.sz.med))
		case choice < 17:
			w.ref("medicationReference", "#med")
		default:
			w.cc("medicationCodeableConcept", rx)
		}
		w.ref("subject", g.pref)
		g.encRef(e)
		w.kt("authoredOn", authored, layoutDateTime)
		w.ref("requester", g.pract())
		w.ka("dosageInstruction")
		w.obj()
		w.ki("sequence", 1)
		w.ks("text", "Take "+strconv.Itoa(1+r.IntN(2))+" dose(s) daily")
		w.end()
		w.endArr()
		g.emit(tMedReq, k, id, lu, ver)
	}
}

func (g *patientGen) procedures() {
	r, w := g.r, &g.w
	for k := range g.cnt[tProcedure] {
		id, ver := g.id(tProcedure, k), randVersion(r)
		e := g.pickEnc(85)
		at := g.when(e)
		end := at + 10*msMinute + r.Int64N(2*msHour)
		lu := clampLU(end + r.Int64N(3*msDay))
		status := "completed"
		if r.IntN(20) == 0 {
			status = "in-progress"
		}
		w.header("Procedure", id, ver, lu)
		w.ks("status", status)
		w.cc("code", procedureCodes[r.IntN(len(procedureCodes))])
		w.ref("subject", g.pref)
		g.encRef(e)
		if r.IntN(10) < 3 {
			w.ko("performedPeriod")
			w.kt("start", at, layoutDateTime)
			w.kt("end", end, layoutDateTime)
			w.end()
		} else {
			w.kt("performedDateTime", at, layoutDateTime)
		}
		w.ka("performer")
		w.obj()
		w.ref("actor", g.pract())
		w.end()
		w.endArr()
		if r.IntN(4) == 0 {
			w.ref("location", g.loc())
		}
		g.emit(tProcedure, k, id, lu, ver)
	}
}

func (g *patientGen) immunizations() {
	r, w := g.r, &g.w
	for k := range g.cnt[tImmunization] {
		id, ver := g.id(tImmunization, k), randVersion(r)
		e := g.pickEnc(80)
		at := g.when(e)
		lu := clampLU(at + r.Int64N(2*msDay))
		status := "completed"
		if r.IntN(25) == 0 {
			status = "not-done"
		}
		w.header("Immunization", id, ver, lu)
		w.ks("status", status)
		w.cc("vaccineCode", vaccineCodes[r.IntN(len(vaccineCodes))])
		w.ref("patient", g.pref)
		g.encRef(e)
		w.kt("occurrenceDateTime", at, layoutDateTime)
		w.kb("primarySource", true)
		w.ks("lotNumber", fmt.Sprintf("LOT%05d", r.IntN(100000)))
		w.ka("performer")
		w.obj()
		w.ref("actor", g.pract())
		w.end()
		w.endArr()
		g.emit(tImmunization, k, id, lu, ver)
	}
}
