package exporter

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	// The client waits for these checks: their upstream requests do not
	// queue behind the running jobs' searches.
	ctx = Urgent(ctx)
	members, err := s.checkPatients(ctx, up, &req)
	if err != nil {
		return nil, err
	}
	notes, err := s.checkTypes(ctx, up, &req)
	if err != nil {
		return nil, err
	}
	if err := s.checkTypeFilters(ctx, up, &req, members); err != nil {
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
		Notes:           notes,
	}
	// The limits hold across the cluster: their check and the creation
	// are one step under the cluster-wide submit lock.
	err = s.opts.Cluster.Locked(ctx, LockSubmit, func(ctx context.Context) error {
		if err := s.checkActive(ctx, req.ClientID); err != nil {
			return err
		}
		return s.opts.Store.Create(ctx, job)
	})
	if err != nil {
		return nil, err
	}
	s.log.Info().Str("job_id", job.ID).Str("export_level", string(req.Level)).Bool("group", req.GroupID != "").
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
	// Without a client identity (inbound authorization off and no
	// gateway header) every caller would be the same client: the
	// per-client limit then does not apply, only MaxActive.
	if clientID != "" && s.opts.MaxActivePerClient >= 0 && mine >= s.opts.MaxActivePerClient {
		return Errorf(ETHROTTLED, "this client already has %d export(s) in progress (at most %d); wait for it to finish or delete it", mine, s.opts.MaxActivePerClient)
	}
	if s.opts.MaxActive >= 0 && len(active) >= s.opts.MaxActive {
		return Errorf(ETHROTTLED, "the server has %d exports in progress (at most %d); try again later", len(active), s.opts.MaxActive)
	}
	return nil
}

// checkPatients checks the Group, the patient parameter and the patient
// limit, and returns the export's patients when the kick-off had to read
// them anyway (nil for all patients).
func (s *Service) checkPatients(ctx context.Context, up Upstream, req *Request) ([]string, error) {
	var count int
	var members []string
	switch req.Level {
	case LevelGroup:
		var err error
		if members, err = s.groupMembers(ctx, up, req); err != nil {
			return nil, err
		}
		count = len(members)
		if len(req.Patients) > 0 {
			in := make(map[string]bool, len(members))
			for _, m := range members {
				in[m] = true
			}
			for _, p := range req.Patients {
				if !in[p] {
					return nil, &Error{Kind: EINVALID, Param: "patient", Message: fmt.Sprintf("Patient/%s is not a member of Group/%s", p, req.GroupID)}
				}
			}
			members, count = req.Patients, len(req.Patients)
		}
	case LevelPatient:
		if len(req.Patients) == 0 {
			if s.opts.MaxPatients <= 0 {
				return nil, nil
			}
			n, ok, err := countOf(ctx, up, "Patient", nil)
			if err != nil {
				return nil, err
			}
			if ok {
				count = n
			}
			break
		}
		found, err := existingPatients(ctx, up, req.Patients, s.opts.BatchSize)
		if err != nil {
			return nil, err
		}
		for _, p := range req.Patients {
			if !found[p] {
				return nil, &Error{Kind: EINVALID, Param: "patient", Message: fmt.Sprintf("Patient/%s does not exist on the upstream server", p)}
			}
		}
		members, count = req.Patients, len(req.Patients)
	default:
		return nil, nil
	}
	if s.opts.MaxPatients > 0 && count > s.opts.MaxPatients {
		return nil, &Error{Kind: ETOOLARGE, Message: fmt.Sprintf("the export covers %d patients; this server exports at most %d at once (use the patient parameter or a smaller Group)", count, s.opts.MaxPatients)}
	}
	return members, nil
}

// probePatients bounds the patients a _typeFilter probe names.
const probePatients = 50

// checkTypeFilters checks every _typeFilter with one bounded request each,
// never a scan of the server: a search parameter the upstream does not
// declare for the type (where it declares any), or that its answer's self
// link leaves out (servers that ignore unknown parameters return everything
// or nothing), is an error, or with lenient handling the filter is dropped
// and reported in the error file; a query the upstream rejects is refused
// (422). The probe asks for one resource (_count=1), restricted to a few of
// the export's patients at Group and Patient level.
func (s *Service) checkTypeFilters(ctx context.Context, up Upstream, req *Request, members []string) error {
	if len(req.TypeFilters) == 0 {
		return nil
	}
	caps, err := up.Capabilities(ctx)
	if err != nil {
		caps = nil // nothing declared: only the self links tell
	}
	refuse := func(t, f string, names []string, why string) error {
		slices.Sort(names)
		msg := fmt.Sprintf("_typeFilter %s?%s uses %s, which the upstream server %s", t, unescapeCommas(f),
			strings.Join(names, ", "), why)
		if req.Lenient {
			req.Ignored = append(req.Ignored, msg+"; the filter was ignored (Prefer: handling=lenient)")
			return nil
		}
		return &Error{Kind: EINVALID, Param: "_typeFilter", Message: msg}
	}
	types := make([]string, 0, len(req.TypeFilters))
	for t := range req.TypeFilters {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		var kept []string
		for _, f := range req.TypeFilters[t] {
			params, err := url.ParseQuery(f)
			if err != nil {
				return &Error{Kind: EINVALID, Param: "_typeFilter", Message: fmt.Sprintf("_typeFilter %s?%s is malformed", t, f)}
			}
			if declared := caps.Params(t); len(declared) > 0 {
				var unknown []string
				for name := range params {
					if b := BaseParam(name); !strings.HasPrefix(b, "_") && !slices.Contains(declared, b) {
						unknown = append(unknown, name)
					}
				}
				if len(unknown) > 0 {
					if err := refuse(t, f, unknown, "does not declare for "+t); err != nil {
						return err
					}
					continue
				}
			}
			probe := url.Values{}
			for k, v := range params {
				probe[k] = v
			}
			probe.Set("_count", "1")
			if cp, ok := CompartmentParam(t); ok && len(members) > 0 && req.Level != LevelSystem {
				probe.Set(cp, strings.Join(members[:min(len(members), probePatients)], ","))
			}
			page, err := firstPage(ctx, up, t, probe)
			if st := UpstreamStatus(err); st >= 400 && st < 500 && st != http.StatusTooManyRequests {
				return &Error{Kind: EUNPROCESSABLE, Param: "_typeFilter", Err: err,
					Message: fmt.Sprintf("the upstream server rejected _typeFilter %s?%s", t, unescapeCommas(f))}
			}
			if err != nil {
				return err
			}
			if dropped := DroppedParams(page.Self, params); len(dropped) > 0 {
				if err := refuse(t, f, dropped, "ignored (the self link of its answer leaves it out)"); err != nil {
					return err
				}
				continue
			}
			kept = append(kept, f)
		}
		if len(kept) == 0 {
			delete(req.TypeFilters, t)
		} else {
			req.TypeFilters[t] = kept
		}
	}
	return nil
}

func unescapeCommas(f string) string { return strings.ReplaceAll(f, "%2C", ",") }
