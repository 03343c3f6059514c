package exporter

import (
	"context"
	"strconv"
	"time"
)

// Lease is one replica's claim of one work unit, for scale-out (issue 13).
// Token is the fencing token: it grows with every claim of the unit, so a
// replica that lost its lease (paused past Expires while another took the
// unit over) is refused when it writes a checkpoint with its old token.
type Lease struct {
	JobID   string
	UnitID  int
	Owner   string
	Token   int64
	Expires time.Time
	// Unit is the unit as stored when it was claimed (ClaimUnits only).
	Unit Unit
}

// Leaser hands out work units to replicas with leases. PostgreSQL
// implements it with FOR UPDATE SKIP LOCKED and its own clock; bbolt (one
// process) in memory. Implementations must pass storetest.RunLeases.
//
// Every Store the Service runs on must implement it: the runner claims
// every unit it runs, alone or in a cluster (one execution path).
type Leaser interface {
	// ClaimUnits leases up to n pending units of the job that nobody holds
	// (no lease, or an expired one) to owner for ttl, in unit id order.
	// It returns none, and no error, when there are none (or no job).
	ClaimUnits(ctx context.Context, jobID, owner string, n int, ttl time.Duration) ([]Lease, error)
	// RenewLease extends a lease to ttl from now. A lease that was taken
	// over (its token is stale) fails with ECONFLICT wrapping ErrConflict.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// ReleaseLease gives a lease up; a stale one is not an error.
	ReleaseLease(ctx context.Context, l Lease) error
	// PutUnitFenced writes a unit's checkpoint (u.ID must be l.UnitID) if
	// l is still the unit's current lease; a stale token fails with
	// ECONFLICT wrapping ErrConflict and writes nothing.
	PutUnitFenced(ctx context.Context, l Lease, u Unit) error
	// PutUnitsDriven creates or replaces units of a job (as PutUnits) only
	// while the job is driven by owner with driver token token (Job.WorkerID
	// and Job.DriverToken); otherwise it fails with ECONFLICT wrapping
	// ErrConflict and writes nothing. A replica that lost a job it drove
	// (paused past its heartbeat) cannot plan over its successor's units.
	PutUnitsDriven(ctx context.Context, jobID, owner string, token int64, units []Unit) error
}

// UnitWatcher is implemented by Leasers shared by several replicas that
// can announce unit changes made elsewhere (PostgreSQL's LISTEN/NOTIFY):
// WatchUnits returns a channel that receives, coalesced, when units of the
// job were planned or a unit's lease was given up on any replica, and a
// function that ends the subscription. It is a hint that saves waiting for
// the next poll (Options.ClaimInterval); runs keep polling. The job id ""
// watches the planning of units of every job.
type UnitWatcher interface {
	WatchUnits(jobID string) (<-chan struct{}, func())
}

// ErrJobLost is the error of a driver's write to a job another replica
// took over.
func ErrJobLost(jobID string) error {
	return &Error{Kind: ECONFLICT, Message: "job " + jobID + " is driven by another replica now", Err: ErrConflict}
}

// ErrLeaseLost is the error of a write or renewal with a stale lease.
func ErrLeaseLost(l Lease) error {
	return &Error{Kind: ECONFLICT, Message: "lease of unit " + strconv.Itoa(l.UnitID) + " of job " + l.JobID + " was lost (taken over or released)", Err: ErrConflict}
}
