package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Search runs resourceType?params against the upstream and calls fn with
// every page, in order.
//
// The first request is GET {base}/{type}?{params} when that URL is at most
// MaxURLLength long, else POST {base}/{type}/_search with the params as a
// form body. Next links (relation "next") are then followed with GET: a
// relative link is resolved against the base; an absolute one must have the
// base's scheme, host and port, otherwise the search stops with an EUPSTREAM
// error after fn has seen the page (the link is never requested). Page.Next
// holds the resolved next link ("" on the last page; the raw link when it
// is refused).
//
// Each page is fetched (with retries) and fully decoded before fn is called;
// no concurrency slot is held while fn runs. An error from fn stops the
// search and is returned unchanged. An answer that is not a searchset Bundle
// is an EUPSTREAM error; a non-success status is an EUPSTREAM error wrapping
// an *exporter.StatusError (so a 404 or 410 on a next link, an expired
// paging cursor, is visible through exporter.UpstreamStatus).
func (c *Client) Search(ctx context.Context, resourceType string, params url.Values, fn func(*exporter.Page) error) error {
	if err := checkType(resourceType); err != nil {
		return err
	}
	if fn == nil {
		return exporter.Errorf(exporter.EINTERNAL, "upstream search without a page function")
	}
	enc := params.Encode()
	r := &request{
		method: http.MethodGet,
		url:    c.baseStr + "/" + resourceType,
		what:   "search " + resourceType,
	}
	if enc != "" {
		r.url += "?" + enc
	}
	if c.maxURL > 0 && len(r.url) > c.maxURL {
		r.method = http.MethodPost
		r.url = c.baseStr + "/" + resourceType + "/_search"
		r.form = enc
	}
	return c.follow(ctx, r, resourceType, 1, fn)
}

// History pages through [type]/_history with the params (such as _since),
// with the rules of Search for paging and errors; deletions arrive as
// entries with Method "DELETE".
func (c *Client) History(ctx context.Context, resourceType string, params url.Values, fn func(*exporter.Page) error) error {
	if err := checkType(resourceType); err != nil {
		return err
	}
	if fn == nil {
		return exporter.Errorf(exporter.EINTERNAL, "upstream history without a page function")
	}
	r := &request{method: http.MethodGet, url: c.baseStr + "/" + resourceType + "/_history", what: "history " + resourceType}
	if enc := params.Encode(); enc != "" {
		r.url += "?" + enc
	}
	return c.follow(ctx, r, resourceType, 1, fn)
}

// SearchNext continues a search of resourceType from a next link that an
// earlier page returned (a checkpoint), with the same rules as Search. The
// link must be on the upstream's origin.
func (c *Client) SearchNext(ctx context.Context, resourceType, next string, fn func(*exporter.Page) error) error {
	if err := checkType(resourceType); err != nil {
		return err
	}
	if fn == nil {
		return exporter.Errorf(exporter.EINTERNAL, "upstream search without a page function")
	}
	nextURL, err := c.resolveNext(next, resourceType)
	if err != nil {
		return err
	}
	r := &request{method: http.MethodGet, url: nextURL, what: "search " + resourceType + " (resumed)"}
	return c.follow(ctx, r, resourceType, 1, fn)
}

// follow fetches the page of r and the pages after it, calling fn for each.
func (c *Client) follow(ctx context.Context, r *request, resourceType string, n int, fn func(*exporter.Page) error) error {
	for ; ; n++ {
		var entries []exporter.Entry
		var next string
		var total int
		err := c.do(ctx, r, func(body *bodyReader) error {
			var err error
			entries, next, err = decodeBundle(body, &total)
			return err
		})
		if err != nil {
			return err
		}
		c.pages.Add(1)

		page := &exporter.Page{Entries: entries, Total: total}
		var nextURL string
		var nextErr error
		if next != "" {
			nextURL, nextErr = c.resolveNext(next, resourceType)
			page.Next = nextURL
			if nextErr != nil {
				page.Next = next
			}
		}
		if err := fn(page); err != nil {
			return err
		}
		switch {
		case next == "":
			return nil
		case nextErr != nil:
			return nextErr
		case r.method == http.MethodGet && nextURL == r.url:
			return exporter.Errorf(exporter.EUPSTREAM,
				"the upstream's next link for search %s repeats the current page", resourceType)
		}
		r = &request{
			method: http.MethodGet,
			url:    nextURL,
			what:   "search " + resourceType + " (page " + strconv.Itoa(n+1) + ")",
		}
	}
}

