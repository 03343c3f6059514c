package proxy

import (
	"encoding/json"
	"net/http"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// ContentTypeFHIRJSON is the media type of FHIR JSON responses.
const ContentTypeFHIRJSON = "application/fhir+json"

// Outcome builds an OperationOutcome with one issue.
func Outcome(severity fhir.IssueSeverity, code fhir.IssueType, diagnostics string) fhir.OperationOutcome {
	d := diagnostics
	return fhir.OperationOutcome{Issue: []fhir.OperationOutcomeIssue{{
		Severity:    severity,
		Code:        code,
		Diagnostics: &d,
	}}}
}

// WriteOutcome writes an OperationOutcome with one error issue and the
// given status.
func WriteOutcome(w http.ResponseWriter, status int, code fhir.IssueType, diagnostics string) {
	writeOutcome(w, status, Outcome(fhir.IssueSeverityError, code, diagnostics))
}

func writeOutcome(w http.ResponseWriter, status int, oo fhir.OperationOutcome) {
	body, err := json.Marshal(oo)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// StatusOf maps an error to its HTTP status and FHIR issue type. It is the
// one place where error kinds meet HTTP.
func StatusOf(err error) (int, fhir.IssueType) {
	switch exporter.ErrorKind(err) {
	case exporter.EINVALID:
		return http.StatusBadRequest, fhir.IssueTypeInvalid
	case exporter.ENOTFOUND:
		return http.StatusNotFound, fhir.IssueTypeNotFound
	case exporter.ECONFLICT:
		return http.StatusConflict, fhir.IssueTypeConflict
	case exporter.EFORBIDDEN:
		return http.StatusForbidden, fhir.IssueTypeForbidden
	case exporter.ETHROTTLED:
		return http.StatusTooManyRequests, fhir.IssueTypeThrottled
	case exporter.EUNPROCESSABLE:
		return http.StatusUnprocessableEntity, fhir.IssueTypeInvalid
	case exporter.ETOOLARGE:
		return http.StatusRequestEntityTooLarge, fhir.IssueTypeTooCostly
	case exporter.ENOTACCEPTABLE:
		return http.StatusNotAcceptable, fhir.IssueTypeNotSupported
	case exporter.EUNAVAILABLE:
		return http.StatusServiceUnavailable, fhir.IssueTypeTransient
	case exporter.EUPSTREAM:
		return http.StatusBadGateway, fhir.IssueTypeTransient
	case exporter.ETIMEOUT:
		return http.StatusGatewayTimeout, fhir.IssueTypeTimeout
	}
	return http.StatusInternalServerError, fhir.IssueTypeException
}

// WriteError writes err as an OperationOutcome with the status its kind maps
// to. Internal errors show a generic message; details belong in the log.
func WriteError(w http.ResponseWriter, err error) {
	status, code := StatusOf(err)
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "10")
	}
	WriteOutcome(w, status, code, exporter.ErrorMessage(err))
}
