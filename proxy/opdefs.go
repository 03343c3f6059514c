package proxy

import (
	"encoding/json"
	"net/http"

	"github.com/gin-gonic/gin"
)

// opParam is one parameter of an OperationDefinition.
type opParam struct {
	Name          string `json:"name"`
	Use           string `json:"use"`
	Min           int    `json:"min"`
	Max           string `json:"max"`
	Type          string `json:"type,omitempty"`
	Documentation string `json:"documentation,omitempty"`
}

// exportParams are the kick-off parameters this proxy takes, as the Bulk
// Data IG defines them.
func exportParams(withPatient bool) []opParam {
	ps := []opParam{
		{Name: "_outputFormat", Use: "in", Min: 0, Max: "1", Type: "string",
			Documentation: "application/fhir+ndjson (also application/ndjson and ndjson); the default"},
		{Name: "_since", Use: "in", Min: 0, Max: "1", Type: "instant",
			Documentation: "only resources changed after this instant; deletions since then are listed in deleted[] where the upstream offers _history"},
		{Name: "_until", Use: "in", Min: 0, Max: "1", Type: "instant",
			Documentation: "only resources changed at or before this instant"},
		{Name: "_type", Use: "in", Min: 0, Max: "*", Type: "string",
			Documentation: "comma-separated resource types; without it every type the upstream server declares (Patient compartment types and the resources they reference at Group and Patient level), unless the server is configured to the US Core set or a list"},
		{Name: "_elements", Use: "in", Min: 0, Max: "*", Type: "string",
			Documentation: "elements to keep (elem or Type.elem); mandatory elements are kept and meta.tag SUBSETTED is added"},
		{Name: "includeAssociatedData", Use: "in", Min: 0, Max: "*", Type: "code",
			Documentation: "LatestProvenanceResources or RelevantProvenanceResources: the Provenance resources that target exported resources"},
		{Name: "_typeFilter", Use: "in", Min: 0, Max: "*", Type: "string",
			Documentation: "Type?query search criteria; several for one type are OR'ed"},
	}
	if withPatient {
		ps = append(ps, opParam{Name: "patient", Use: "in", Min: 0, Max: "*", Type: "Reference",
			Documentation: "only these patients' compartments (POST Parameters)"})
	}
	return ps
}

// operationDefinitions are the Bulk Data IG's OperationDefinitions, served
// at [base]/OperationDefinition/{id} with the parameters this proxy takes.
var operationDefinitions = map[string]map[string]any{
	"export": opDef("export", SystemExportDefinition, "BulkDataExport", "Export data from the FHIR server (system level)",
		true, false, nil, false),
	"patient-export": opDef("patient-export", PatientExportDefinition, "BulkDataPatientExport", "Export data of all patients",
		false, true, []string{"Patient"}, true),
	"group-export": opDef("group-export", GroupExportDefinition, "BulkDataGroupExport", "Export data of a Group's patients",
		false, false, []string{"Group"}, true),
}

func opDef(id, url, name, title string, system, typ bool, resources []string, withPatient bool) map[string]any {
	def := map[string]any{
		"resourceType": "OperationDefinition",
		"id":           id,
		"url":          url,
		"version":      "2.0.0",
		"name":         name,
		"title":        title,
		"status":       "active",
		"kind":         "operation",
		"code":         "export",
		"system":       system,
		"type":         typ,
		"instance":     !system && !typ,
		"parameter":    exportParams(withPatient),
	}
	if resources != nil {
		def["resource"] = resources
	}
	return def
}

// serveOperationDefinition answers GET [base]/OperationDefinition/{id} for
// the three bulk export definitions and passes anything else through.
func (h *handlers) serveOperationDefinition(pass http.Handler) gin.HandlerFunc {
	return func(c *gin.Context) {
		def, ok := operationDefinitions[c.Param("id")]
		if !ok {
			pass.ServeHTTP(c.Writer, c.Request)
			return
		}
		body, err := json.Marshal(def)
		if err != nil {
			WriteError(c.Writer, err)
			return
		}
		c.Header("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
		c.Status(http.StatusOK)
		_, _ = c.Writer.Write(body)
	}
}