// resolveNext resolves a next link against the base and refuses links that
// leave the upstream's origin (an SSRF guard).
func (c *Client) resolveNext(link, resourceType string) (string, error) {
	ref, err := url.Parse(link)
	if err != nil {
		return "", exporter.Errorf(exporter.EUPSTREAM,
			"the upstream's next link for search %s is not a URL", resourceType)
	}
	dir := *c.base
	dir.Path += "/"
	if dir.RawPath != "" {
		dir.RawPath += "/"
	}
	abs := dir.ResolveReference(ref)
	if !sameOrigin(abs, c.base) {
		return "", &exporter.Error{Kind: exporter.EUPSTREAM,
			Message: fmt.Sprintf("the upstream's next link for search %s left the upstream's origin; not followed", resourceType),
			Err:     fmt.Errorf("next link origin %s://%s is not %s://%s", abs.Scheme, abs.Host, c.base.Scheme, c.base.Host)}
	}
	// Same origin: spell it as the base does (case, default port, user info).
	abs.Scheme, abs.Host, abs.User = c.base.Scheme, c.base.Host, c.base.User
	abs.Fragment, abs.RawFragment = "", ""
	return abs.String(), nil
}

// bundleEntry is the part of a Bundle entry Search needs.
type bundleEntry struct {
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

// resourceHead is the part of a resource Search needs.
type resourceHead struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
}

// decodeBundle streams a searchset Bundle: it copies each entry's resource
// compacted to one line and returns the entries and the next link. JSON and
// read errors are returned as they are (the caller retries them); a Bundle
// of the wrong kind is an *exporter.Error.
//
// A history Bundle is accepted too: its entries carry request.method and
// request.url, and deletions (no resource) are kept as entries with
// Method "DELETE". total receives Bundle.total when present.
func decodeBundle(r io.Reader, total *int) ([]exporter.Entry, string, error) {
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
				var be bundleEntry
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

// decodeResource reads one resource of the wanted type and compacts it.
func decodeResource(r io.Reader, resourceType string) ([]byte, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var head resourceHead
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	if head.ResourceType != resourceType {
		return nil, exporter.Errorf(exporter.EUPSTREAM,
			"the upstream answered a read of %s with a %s", resourceType, clip(head.ResourceType, 64))
	}
	var out bytes.Buffer
	out.Grow(len(raw))
	if err := json.Compact(&out, raw); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// decodeCapabilities reads the types and search parameters of a
// CapabilityStatement (rest entries of mode "client" are ignored).
func decodeCapabilities(r io.Reader) (*exporter.Capabilities, error) {
	var cs struct {
		ResourceType string `json:"resourceType"`
		Rest         []struct {
			Mode     string `json:"mode"`
			Resource []struct {
				Type        string `json:"type"`
				SearchParam []struct {
					Name string `json:"name"`
				} `json:"searchParam"`
				Interaction []struct {
					Code string `json:"code"`
				} `json:"interaction"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.NewDecoder(r).Decode(&cs); err != nil {
		return nil, unexpected(err)
	}
	if cs.ResourceType != "CapabilityStatement" {
		return nil, exporter.Errorf(exporter.EUPSTREAM,
			"the upstream's /metadata answered a %q, not a CapabilityStatement", clip(cs.ResourceType, 64))
	}
	caps := &exporter.Capabilities{}
	for _, rest := range cs.Rest {
		if rest.Mode == "client" {
			continue
		}
		for _, res := range rest.Resource {
			if res.Type == "" {
				continue
			}
			if caps.Types == nil {
				caps.Types = map[string][]string{}
			}
			for _, in := range res.Interaction {
				if in.Code == "history-type" {
					if caps.History == nil {
						caps.History = map[string]bool{}
					}
					caps.History[res.Type] = true
				}
			}
			names := caps.Types[res.Type]
			if names == nil {
				names = []string{}
			}
		params:
			for _, sp := range res.SearchParam {
				if sp.Name == "" {
					continue
				}
				for _, have := range names {
					if have == sp.Name {
						continue params
					}
				}
				names = append(names, sp.Name)
			}
			caps.Types[res.Type] = names
		}
	}
	return caps, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return unexpected(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("expected %q, found %v", want, tok)
	}
	return nil
}

// unexpected turns an io.EOF inside a document into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
