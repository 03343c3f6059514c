package bulkclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// maxCohortBody bounds the answers read while creating a cohort.
const maxCohortBody = 4 << 20

// CreateCohort creates a Bulk Cohort Group (Bulk Data IG STU3) from a Group
// resource in JSON, with the FHIR asynchronous interaction pattern: POST
// [base]/Group with Prefer: respond-async, then polls the status URL
// (honouring Retry-After, backing off otherwise, up to MaxWait) until the
// batch-response Bundle arrives, and returns the id of the created Group.
// A server that creates synchronously (201 and Location) is taken as well.
// A refusal is an error carrying the server's OperationOutcome.
func (e *Exporter) CreateCohort(ctx context.Context, group []byte) (string, error) {
	e.init()
	if e.Base == "" {
		return "", errors.New("cohort: no base URL")
	}
	var probe struct {
		ResourceType string `json:"resourceType"`
	}
	if err := json.Unmarshal(group, &probe); err != nil || probe.ResourceType != "Group" {
		return "", errors.New("cohort: the file is not a JSON Group resource")
	}
	req, err := http.NewRequestWithContext(withAuth(ctx, true), http.MethodPost, strings.TrimSuffix(e.Base, "/")+"/Group", bytes.NewReader(group))
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, err := e.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("cohort create: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCohortBody))
		return groupID(resp.Header.Get("Location"))
	case http.StatusAccepted:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCohortBody))
		loc := resp.Header.Get("Content-Location")
		if loc == "" {
			return "", errors.New("cohort create: the server answered 202 without Content-Location")
		}
		abs, err := resp.Request.URL.Parse(loc)
		if err != nil {
			return "", fmt.Errorf("cohort create: invalid Content-Location %q", loc)
		}
		return e.pollCohort(ctx, abs.String())
	}
	return "", outcomeError("cohort create", resp)
}

// pollCohort polls the status URL of an asynchronous Group create.
func (e *Exporter) pollCohort(ctx context.Context, statusURL string) (string, error) {
	bo := newBackoff(time.Second, e.maxWait())
	failures := 0
	for {
		req, err := http.NewRequestWithContext(withAuth(ctx, true), http.MethodGet, statusURL, nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Accept", "application/fhir+json")
		resp, err := e.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			if failures++; failures > e.retries() {
				return "", fmt.Errorf("cohort status: %w", err)
			}
			if err := e.wait(ctx, bo.step()); err != nil {
				return "", err
			}
			continue
		}
		switch {
		case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusTooManyRequests ||
			resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
			if resp.StatusCode != http.StatusAccepted {
				if failures++; failures > e.retries() {
					oe := outcomeError("cohort status", resp)
					resp.Body.Close()
					return "", oe
				}
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCohortBody))
			resp.Body.Close()
			wait, ok := retryAfter(resp.Header, time.Now())
			if !ok {
				wait = bo.step()
			}
			if err := e.wait(ctx, min(wait, e.maxWait())); err != nil {
				return "", err
			}
			continue
		case resp.StatusCode == http.StatusOK:
			body, err := io.ReadAll(io.LimitReader(resp.Body, maxCohortBody))
			resp.Body.Close()
			if err != nil {
				return "", fmt.Errorf("cohort status: %w", err)
			}
			return cohortCompletion(body)
		default:
			oe := outcomeError("cohort status", resp)
			resp.Body.Close()
			return "", oe
		}
	}
}

// cohortCompletion reads the batch-response Bundle that completes an
// asynchronous create: its one entry's response says 201 and where the
// Group is, or carries the refusal.
func cohortCompletion(body []byte) (string, error) {
	var b struct {
		ResourceType string `json:"resourceType"`
		Type         string `json:"type"`
		Entry        []struct {
			Response struct {
				Status   string          `json:"status"`
				Location string          `json:"location"`
				Outcome  json.RawMessage `json:"outcome"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "batch-response" || len(b.Entry) != 1 {
		return "", fmt.Errorf("cohort status: the completion is not a batch-response Bundle with one entry")
	}
	r := b.Entry[0].Response
	if !strings.HasPrefix(r.Status, "201") {
		msg := r.Status
		if d := diagnostics(r.Outcome); d != "" {
			msg += ": " + d
		}
		return "", fmt.Errorf("cohort create refused: %s", msg)
	}
	return groupID(r.Location)
}

// diagnostics returns the diagnostics of an OperationOutcome's issues.
func diagnostics(oo json.RawMessage) string {
	var o struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if json.Unmarshal(oo, &o) != nil {
		return ""
	}
	var ds []string
	for _, i := range o.Issue {
		if i.Diagnostics != "" {
			ds = append(ds, i.Diagnostics)
		}
	}
	return strings.Join(ds, "; ")
}

// groupID returns the id of a Group location ([base/]Group/id[/_history/v]).
func groupID(loc string) (string, error) {
	if i := strings.Index(loc, "/_history/"); i >= 0 {
		loc = loc[:i]
	}
	i := strings.LastIndex(loc, "Group/")
	if i < 0 || strings.Contains(loc[i+len("Group/"):], "/") || len(loc) == i+len("Group/") {
		return "", fmt.Errorf("cohort create: %q is not the location of a Group", loc)
	}
	return loc[i+len("Group/"):], nil
}
