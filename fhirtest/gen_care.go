package fhirtest

import (
	"fmt"
	"strconv"
)

// Per-patient generators for the less frequent types: allergies, care
// teams and plans, goals, devices and provenance.

func (g *patientGen) allergies() {
	r, w := g.r, &g.w
	for k := range g.cnt[tAllergy] {
		id, ver := g.id(tAllergy, k), randVersion(r)
		a := allergyCodes[r.IntN(len(allergyCodes))]
		rec := randTime(r, simStart, simEnd-2*msDay)
		lu := clampLU(rec + r.Int64N(msDay))
		w.header("AllergyIntolerance", id, ver, lu)
		w.cc("clinicalStatus", code{sysAllergyClinical, "active", "Active"})
		w.cc("verificationStatus", code{sysAllergyVer, "confirmed", "Confirmed"})
		w.ks("type", "allergy")
		w.ka("category")
		w.str(a.category)
		w.endArr()
		if r.IntN(3) == 0 {
			w.ks("criticality", "high")
		} else {
			w.ks("criticality", "low")
		}
		w.cc("code", a.c)
		w.ref("patient", g.pref)
		w.kt("recordedDate", rec, layoutDateTime)
		if r.IntN(2) == 0 {
			w.ref("recorder", g.pract())
		}
		g.emit(tAllergy, k, id, lu, ver)
	}
}

func (g *patientGen) careTeams() {
	r, w := g.r, &g.w
	for k := range g.cnt[tCareTeam] {
		id, ver := g.id(tCareTeam, k), randVersion(r)
		e := g.pickEnc(60)
		start := g.when(e)
		lu := clampLU(start + r.Int64N(20*msDay))
		status := "active"
		if r.IntN(3) == 0 {
			status = "inactive"
		}
		w.header("CareTeam", id, ver, lu)
		w.ks("status", status)
		w.ccArr("category", careTeamCategory)
		w.ks("name", "Care team of patient "+g.pid)
		w.ref("subject", g.pref)
		g.encRef(e)
		w.ko("period")
		w.kt("start", start, layoutDateTime)
		w.end()
		w.ka("participant")
		for range 1 + r.IntN(3) {
			w.obj()
			w.ccArr("role", careTeamRole)
			if r.IntN(3) == 0 {
				w.ref("member", "PractitionerRole/"+pick(r, g.sz.role))
			} else {
				w.ref("member", g.pract())
			}
			w.end()
		}
		w.endArr()
		w.ka("managingOrganization")
		w.refVal(g.org())
		w.endArr()
		g.emit(tCareTeam, k, id, lu, ver)
		g.teams = append(g.teams, "CareTeam/"+id)
	}
}

func (g *patientGen) carePlans() {
	r, w := g.r, &g.w
	for k := range g.cnt[tCarePlan] {
		id, ver := g.id(tCarePlan, k), randVersion(r)
		e := g.pickEnc(60)
		start := g.when(e)
		lu := clampLU(start + r.Int64N(20*msDay))
		status := "active"
		if r.IntN(3) == 0 {
			status = "completed"
		}
		w.header("CarePlan", id, ver, lu)
		w.ks("status", status)
		w.ks("intent", "plan")
		w.ccArr("category", carePlanCategory)
		w.ref("subject", g.pref)
		g.encRef(e)
		w.ko("period")
		w.kt("start", start, layoutDateTime)
		w.end()
		if len(g.teams) > 0 {
			w.ka("careTeam")
			w.refVal(g.teams[r.IntN(len(g.teams))])
			w.endArr()
		}
		if len(g.conds) > 0 {
			w.ka("addresses")
			w.refVal(g.conds[r.IntN(len(g.conds))])
			w.endArr()
		}
		g.emit(tCarePlan, k, id, lu, ver)
	}
}

func (g *patientGen) goals() {
	r, w := g.r, &g.w
	for k := range g.cnt[tGoal] {
		id, ver := g.id(tGoal, k), randVersion(r)
		start := randTime(r, simStart, simEnd-2*msDay)
		lu := clampLU(start + r.Int64N(30*msDay))
		status := []string{"active", "active", "completed", "proposed"}[r.IntN(4)]
		w.header("Goal", id, ver, lu)
		w.ks("lifecycleStatus", status)
		w.ko("description")
		w.ks("text", goalTexts[r.IntN(len(goalTexts))])
		w.end()
		w.ref("subject", g.pref)
		w.kt("startDate", start, layoutDate)
		if len(g.conds) > 0 && r.IntN(2) == 0 {
			w.ka("addresses")
			w.refVal(g.conds[r.IntN(len(g.conds))])
			w.endArr()
		}
		g.emit(tGoal, k, id, lu, ver)
	}
}

func (g *patientGen) devices() {
	r, w := g.r, &g.w
	for k := range g.cnt[tDevice] {
		id, ver := g.id(tDevice, k), randVersion(r)
		lu := randTime(r, simStart, simEnd)
		status := "active"
		if r.IntN(4) == 0 {
			status = "inactive"
		}
		w.header("Device", id, ver, lu)
		w.ka("udiCarrier")
		w.obj()
		w.ks("deviceIdentifier", fmt.Sprintf("%014d", r.Int64N(1e14)))
		w.end()
		w.endArr()
		w.ks("status", status)
		w.ks("manufacturer", manufacturers[r.IntN(len(manufacturers))])
		w.ks("lotNumber", strconv.Itoa(10000+r.IntN(90000)))
		w.cc("type", deviceTypes[r.IntN(len(deviceTypes))])
		w.ref("patient", g.pref)
		if r.IntN(2) == 0 {
			w.ref("owner", g.org())
		}
		g.emit(tDevice, k, id, lu, ver)
	}
}

func (g *patientGen) provenances() {
	r, w := g.r, &g.w
	for k := range g.cnt[tProvenance] {
		id, ver := g.id(tProvenance, k), randVersion(r)
		lu := randTime(r, simStart, simEnd)
		w.header("Provenance", id, ver, lu)
		w.ka("target")
		w.refVal(g.pref)
		if len(g.encs) > 0 && r.IntN(2) == 0 {
			w.refVal(g.encs[r.IntN(len(g.encs))].ref)
		}
		w.endArr()
		w.kt("recorded", lu, layoutInstant)
		w.ka("agent")
		w.obj()
		w.cc("type", provAuthor)
		w.ref("who", g.pract())
		w.ref("onBehalfOf", g.org())
		w.end()
		w.endArr()
		g.emit(tProvenance, k, id, lu, ver)
	}
}
