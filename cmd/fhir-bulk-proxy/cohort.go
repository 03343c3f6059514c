package main

import (
	"context"
	"fmt"
	"os"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
)

// maxCohortFile bounds a --cohort file.
const maxCohortFile = 1 << 20

// createCohort creates the Bulk Cohort Group of a --cohort file and
// returns its id.
func createCohort(ctx context.Context, ex *bulkclient.Exporter, path string, rep *bulkclient.Reporter) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--cohort: %w", err)
	}
	if fi.Size() > maxCohortFile {
		return "", fmt.Errorf("--cohort: %s is larger than %d bytes", path, maxCohortFile)
	}
	body, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--cohort: %w", err)
	}
	rep.Logf("creating the cohort Group of %s (POST %s/Group, Prefer: respond-async)", path, ex.Base)
	id, err := ex.CreateCohort(ctx, body)
	if err != nil {
		return "", err
	}
	rep.Logf("cohort Group %s created", id)
	return id, nil
}
