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
		rtype:  resourceType,
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
	r := &request{method: http.MethodGet, url: c.baseStr + "/" + resourceType + "/_history", what: "history " + resourceType, rtype: resourceType}
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
	r := &request{method: http.MethodGet, url: nextURL, what: "search " + resourceType + " (resumed)", rtype: resourceType}
	return c.follow(ctx, r, resourceType, 1, fn)
}

// follow fetches the page of r and the pages after it, calling fn for each.
func (c *Client) follow(ctx context.Context, r *request, resourceType string, n int, fn func(*exporter.Page) error) error {
	for ; ; n++ {
		var entries []exporter.Entry
		var next string
		var meta bundleMeta
		err := c.do(ctx, r, func(body *bodyReader) error {
			var err error
			meta = bundleMeta{}
			entries, next, err = decodePage(body, &meta)
			return err
		})
		if err != nil {
			return err
		}
		c.pages.Add(1)

		page := &exporter.Page{Entries: entries, Total: meta.total, HasTotal: meta.hasTotal, Self: meta.self}
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
			rtype:  resourceType,
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

// resourceHead is the part of a resource Search needs.
type resourceHead struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
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
			searchable := len(res.Interaction) == 0
			for _, in := range res.Interaction {
				switch in.Code {
				case "history-type":
					if caps.History == nil {
						caps.History = map[string]bool{}
					}
					caps.History[res.Type] = true
				case "search-type":
					searchable = true
				}
			}
			if !searchable {
				if caps.NotSearchable == nil {
					caps.NotSearchable = map[string]bool{}
				}
				caps.NotSearchable[res.Type] = true
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
