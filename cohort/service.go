package cohort

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/rs/zerolog"
)

// Store persists held Groups. Implementations must be safe for concurrent
// use; cohorts handed in and out are copies.
type Store interface {
	// PutCohort creates or replaces a cohort (by ID).
	PutCohort(ctx context.Context, c *Cohort) error
	// GetCohort returns a cohort or exporter.ErrNotFound.
	GetCohort(ctx context.Context, id string) (*Cohort, error)
	// DeleteCohort removes a cohort; a missing one is not an error.
	DeleteCohort(ctx context.Context, id string) error
	// ListCohorts returns every cohort, in no particular order.
	ListCohorts(ctx context.Context) ([]*Cohort, error)
}

// Options configures a Service. Zero values take the documented defaults.
type Options struct {
	Store       Store
	UpstreamFor exporter.UpstreamFor
	Logger      zerolog.Logger
	// PageSize is the _count of member-filter searches (default 1000).
	PageSize int
	// Shared makes every cohort visible to every client (with the scopes
	// to read Groups); by default a cohort is visible to the client that
	// created it only.
	Shared bool
	// Timeout bounds the upstream checks of an asynchronous create
	// (default 2m).
	Timeout time.Duration
	// RejectedTTL is how long the outcome of a rejected asynchronous
	// create stays at its status URL (default 24h).
	RejectedTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Service creates, serves and evaluates the Groups the proxy holds. It
// implements exporter.Groups.
type Service struct {
	opts Options
	log  zerolog.Logger

	ctx    context.Context // cancelled by Stop: background creates end
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ exporter.Groups = (*Service)(nil)

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.UpstreamFor == nil {
		return nil, errors.New("cohort: Store and UpstreamFor are required")
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.RejectedTTL <= 0 {
		o.RejectedTTL = 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{opts: o, log: o.Logger, ctx: ctx, cancel: cancel}, nil
}

// Start resumes the asynchronous creates an earlier process left pending.
func (s *Service) Start(ctx context.Context) error {
	all, err := s.opts.Store.ListCohorts(ctx)
	if err != nil {
		return err
	}
	for _, c := range all {
		if c.State == StatePending {
			s.background(c)
		}
	}
	return nil
}

// Stop cancels the asynchronous creates in progress (they stay pending and
// resume at the next Start) and waits for them, or for ctx.
func (s *Service) Stop(ctx context.Context) error {
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Caller is who asks: the client ("" with inbound authorization off) and
// the mount's placeholder values (which select the upstream).
type Caller struct {
	ClientID string
	PathVars map[string]string
}

// visible reports whether the caller may see the cohort.
func (s *Service) visible(c *Cohort, clientID string) bool {
	return s.opts.Shared || c.ClientID == clientID
}

var errNotFound = &exporter.Error{Kind: exporter.ENOTFOUND, Message: "Group not found"}

// Create holds a posted Group of kind k. Synchronously, the upstream
// checks (Validate) run first and the Group is stored active. With async,
// the Group is stored pending and checked in the background; Status tells
// the outcome. Structural errors are returned at once either way.
func (s *Service) Create(ctx context.Context, body []byte, k Kind, caller Caller, async bool) (*Cohort, error) {
	d, err := Parse(body, k)
	if err != nil {
		return nil, err
	}
	now := s.opts.Now().UTC()
	id := newID()
	group, err := d.render(id, now, k == CohortGroup)
	if err != nil {
		return nil, err
	}
	c := &Cohort{
		ID: id, ClientID: caller.ClientID, PathVars: caller.PathVars, Name: d.Name,
		Filters: d.Filters, Members: d.Members, Group: group,
		State: StatePending, Async: async, Created: now, Updated: now,
	}
	s.sweep(ctx)
	if async {
		if err := s.opts.Store.PutCohort(ctx, c); err != nil {
			return nil, err
		}
		s.background(c.Clone())
		return c, nil
	}
	if err := s.check(ctx, c); err != nil {
		return nil, err
	}
	c.State = StateActive
	if err := s.opts.Store.PutCohort(ctx, c); err != nil {
		return nil, err
	}
	s.log.Info().Str("cohort_id", c.ID).Int("filters", len(c.Filters)).Int("members", len(c.Members)).Msg("cohort Group created")
	return c, nil
}

// check runs the upstream checks of a cohort's filters.
func (s *Service) check(ctx context.Context, c *Cohort) error {
	up, err := s.opts.UpstreamFor(c.PathVars)
	if err != nil {
		return err
	}
	return Validate(ctx, up, &Definition{Filters: c.Filters})
}

// background checks a pending cohort and stores the result.
func (s *Service) background(c *Cohort) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
		defer cancel()
		err := s.check(ctx, c)
		if s.ctx.Err() != nil {
			return // stopping: stays pending, resumed at the next Start
		}
		c.Updated = s.opts.Now().UTC()
		if err != nil {
			status, msg := http.StatusInternalServerError, "internal error"
			var e *exporter.Error
			if errors.As(err, &e) && e.Kind != exporter.EINTERNAL {
				status, msg = statusOf(e.Kind), exporter.ErrorMessage(err)
			}
			c.State, c.Status, c.Outcome = StateRejected, status, msg
			// The message may quote the filters (PHI): kind and status only.
			s.log.Warn().Str("cohort_id", c.ID).Str("kind", exporter.ErrorKind(err)).Int("status", status).
				Msg("asynchronous cohort create rejected")
		} else {
			c.State = StateActive
			s.log.Info().Str("cohort_id", c.ID).Int("filters", len(c.Filters)).Int("members", len(c.Members)).Msg("cohort Group created (asynchronous)")
		}
		// A cohort deleted while it was checked stays deleted.
		if _, gerr := s.opts.Store.GetCohort(s.ctx, c.ID); gerr != nil {
			return
		}
		if err := s.opts.Store.PutCohort(s.ctx, c); err != nil {
			s.log.Error().Err(err).Str("cohort_id", c.ID).Msg("store cohort")
		}
	}()
}

// statusOf maps an error kind to the HTTP status of a batch-response entry.
func statusOf(kind string) int {
	switch kind {
	case exporter.EINVALID:
		return http.StatusBadRequest
	case exporter.EUNPROCESSABLE:
		return http.StatusUnprocessableEntity
	case exporter.ENOTFOUND:
		return http.StatusNotFound
	case exporter.EFORBIDDEN:
		return http.StatusForbidden
	case exporter.ETIMEOUT:
		return http.StatusGatewayTimeout
	case exporter.EUPSTREAM:
		return http.StatusBadGateway
	case exporter.EUNAVAILABLE, exporter.ETHROTTLED:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// sweep removes rejected asynchronous creates older than RejectedTTL.
func (s *Service) sweep(ctx context.Context) {
	all, err := s.opts.Store.ListCohorts(ctx)
	if err != nil {
		return
	}
	cut := s.opts.Now().Add(-s.opts.RejectedTTL)
	for _, c := range all {
		if c.State == StateRejected && c.Updated.Before(cut) {
			_ = s.opts.Store.DeleteCohort(ctx, c.ID)
		}
	}
}

// Get returns an active cohort the caller may see; ENOTFOUND otherwise.
func (s *Service) Get(ctx context.Context, id, clientID string) (*Cohort, error) {
	c, err := s.Status(ctx, id, clientID)
	if err != nil {
		return nil, err
	}
	if c.State != StateActive {
		return nil, errNotFound
	}
	return c, nil
}

// Status returns a cohort in any state (for the status URL of an
// asynchronous create) if the caller may see it; ENOTFOUND otherwise.
func (s *Service) Status(ctx context.Context, id, clientID string) (*Cohort, error) {
	if !IsID(id) {
		return nil, errNotFound
	}
	c, err := s.opts.Store.GetCohort(ctx, id)
	if exporter.ErrorKind(err) == exporter.ENOTFOUND || err == nil && !s.visible(c, clientID) {
		return nil, errNotFound
	}
	return c, err
}

// Delete removes a cohort the caller may see; ENOTFOUND otherwise.
func (s *Service) Delete(ctx context.Context, id, clientID string) error {
	if _, err := s.Status(ctx, id, clientID); err != nil {
		return err
	}
	if err := s.opts.Store.DeleteCohort(ctx, id); err != nil {
		return err
	}
	s.log.Info().Str("cohort_id", id).Msg("cohort Group deleted")
	return nil
}

// List returns the active cohorts the caller may see, oldest first.
func (s *Service) List(ctx context.Context, clientID string) ([]*Cohort, error) {
	all, err := s.opts.Store.ListCohorts(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Cohort
	for _, c := range all {
		if c.State == StateActive && s.visible(c, clientID) {
			out = append(out, c)
		}
	}
	sortByCreated(out)
	return out, nil
}

// Members computes the member patients of a cohort against the upstream at
// this moment (exporter.Groups). Ids that are not cohort ids are not held.
func (s *Service) Members(ctx context.Context, up exporter.Upstream, groupID, clientID string) ([]string, bool, error) {
	if !IsID(groupID) {
		return nil, false, nil
	}
	start := time.Now()
	ids, err := s.resolve(ctx, up, groupID, clientID, 0)
	if err != nil {
		return nil, true, err
	}
	s.log.Info().Str("cohort_id", groupID).Int("members", len(ids)).Dur("took", time.Since(start)).Msg("cohort members computed")
	return ids, true, nil
}

// resolve computes the members of a visible, active cohort.
func (s *Service) resolve(ctx context.Context, up exporter.Upstream, id, clientID string, depth int) ([]string, error) {
	c, err := s.Get(ctx, id, clientID)
	if exporter.ErrorKind(err) == exporter.ENOTFOUND {
		return nil, &exporter.Error{Kind: exporter.ENOTFOUND, Message: fmt.Sprintf("Group %s not found", id)}
	}
	if err != nil {
		return nil, err
	}
	e := Evaluator{PageSize: s.opts.PageSize}
	e.Held = func(ctx context.Context, gid string, d int) ([]string, bool, error) {
		ids, err := s.resolve(ctx, up, gid, clientID, d)
		return ids, true, err
	}
	return e.members(ctx, up, c, depth)
}
