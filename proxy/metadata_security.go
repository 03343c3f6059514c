package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// SMART extension and coding declared in CapabilityStatement.rest.security.
const (
	OAuthURIsExtension    = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
	SecurityServiceSystem = "http://terminology.hl7.org/CodeSystem/restful-security-service"
	SecurityServiceSMART  = "SMART-on-FHIR"
)

// maxMetadataBuffer bounds the CapabilityStatement buffered for augmenting.
const maxMetadataBuffer = 16 << 20

// AddSMARTSecurity declares SMART on FHIR in a decoded CapabilityStatement:
// rest[0].security gets the service coding SMART-on-FHIR (system
// restful-security-service) and, when tokenURL is not empty, the oauth-uris
// extension with a "token" valueUri (replacing an oauth-uris extension the
// upstream declared). Other security content is kept. A statement without
// rest gets one rest entry in server mode.
func AddSMARTSecurity(cs map[string]any, tokenURL string) {
	// The server-mode rest entry, where the bulk operations are declared
	// too (clients look for the oauth-uris there).
	rest := serverRest(cs)
	sec, _ := rest["security"].(map[string]any)
	if sec == nil {
		sec = map[string]any{}
		rest["security"] = sec
	}

	services, _ := sec["service"].([]any)
	hasSMART := false
	for _, s := range services {
		cc, _ := s.(map[string]any)
		codings, _ := cc["coding"].([]any)
		for _, c := range codings {
			cm, _ := c.(map[string]any)
			if cm["system"] == SecurityServiceSystem && cm["code"] == SecurityServiceSMART {
				hasSMART = true
			}
		}
	}
	if !hasSMART {
		sec["service"] = append(services, map[string]any{
			"coding": []any{map[string]any{"system": SecurityServiceSystem, "code": SecurityServiceSMART}},
			"text":   "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
		})
	}

	if tokenURL == "" {
		return
	}
	exts, _ := sec["extension"].([]any)
	kept := exts[:0:0]
	for _, e := range exts {
		if em, _ := e.(map[string]any); em != nil && em["url"] == OAuthURIsExtension {
			continue
		}
		kept = append(kept, e)
	}
	sec["extension"] = append(kept, map[string]any{
		"url": OAuthURIsExtension,
		"extension": []any{
			map[string]any{"url": "token", "valueUri": tokenURL},
		},
	})
}

// metadata serves GET/HEAD [base]/metadata: the pass-through's augmented
// CapabilityStatement, plus the SMART security declaration when inbound
// authorization is on (the statement is small, so it is buffered).
func (h *handlers) metadata(pt *PassThrough) gin.HandlerFunc {
	return func(c *gin.Context) {
		r := c.Request
		if !h.sec.on {
			pt.ServeMetadata(c.Writer, r)
			return
		}
		tokenURL := h.tokenURL(h.requestBase(r))
		head := r.Method == http.MethodHead
		if head {
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		bw := &bufferedWriter{header: http.Header{}}
		pt.ServeMetadata(bw, r)
		body := bw.buf.Bytes()
		if bw.status == 0 {
			bw.status = http.StatusOK
		}
		if bw.status == http.StatusOK && !bw.overflow && strings.Contains(bw.header.Get("Content-Type"), "json") {
			var cs map[string]any
			if json.Unmarshal(body, &cs) == nil && cs["resourceType"] == "CapabilityStatement" {
				AddSMARTSecurity(cs, tokenURL)
				var out bytes.Buffer
				enc := json.NewEncoder(&out)
				enc.SetEscapeHTML(false)
				if err := enc.Encode(cs); err == nil {
					body = out.Bytes()
				}
			}
		}
		if bw.overflow {
			h.log.Error().Msg("CapabilityStatement too large to add the security declaration")
			WriteOutcome(c.Writer, http.StatusBadGateway, fhir.IssueTypeTooCostly, "the upstream CapabilityStatement is too large")
			return
		}
		hdr := c.Writer.Header()
		for k, vs := range bw.header {
			hdr[k] = vs
		}
		hdr.Set("Content-Length", strconv.Itoa(len(body)))
		c.Writer.WriteHeader(bw.status)
		if !head {
			_, _ = c.Writer.Write(body)
		}
	}
}

// bufferedWriter is an http.ResponseWriter that keeps the response in
// memory (up to maxMetadataBuffer bytes).
type bufferedWriter struct {
	header   http.Header
	status   int
	buf      bytes.Buffer
	overflow bool
}

func (b *bufferedWriter) Header() http.Header { return b.header }

func (b *bufferedWriter) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	if b.buf.Len()+len(p) > maxMetadataBuffer {
		b.overflow = true
		return len(p), nil
	}
	return b.buf.Write(p)
}
