package exporter

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Submit validates what only the upstream and the job list can tell (the
// Group and the patients exist, the types are supported, the _typeFilter
// queries are accepted, the limits hold), then creates and persists a
// queued job.
func (s *Service) Submit(ctx context.Context, req Request) (*Job, error) {
	if s.Draining() {
		return nil, Errorf(EUNAVAILABLE, "the server is shutting down; try again shortly")
	}
	up, err := s.opts.UpstreamFor(req.PathVars)
	if err != nil {
		return nil, err
	}
	if err := s.checkPatients(ctx, up, &req); err != nil {
		return nil, err
	}
	if err := s.checkTypes(ctx, up, &req); err != nil {
		return nil, err
	}
	if err := checkTypeFilters(ctx, up, &req); err != nil {
		return nil, err
	}
	now := s.opts.Now().UTC()
	tt := now.Truncate(time.Millisecond)
	if req.Until != nil && req.Until.Before(tt) {
		tt = req.Until.UTC()
	}
	job := &Job{
		ID:              NewID(),
		State:           StateQueued,
		Request:         req,
		TransactionTime: tt,
		CreatedAt:       now,
		UpdatedAt:       now,
		Reason:          "submitted",
	}
	s.submitMu.Lock()
	err = s.checkActive(ctx, req.ClientID)
	if err == nil {
		err = s.opts.Store.Create(ctx, job)
	}
	s.submitMu.Unlock()
	if err != nil {
		return nil, err
	}
	s.log.Info().Str("job_id", job.ID).Str("level", string(req.Level)).Str("group", req.GroupID).
		Strs("types", req.Types).Msg("export job queued")
	s.notify()
	return job, nil
}

// checkActive enforces the limits on queued and running jobs.
func (s *Service) checkActive(ctx context.Context, clientID string) error {
	if s.opts.MaxActive < 0 && s.opts.MaxActivePerClient < 0 {
		return nil
	}
	active, err := s.opts.Store.List(ctx, StateQueued, StateRunning)
	if err != nil {
		return err
	}
	mine := 0
	for _, j := range active {
		if j.Request.ClientID == clientID && !j.Deleted {
			mine++
		}
	}
	if s.opts.MaxActivePerClient >= 0 && mine >= s.opts.MaxActivePerClient {
		return Errorf(ETHROTTLED, "this client already has %d export(s) in progress (at most %d); wait for it to finish or delete it", mine, s.opts.MaxActivePerClient)
	}
	if s.opts.MaxActive >= 0 && len(active) >= s.opts.MaxActive {
		return Errorf(ETHROTTLED, "the server has %d exports in progress (at most %d); try again later", len(active), s.opts.MaxActive)
	}
	return nil
}

// checkPatients checks the Group, the patient parameter and the patient
// limit.
func (s *Service) checkPatients(ctx context.Context, up Upstream, req *Request) error {
	var count int
	switch req.Level {
	case LevelGroup:
		members, err := readGroup(ctx, up, req.GroupID)
		if err != nil {
			return err
		}
		count = len(members)
		if len(req.Patients) > 0 {
			in := make(map[string]bool, len(members))
			for _, m := range members {
				in[m] = true
			}
			for _, p := range req.Patients {
				if !in[p] {
					return &Error{Kind: EINVALID, Param: "patient", Message: fmt.Sprintf("Patient/%s is not a member of Group/%s", p, req.GroupID)}
				}
			}
			count = len(req.Patients)
		}
	case LevelPatient:
		if len(req.Patients) == 0 {
			n, err := countPatients(ctx, up)
			if err != nil {
				return err
			}
			count = n
			break
		}
		found, err := existingPatients(ctx, up, req.Patients, s.opts.BatchSize)
		if err != nil {
			return err
		}
		for _, p := range req.Patients {
			if !found[p] {
				return &Error{Kind: EINVALID, Param: "patient", Message: fmt.Sprintf("Patient/%s does not exist on the upstream server", p)}
			}
		}
		count = len(req.Patients)
	default:
		return nil
	}
	if s.opts.MaxPatients > 0 && count > s.opts.MaxPatients {
		return &Error{Kind: ETOOLARGE, Message: fmt.Sprintf("the export covers %d patients; this server exports at most %d at once (use the patient parameter or a smaller Group)", count, s.opts.MaxPatients)}
	}
	return nil
}

// countPatients asks the upstream how many patients it has (0 when it does
// not say).
func countPatients(ctx context.Context, up Upstream) (int, error) {
	total := 0
	err := up.Search(ctx, "Patient", url.Values{"_summary": {"count"}}, func(p *Page) error {
		total = p.Total
		return nil
	})
	return total, err
}

// checkTypeFilters runs every _typeFilter once as a count search, so that a
// query the upstream rejects is refused at kick-off (422) instead of
// failing the job.
func checkTypeFilters(ctx context.Context, up Upstream, req *Request) error {
	for t, filters := range req.TypeFilters {
		for _, f := range filters {
			params, err := url.ParseQuery(f)
			if err != nil {
				return &Error{Kind: EINVALID, Param: "_typeFilter", Message: fmt.Sprintf("_typeFilter %s?%s is malformed", t, f)}
			}
			params.Set("_summary", "count")
			err = up.Search(ctx, t, params, func(*Page) error { return nil })
			if st := UpstreamStatus(err); st >= 400 && st < 500 && st != http.StatusTooManyRequests {
				return &Error{Kind: EUNPROCESSABLE, Param: "_typeFilter", Err: err,
					Message: fmt.Sprintf("the upstream server rejected _typeFilter %s?%s", t, strings.ReplaceAll(f, "%2C", ","))}
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
