package app

import (
	"context"
	"fmt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// newCohorts builds the Bulk Cohort service on the job store, or nil when
// cohorts.enabled is off.
func (a *App) newCohorts() error {
	if !a.cfg.Cohorts.Enabled {
		return nil
	}
	s, err := cohort.New(cohort.Options{
		Store:       a.store,
		UpstreamFor: a.upstreamFor,
		Logger:      a.log.With().Str("component", "cohorts").Logger(),
		PageSize:    a.cfg.Export.PageSize,
		Shared:      a.cfg.Cohorts.Shared,
	})
	if err != nil {
		return err
	}
	a.cohorts = s
	return nil
}

// groups is the exporter's view of the cohort service (nil when off: a
// nil *cohort.Service must not become a non-nil interface).
func (a *App) groups() exporter.Groups {
	if a.cohorts == nil {
		return nil
	}
	return a.cohorts
}

// cohortProfiles are the profiles the CapabilityStatement declares for
// Group: the Bulk Cohort profile when cohorts are on.
func (a *App) cohortProfiles() map[string][]string {
	if a.cohorts == nil {
		return nil
	}
	return map[string][]string{"Group": {cohort.Profile}}
}

// startCohorts resumes the asynchronous cohort creates left pending.
func (a *App) startCohorts(ctx context.Context) {
	if a.cohorts == nil {
		return
	}
	if err := a.cohorts.Start(ctx); err != nil {
		a.log.Error().Err(err).Msg("resume pending cohort creates")
	}
}

// stopCohorts ends the asynchronous cohort creates in progress.
func (a *App) stopCohorts(ctx context.Context) error {
	if a.cohorts == nil {
		return nil
	}
	if err := a.cohorts.Stop(ctx); err != nil {
		return fmt.Errorf("stop cohort creates: %w", err)
	}
	return nil
}
