// Package bulkclient is a small FHIR Bulk Data client: kick-off, polling
// with Retry-After, downloads and checks of the files. The demo and the
// end-to-end tests drive the proxy through it, over real HTTP, like any
// client would. It knows nothing of the proxy's internals.
package bulkclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one Bulk Data server. The zero value is usable.
type Client struct {
	// HTTP sends the requests (default http.DefaultClient).
	HTTP *http.Client
	// Header is added to every request (e.g. Authorization).
	Header http.Header
	// MaxWait caps a wait between polls (default 30s).
	MaxWait time.Duration
	// OnProgress, when set, is called with X-Progress after every poll
	// that answers 202.
	OnProgress func(progress string)
}

// Manifest is a complete export's manifest.
type Manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	OutputOrganizedBy   string         `json:"outputOrganizedBy,omitempty"`
	Output              []File         `json:"output"`
	Deleted             []File         `json:"deleted,omitempty"`
	Error               []File         `json:"error"`
	Extension           map[string]any `json:"extension,omitempty"`
	// Link holds the next page of a paged manifest (allowPartialManifests).
	Link []Link `json:"link,omitempty"`
}

// Link is a manifest link.
type Link struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// File is one manifest entry.
type File struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count"`
}

// StatusError is a non-success answer of the server.
type StatusError struct {
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("server answered %d: %s", e.Status, e.Body)
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) newRequest(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, vs := range c.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	return req, nil
}

func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &StatusError{Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
}

// KickOff starts an export with GET kickoffURL?params and returns the status
// URL from Content-Location.
func (c *Client) KickOff(ctx context.Context, kickoffURL string, params url.Values) (string, error) {
	u := kickoffURL
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := c.newRequest(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, err := c.http().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", statusError(resp)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	loc := resp.Header.Get("Content-Location")
	if loc == "" {
		return "", fmt.Errorf("kick-off answered 202 without Content-Location")
	}
	return loc, nil
}

// Wait polls the status URL until the export completes or fails, waiting
// as the server's Retry-After says (exponential backoff when it says
// nothing).
func (c *Client) Wait(ctx context.Context, statusURL string) (*Manifest, error) {
	maxWait := c.MaxWait
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	backoff := 500 * time.Millisecond
	for {
		req, err := c.newRequest(ctx, http.MethodGet, statusURL, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := c.http().Do(req)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			var m Manifest
			err := json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("decode manifest: %w", err)
			}
			return &m, nil
		case http.StatusAccepted, http.StatusTooManyRequests:
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if c.OnProgress != nil && resp.StatusCode == http.StatusAccepted {
				c.OnProgress(resp.Header.Get("X-Progress"))
			}
			wait := backoff
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
				wait = time.Duration(s) * time.Second
			} else {
				backoff = min(backoff*2, maxWait)
			}
			wait = min(wait, maxWait)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		default:
			err := statusError(resp)
			resp.Body.Close()
			return nil, err
		}
	}
}

// Delete sends DELETE to the status URL.
func (c *Client) Delete(ctx context.Context, statusURL string) error {
	req, err := c.newRequest(ctx, http.MethodDelete, statusURL, nil)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return statusError(resp)
	}
	return nil
}

// Download fetches a file and calls fn for every line (without the newline;
// the slice is only valid during the call).
func (c *Client) Download(ctx context.Context, fileURL string, fn func(line []byte) error) error {
	req, err := c.newRequest(ctx, http.MethodGet, fileURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/fhir+ndjson")
	resp, err := c.http().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// Export is what Collect gathered: resources by type and id, and problems.
type Export struct {
	// Resources maps type -> id -> the line as served.
	Resources map[string]map[string][]byte
	// Errors holds the lines of the error files.
	Errors [][]byte
	// Problems lists every check that failed: invalid JSON, a line whose
	// resourceType differs from the file's type, a duplicate (type, id), a
	// count that differs from the manifest's.
	Problems []string
}

// Collect downloads every output and error file of a manifest and checks
// each line.
func (c *Client) Collect(ctx context.Context, m *Manifest) (*Export, error) {
	ex := &Export{Resources: map[string]map[string][]byte{}}
	for _, f := range m.Output {
		var n int64
		err := c.Download(ctx, f.URL, func(line []byte) error {
			n++
			var head struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
			}
			if err := json.Unmarshal(line, &head); err != nil {
				ex.Problems = append(ex.Problems, fmt.Sprintf("%s: line %d is not JSON: %v", f.URL, n, err))
				return nil
			}
			if head.ResourceType != f.Type {
				ex.Problems = append(ex.Problems, fmt.Sprintf("%s: line %d is a %s in a %s file", f.URL, n, head.ResourceType, f.Type))
			}
			byID := ex.Resources[head.ResourceType]
			if byID == nil {
				byID = map[string][]byte{}
				ex.Resources[head.ResourceType] = byID
			}
			if _, dup := byID[head.ID]; dup {
				ex.Problems = append(ex.Problems, fmt.Sprintf("duplicate %s/%s", head.ResourceType, head.ID))
			}
			byID[head.ID] = bytes.Clone(line)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("download %s: %w", f.URL, err)
		}
		if f.Count != 0 && f.Count != n {
			ex.Problems = append(ex.Problems, fmt.Sprintf("%s: manifest count %d, file has %d lines", f.URL, f.Count, n))
		}
	}
	for _, f := range m.Error {
		err := c.Download(ctx, f.URL, func(line []byte) error {
			ex.Errors = append(ex.Errors, bytes.Clone(line))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("download %s: %w", f.URL, err)
		}
	}
	return ex, nil
}
