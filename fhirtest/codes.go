package fhirtest

// Code systems used by the generator.
const (
	sysLOINC           = "http://loinc.org"
	sysSNOMED          = "http://snomed.info/sct"
	sysRxNorm          = "http://www.nlm.nih.gov/research/umls/rxnorm"
	sysCVX             = "http://hl7.org/fhir/sid/cvx"
	sysUCUM            = "http://unitsofmeasure.org"
	sysObsCategory     = "http://terminology.hl7.org/CodeSystem/observation-category"
	sysCondClinical    = "http://terminology.hl7.org/CodeSystem/condition-clinical"
	sysCondVerStatus   = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
	sysCondCategory    = "http://terminology.hl7.org/CodeSystem/condition-category"
	sysActCode         = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	sysAllergyClinical = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
	sysAllergyVer      = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
	sysV2_0074         = "http://terminology.hl7.org/CodeSystem/v2-0074"
	sysV2_0203         = "http://terminology.hl7.org/CodeSystem/v2-0203"
	sysDocCategory     = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
	sysCarePlanCat     = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
	sysProvAgentType   = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
	sysOrgType         = "http://terminology.hl7.org/CodeSystem/organization-type"
	sysRoleCode        = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
	sysPractRole       = "http://terminology.hl7.org/CodeSystem/practitioner-role"
	sysNPI             = "http://hl7.org/fhir/sid/us-npi"
	sysMRN             = "http://hospital.example.org/mrn"
	sysOrgID           = "http://hospital.example.org/organizations"
)

// code is one coding: system, code and display.
type code struct {
	system, code, display string
}

// obsKind selects how an Observation's value is written.
type obsKind int

const (
	obsQuantity obsKind = iota
	obsBloodPressure
	obsSmoking
)

// obsDef describes one kind of generated Observation.
type obsDef struct {
	code     code
	category code
	kind     obsKind
	unit     string
	lo, hi   float64
	decimals int
}

var (
	catVital  = code{sysObsCategory, "vital-signs", "Vital Signs"}
	catLab    = code{sysObsCategory, "laboratory", "Laboratory"}
	catSocial = code{sysObsCategory, "social-history", "Social History"}
)

