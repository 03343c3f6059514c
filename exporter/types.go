package exporter

import (
	"fmt"
	"slices"
	"strings"

	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// compartmentParams maps every type of the R4 (4.0.1) Patient compartment
// to the search parameter that finds a patient's resources of that type.
// The compartment definition lists several parameters for most types; where
// R4 defines a `patient` search parameter (the subject or patient reference
// restricted to Patient) it is used, since servers index it best. Device is
// not in the R4 compartment but has a `patient` parameter and US Core
// exports it. Patient itself is searched by _id.
var compartmentParams = map[string]string{
	"Account":                     "patient",
	"AdverseEvent":                "subject",
	"AllergyIntolerance":          "patient",
	"Appointment":                 "patient",
	"AppointmentResponse":         "patient",
	"AuditEvent":                  "patient",
	"Basic":                       "patient",
	"BodyStructure":               "patient",
	"CarePlan":                    "patient",
	"CareTeam":                    "patient",
	"ChargeItem":                  "patient",
	"Claim":                       "patient",
	"ClaimResponse":               "patient",
	"ClinicalImpression":          "patient",
	"Communication":               "patient",
	"CommunicationRequest":        "patient",
	"Composition":                 "patient",
	"Condition":                   "patient",
	"Consent":                     "patient",
	"Coverage":                    "patient",
	"CoverageEligibilityRequest":  "patient",
	"CoverageEligibilityResponse": "patient",
	"DetectedIssue":               "patient",
	"Device":                      "patient",
	"DeviceRequest":               "patient",
	"DeviceUseStatement":          "patient",
	"DiagnosticReport":            "patient",
	"DocumentManifest":            "patient",
	"DocumentReference":           "patient",
	"Encounter":                   "patient",
	"EnrollmentRequest":           "patient",
	"EpisodeOfCare":               "patient",
	"ExplanationOfBenefit":        "patient",
	"FamilyMemberHistory":         "patient",
	"Flag":                        "patient",
	"Goal":                        "patient",
	"Group":                       "member",
	"ImagingStudy":                "patient",
	"Immunization":                "patient",
	"ImmunizationEvaluation":      "patient",
	"ImmunizationRecommendation":  "patient",
	"Invoice":                     "patient",
	"List":                        "patient",
	"MeasureReport":               "patient",
	"Media":                       "patient",
	"MedicationAdministration":    "patient",
	"MedicationDispense":          "patient",
	"MedicationRequest":           "patient",
	"MedicationStatement":         "patient",
	"MolecularSequence":           "patient",
	"NutritionOrder":              "patient",
	"Observation":                 "patient",
	"Patient":                     "_id",
	"Person":                      "patient",
	"Procedure":                   "patient",
	"Provenance":                  "patient",
	"QuestionnaireResponse":       "patient",
	"RelatedPerson":               "patient",
	"RequestGroup":                "patient",
	"ResearchSubject":             "individual",
	"RiskAssessment":              "patient",
	"Schedule":                    "actor",
	"ServiceRequest":              "patient",
	"Specimen":                    "patient",
	"SupplyDelivery":              "patient",
	"SupplyRequest":               "subject",
	"VisionPrescription":          "patient",
}

// referencedTypes are the non-compartment types a patient-level export
// returns when exported resources reference them; they are fetched by _id
// batches, each resource once.
var referencedTypes = map[string]bool{
	"Organization":     true,
	"Practitioner":     true,
	"PractitionerRole": true,
	"Location":         true,
	"Medication":       true,
}

// USCoreTypes is the USCDI v1 / US Core 3.1.1 type set plus the referenced
// Organization, Practitioner, Location and Medication: what Oracle Health
// exports without _type (export.default_types: us-core).
var USCoreTypes = []string{
	"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device",
	"DiagnosticReport", "DocumentReference", "Encounter", "Goal",
	"Immunization", "MedicationRequest", "Observation", "Patient",
	"Procedure", "Provenance",
	"Organization", "Practitioner", "Location", "Medication",
}

// systemExcluded are the types a system-level export without _type leaves
// out although the upstream declares them: raw content and server
// machinery, not data.
var systemExcluded = map[string]bool{
	"Binary": true, "Subscription": true, "Parameters": true, "OperationOutcome": true,
}

// CandidateTypes is the widest type set of an export without _type at a
// level, sorted: every R4 type of the Patient compartment and the
// referenced types at Group and Patient level, every R4 type (less
// Binary, Subscription, Parameters and OperationOutcome) at system level.
// Submit narrows it to what the upstream declares (DefaultTypes policy).
func CandidateTypes(level Level) []string {
	var out []string
	for rt := fhir.ResourceTypeAccount; rt <= fhir.ResourceTypeVisionPrescription; rt++ {
		t := rt.Code()
		switch {
		case level == LevelSystem && !systemExcluded[t]:
		case level != LevelSystem && Exportable(t):
		default:
			continue
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// TypePolicy chooses the types of an export without _type.
type TypePolicy struct {
	// USCore keeps USCoreTypes only.
	USCore bool
	// List, when not empty, keeps these types only.
	List []string
}

// ParseTypePolicy reads export.default_types: "all" (or ""), "us-core",
// or a comma-separated list of R4 resource types.
func ParseTypePolicy(s string) (TypePolicy, error) {
	switch strings.TrimSpace(s) {
	case "", "all":
		return TypePolicy{}, nil
	case "us-core", "uscore", "us_core":
		return TypePolicy{USCore: true}, nil
	}
	var p TypePolicy
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !IsResourceType(t) {
			return p, fmt.Errorf("%q is not an R4 resource type (use all, us-core or a list of types)", t)
		}
		if !slices.Contains(p.List, t) {
			p.List = append(p.List, t)
		}
	}
	if len(p.List) == 0 {
		return p, fmt.Errorf("no resource type given (use all, us-core or a list of types)")
	}
	return p, nil
}

// keeps reports whether the policy lets an export without _type have t.
func (p TypePolicy) keeps(t string) bool {
	switch {
	case p.USCore:
		return slices.Contains(USCoreTypes, t)
	case len(p.List) > 0:
		return slices.Contains(p.List, t)
	}
	return true
}

// CompartmentParam returns the search parameter that selects a patient's
// resources of the type, and false for types outside the compartment.
func CompartmentParam(resourceType string) (string, bool) {
	p, ok := compartmentParams[resourceType]
	return p, ok
}

// IsReferencedType reports whether the type is exported by following
// references rather than by compartment search.
func IsReferencedType(resourceType string) bool { return referencedTypes[resourceType] }

// IsResourceType reports whether name is an R4 resource type.
func IsResourceType(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	var rt fhir.ResourceType
	return rt.UnmarshalJSON([]byte(`"`+name+`"`)) == nil
}

// Exportable reports whether a patient-level (Group or Patient) export can
// return the type.
func Exportable(resourceType string) bool {
	if resourceType == "Group" {
		return false
	}
	_, ok := compartmentParams[resourceType]
	return ok || referencedTypes[resourceType]
}
