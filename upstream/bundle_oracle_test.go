package upstream

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// oracleEntry is the part of a Bundle entry decodeBundleOracle needs.
type oracleEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Search   *struct {
		Mode string `json:"mode"`
	} `json:"search"`
	Request *struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
}

// decodeBundleOracle is the json.Decoder-based decodeBundle this package used
// before its own scanner, kept as the oracle of the differential and fuzz
// tests. It streams a searchset Bundle: it copies each entry's resource
// compacted to one line and returns the entries and the next link. JSON and
// read errors are returned as they are (the caller retries them); a Bundle
// of the wrong kind is an *exporter.Error.
//
// A history Bundle is accepted too: its entries carry request.method and
// request.url, and deletions (no resource) are kept as entries with
// Method "DELETE". total receives Bundle.total when present.
func decodeBundleOracle(r io.Reader, total *int) ([]exporter.Entry, string, error) {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return nil, "", err
	}
	var (
		rt, typ, next string
		entries       []exporter.Entry
		ends          []int
		arena         bytes.Buffer
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, "", unexpected(err)
		}
		key, _ := tok.(string)
		switch key {
		case "resourceType":
			if err := dec.Decode(&rt); err != nil {
				return nil, "", unexpected(err)
			}
			if rt != "Bundle" {
				return nil, "", exporter.Errorf(exporter.EUPSTREAM,
					"the upstream answered a search with a %s, not a Bundle", clip(rt, 64))
			}
		case "type":
			if err := dec.Decode(&typ); err != nil {
				return nil, "", unexpected(err)
			}
		case "total":
			if err := dec.Decode(total); err != nil {
				return nil, "", unexpected(err)
			}
		case "link":
			var links []struct {
				Relation string `json:"relation"`
				URL      string `json:"url"`
			}
			if err := dec.Decode(&links); err != nil {
				return nil, "", unexpected(err)
			}
			for _, l := range links {
				if l.Relation == "next" && l.URL != "" {
					next = l.URL
					break
				}
			}
		case "entry":
			tok, err := dec.Token()
			if err != nil {
				return nil, "", unexpected(err)
			}
			if tok == nil { // "entry": null
				continue
			}
			if d, ok := tok.(json.Delim); !ok || d != '[' {
				return nil, "", exporter.Errorf(exporter.EUPSTREAM, "the upstream's Bundle.entry is not an array")
			}
			for dec.More() {
				var be oracleEntry
				if err := dec.Decode(&be); err != nil {
					return nil, "", unexpected(err)
				}
				if len(be.Resource) == 0 || string(be.Resource) == "null" {
					if be.Request != nil && strings.EqualFold(be.Request.Method, "DELETE") {
						ends = append(ends, arena.Len())
						entries = append(entries, exporter.Entry{Method: "DELETE", URL: be.Request.URL})
					}
					continue
				}
				var head resourceHead
				if err := json.Unmarshal(be.Resource, &head); err != nil || head.ResourceType == "" {
					return nil, "", exporter.Errorf(exporter.EUPSTREAM,
						"entry %d of the upstream's Bundle has a resource without a resourceType", len(entries)+1)
				}
				if err := json.Compact(&arena, be.Resource); err != nil {
					return nil, "", err
				}
				ends = append(ends, arena.Len())
				e := exporter.Entry{ResourceType: head.ResourceType, ID: head.ID}
				if be.Search != nil {
					e.Mode = be.Search.Mode
				}
				if be.Request != nil {
					e.Method, e.URL = strings.ToUpper(be.Request.Method), be.Request.URL
				}
				entries = append(entries, e)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return nil, "", unexpected(err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, "", unexpected(err)
			}
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, "", unexpected(err)
	}
	if rt != "Bundle" {
		return nil, "", exporter.Errorf(exporter.EUPSTREAM, "the upstream answered a search without a Bundle")
	}
	if typ != "searchset" && typ != "history" {
		return nil, "", exporter.Errorf(exporter.EUPSTREAM,
			"the upstream answered a search with a Bundle of type %q, not searchset", clip(typ, 64))
	}
	buf := arena.Bytes()
	start := 0
	for i, end := range ends {
		entries[i].Resource = buf[start:end:end]
		start = end
	}
	return entries, next, nil
}