// obsDefs lists Observation kinds; vital signs are listed first and are the
// most frequent, laboratory results follow.
var obsDefs = []obsDef{
	{code{sysLOINC, "8867-4", "Heart rate"}, catVital, obsQuantity, "/min", 52, 110, 0},
	{code{sysLOINC, "85354-9", "Blood pressure panel with all children optional"}, catVital, obsBloodPressure, "mm[Hg]", 0, 0, 0},
	{code{sysLOINC, "29463-7", "Body weight"}, catVital, obsQuantity, "kg", 45, 120, 1},
	{code{sysLOINC, "8302-2", "Body height"}, catVital, obsQuantity, "cm", 150, 195, 1},
	{code{sysLOINC, "39156-5", "Body mass index (BMI) [Ratio]"}, catVital, obsQuantity, "kg/m2", 18, 38, 1},
	{code{sysLOINC, "8310-5", "Body temperature"}, catVital, obsQuantity, "Cel", 36.1, 38.9, 1},
	{code{sysLOINC, "9279-1", "Respiratory rate"}, catVital, obsQuantity, "/min", 11, 24, 0},
	{code{sysLOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"}, catVital, obsQuantity, "%", 90, 100, 0},
	{code{sysLOINC, "72166-2", "Tobacco smoking status"}, catSocial, obsSmoking, "", 0, 0, 0},
	{code{sysLOINC, "2339-0", "Glucose [Mass/volume] in Blood"}, catLab, obsQuantity, "mg/dL", 65, 180, 0},
	{code{sysLOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"}, catLab, obsQuantity, "mg/dL", 140, 280, 0},
	{code{sysLOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"}, catLab, obsQuantity, "%", 4.5, 9.5, 1},
	{code{sysLOINC, "718-7", "Hemoglobin [Mass/volume] in Blood"}, catLab, obsQuantity, "g/dL", 10.5, 17.5, 1},
	{code{sysLOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma"}, catLab, obsQuantity, "mg/dL", 0.6, 1.6, 2},
	{code{sysLOINC, "6690-2", "Leukocytes [#/volume] in Blood by Automated count"}, catLab, obsQuantity, "10*3/uL", 3.5, 11, 1},
	{code{sysLOINC, "2947-0", "Sodium [Moles/volume] in Blood"}, catLab, obsQuantity, "mmol/L", 134, 146, 0},
	{code{sysLOINC, "6298-4", "Potassium [Moles/volume] in Blood"}, catLab, obsQuantity, "mmol/L", 3.4, 5.3, 1},
}

var (
	loincSystolic  = code{sysLOINC, "8480-6", "Systolic blood pressure"}
	loincDiastolic = code{sysLOINC, "8462-4", "Diastolic blood pressure"}
	smokingValues  = []code{
		{sysSNOMED, "266919005", "Never smoker"},
		{sysSNOMED, "8517006", "Ex-smoker"},
		{sysSNOMED, "449868002", "Smokes tobacco daily"},
	}
	obsStatuses = []string{"final", "final", "final", "final", "final", "final", "amended", "preliminary"}
)

var conditionCodes = []code{
	{sysSNOMED, "44054006", "Diabetes mellitus type 2"},
	{sysSNOMED, "38341003", "Hypertensive disorder"},
	{sysSNOMED, "195662009", "Acute viral pharyngitis"},
	{sysSNOMED, "10509002", "Acute bronchitis"},
	{sysSNOMED, "40055000", "Chronic sinusitis"},
	{sysSNOMED, "55822004", "Hyperlipidemia"},
	{sysSNOMED, "195967001", "Asthma"},
	{sysSNOMED, "233604007", "Pneumonia"},
	{sysSNOMED, "271737000", "Anemia"},
	{sysSNOMED, "15777000", "Prediabetes"},
	{sysSNOMED, "35489007", "Depressive disorder"},
	{sysSNOMED, "444814009", "Viral sinusitis"},
}

var (
	condActive   = code{sysCondClinical, "active", "Active"}
	condResolved = code{sysCondClinical, "resolved", "Resolved"}
	condInactive = code{sysCondClinical, "inactive", "Inactive"}
	condVerified = code{sysCondVerStatus, "confirmed", "Confirmed"}
	condProblem  = code{sysCondCategory, "problem-list-item", "Problem List Item"}
	condEncDiag  = code{sysCondCategory, "encounter-diagnosis", "Encounter Diagnosis"}
)

// encounterKinds pairs an Encounter class with a type.
var encounterKinds = []struct {
	class, typ code
	hours      int
}{
	{code{sysActCode, "AMB", "ambulatory"}, code{sysSNOMED, "185349003", "Encounter for check up"}, 1},
	{code{sysActCode, "AMB", "ambulatory"}, code{sysSNOMED, "390906007", "Follow-up encounter"}, 1},
	{code{sysActCode, "AMB", "ambulatory"}, code{sysSNOMED, "185345009", "Encounter for symptom"}, 1},
	{code{sysActCode, "EMER", "emergency"}, code{sysSNOMED, "50849002", "Emergency room admission"}, 6},
	{code{sysActCode, "IMP", "inpatient encounter"}, code{sysSNOMED, "183452005", "Emergency hospital admission"}, 72},
	{code{sysActCode, "VR", "virtual"}, code{sysSNOMED, "185317003", "Telephone encounter"}, 1},
}

var rxnormCodes = []code{
	{sysRxNorm, "314076", "lisinopril 10 MG Oral Tablet"},
	{sysRxNorm, "861007", "metformin hydrochloride 500 MG Oral Tablet"},
	{sysRxNorm, "197361", "amlodipine 5 MG Oral Tablet"},
	{sysRxNorm, "617312", "atorvastatin 10 MG Oral Tablet"},
	{sysRxNorm, "313782", "acetaminophen 325 MG Oral Tablet"},
	{sysRxNorm, "308182", "amoxicillin 250 MG Oral Capsule"},
	{sysRxNorm, "310798", "hydrochlorothiazide 25 MG Oral Tablet"},
	{sysRxNorm, "198211", "simvastatin 40 MG Oral Tablet"},
	{sysRxNorm, "895994", "fluticasone propionate 0.05 MG/ACTUAT Nasal Spray"},
	{sysRxNorm, "745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"},
	{sysRxNorm, "310965", "ibuprofen 200 MG Oral Tablet"},
	{sysRxNorm, "312961", "simvastatin 20 MG Oral Tablet"},
	{sysRxNorm, "866412", "metoprolol succinate 100 MG Extended Release Oral Tablet"},
	{sysRxNorm, "283837", "sertraline 50 MG Oral Tablet"},
	{sysRxNorm, "1049630", "diphenhydramine hydrochloride 25 MG Oral Tablet"},
}

var medForms = []code{
	{sysSNOMED, "385055001", "Tablet"},
	{sysSNOMED, "385049006", "Capsule"},
	{sysSNOMED, "421720008", "Spray"},
}

var procedureCodes = []code{
	{sysSNOMED, "73761001", "Colonoscopy"},
	{sysSNOMED, "430193006", "Medication reconciliation"},
	{sysSNOMED, "710824005", "Assessment of health and social care needs"},
	{sysSNOMED, "171207006", "Depression screening"},
	{sysSNOMED, "80146002", "Appendectomy"},
	{sysSNOMED, "76601001", "Intramuscular injection"},
	{sysSNOMED, "274804006", "Evaluation of uterine fundal height"},
	{sysSNOMED, "162676008", "Brief general examination"},
	{sysSNOMED, "117015009", "Throat culture"},
}

var vaccineCodes = []code{
	{sysCVX, "140", "Influenza, seasonal, injectable, preservative free"},
	{sysCVX, "113", "Td (adult) preservative free"},
	{sysCVX, "133", "Pneumococcal conjugate PCV 13"},
	{sysCVX, "08", "Hep B, adolescent or pediatric"},
	{sysCVX, "62", "HPV, quadrivalent"},
	{sysCVX, "208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"},
}

var reportCodes = []code{
	{sysLOINC, "58410-2", "CBC panel - Blood by Automated count"},
	{sysLOINC, "51990-0", "Basic metabolic panel - Blood"},
	{sysLOINC, "57698-3", "Lipid panel with direct LDL - Serum or Plasma"},
	{sysLOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"},
}

var (
	reportCategory = code{sysV2_0074, "LAB", "Laboratory"}
	docTypes       = []code{
		{sysLOINC, "34117-2", "History and physical note"},
		{sysLOINC, "11506-3", "Progress note"},
		{sysLOINC, "18842-5", "Discharge summary"},
	}
	docCategory = code{sysDocCategory, "clinical-note", "Clinical Note"}
)

var allergyCodes = []struct {
	c        code
	category string
}{
	{code{sysSNOMED, "300916003", "Latex allergy"}, "environment"},
	{code{sysSNOMED, "91935009", "Allergy to peanuts"}, "food"},
	{code{sysSNOMED, "294505008", "Allergy to amoxicillin"}, "medication"},
	{code{sysSNOMED, "418689008", "Allergy to grass pollen"}, "environment"},
	{code{sysSNOMED, "419474003", "Allergy to mould"}, "environment"},
	{code{sysSNOMED, "417532002", "Allergy to fish"}, "food"},
}

var (
	carePlanCategory = code{sysCarePlanCat, "assess-plan", "Assessment and Plan of Treatment"}
	careTeamCategory = code{sysLOINC, "LA27976-2", "Encounter-focused care team"}
	careTeamRole     = code{sysSNOMED, "223366009", "Healthcare professional"}
	goalTexts        = []string{
		"Maintain blood pressure below 140/90 mm[Hg]",
		"Improve and maintain optimal foot health",
		"Reduce HbA1c below 7 percent",
		"Walk 30 minutes five days a week",
		"Stop smoking",
	}
	deviceTypes = []code{
		{sysSNOMED, "72506001", "Implantable defibrillator"},
		{sysSNOMED, "14106009", "Cardiac pacemaker"},
		{sysSNOMED, "705643001", "Coronary artery stent"},
		{sysSNOMED, "337414009", "Blood glucose meter"},
	}
	provAuthor    = code{sysProvAgentType, "author", "Author"}
	orgProv       = code{sysOrgType, "prov", "Healthcare Provider"}
	locTypes      = []code{{sysRoleCode, "HOSP", "Hospital"}, {sysRoleCode, "ER", "Emergency room"}, {sysRoleCode, "OF", "Outpatient facility"}}
	roleDoctor    = code{sysPractRole, "doctor", "Doctor"}
	specialtyGP   = code{sysSNOMED, "394814009", "General practice"}
	mrnType       = code{sysV2_0203, "MR", "Medical Record Number"}
	maleNames     = []string{"James", "John", "Robert", "Michael", "William", "David", "Carlos", "Ahmed", "Wei", "Lukas", "Omar", "Daniel"}
	femaleNames   = []string{"Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Sofia", "Aisha", "Mei", "Emma", "Fatima", "Laura", "Olga"}
	familyNames   = []string{"Smith", "Johnson", "Williams", "Brown", "Jones", "García", "Miller", "Davis", "Müller", "Nguyen", "O'Brien", "Kowalski", "Schmidt", "Rossi", "Yamamoto", "Okafor"}
	cities        = []string{"Springfield", "Riverside", "Fairview", "Madison", "Georgetown", "Franklin", "Clinton", "Salem"}
	states        = []string{"MA", "CA", "TX", "NY", "OH", "WA", "IL", "GA"}
	streets       = []string{"Main St", "Oak Ave", "Pine Rd", "Maple Dr", "Cedar Ln", "Elm St", "Lake Blvd"}
	orgNameStarts = []string{"Riverside", "Northgate", "Summit", "Lakeside", "Valley", "Harbor", "Pinecrest", "Meadow"}
	orgNameEnds   = []string{"General Hospital", "Medical Center", "Family Practice", "Health Clinic", "Community Health"}
	manufacturers = []string{"Acme Pharma", "Generic Labs"}
)
