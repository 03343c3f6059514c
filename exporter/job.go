// Package exporter is the core of fhir-bulk-proxy: the export Job, its state
// machine, the planner that turns a request into work units, the runner that
// pages through the upstream and the NDJSON writer.
//
// It owns the interfaces it needs (Store, Blobs, Upstream); the packages that
// implement them (store, blobs, upstream) import exporter, never the reverse.
package exporter

import (
	"fmt"
	"time"
)

// State is the lifecycle state of a Job.
type State string

// Job states. queued -> running -> {completed | failed | cancelled};
// running -> queued when the process is interrupted; queued -> cancelled.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateCompleted State = "completed"
	StateFailed    State = "failed"
	StateCancelled State = "cancelled"
)

// transitions is the one table of allowed state changes.
var transitions = map[State][]State{
	StateQueued:  {StateRunning, StateCancelled, StateFailed},
	StateRunning: {StateCompleted, StateFailed, StateCancelled, StateQueued},
}

// CanTransition reports whether a job may move from one state to another.
func CanTransition(from, to State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Terminal reports whether no further transition leaves s.
func (s State) Terminal() bool { return len(transitions[s]) == 0 }

// Level is the scope of an export.
type Level string

// Export levels.
const (
	LevelGroup   Level = "group"
	LevelPatient Level = "patient"
	LevelSystem  Level = "system"
)

// Request is a validated kick-off request.
type Request struct {
	Level   Level  `json:"level"`
	GroupID string `json:"groupId,omitempty"`
	// Types lists the resource types to export, in output order. Never empty
	// once the request is validated (the default set is filled in).
	Types []string `json:"types"`
	// ExplicitTypes is true when the client named the types with _type.
	ExplicitTypes bool `json:"explicitTypes,omitempty"`
	// Since, when set, limits the export to resources changed after it.
	Since *time.Time `json:"since,omitempty"`
	// Until, when set, limits the export to resources changed at or before
	// it; the job's transactionTime is then no later than Until.
	Until *time.Time `json:"until,omitempty"`
	// Patients, when set (the patient parameter), limits a Group or Patient
	// export to these patients' compartments.
	Patients []string `json:"patients,omitempty"`
	// Cohort is set when the Group is one the proxy holds (a Bulk Cohort
	// Group): Members are then its member patients, computed at kick-off,
	// and the job exports them (Group.member is not read again).
	Cohort  bool     `json:"cohort,omitempty"`
	Members []string `json:"members,omitempty"`
	// TypeFilters maps a type to its _typeFilter queries (already
	// validated, URL-encoded, without "Type?"). Several queries of one type
	// are OR'ed.
	TypeFilters map[string][]string `json:"typeFilters,omitempty"`
	// Elements is the _elements list ("elem" or "Type.elem").
	Elements []string `json:"elements,omitempty"`
	// AssociatedProvenance is set by includeAssociatedData
	// (LatestProvenanceResources or RelevantProvenanceResources): export the
	// Provenance resources that target exported resources.
	AssociatedProvenance bool `json:"associatedProvenance,omitempty"`
	// OrganizeBy is "Patient" when the output is organized in patient blocks
	// (organizeOutputBy=Patient); "" for one type per file.
	OrganizeBy string `json:"organizeBy,omitempty"`
	// PartialManifests is set by allowPartialManifests=true: status polls of
	// a running job may answer with a manifest of the files sealed so far.
	PartialManifests bool `json:"partialManifests,omitempty"`
	// OutputFormat is always application/fhir+ndjson today.
	OutputFormat string `json:"outputFormat"`
	// RequestURL is the kick-off URL as the client sent it (absolute, public).
	RequestURL string `json:"requestUrl"`
	// BaseURL is the public FHIR base the job was started under (absolute,
	// no trailing slash); manifest and status URLs are built from it.
	BaseURL string `json:"baseUrl"`
	// PathVars holds the values of placeholders in the mount path, such as
	// {tenant}; they are substituted into the upstream URL.
	PathVars map[string]string `json:"pathVars,omitempty"`
	// Lenient is true when the client sent Prefer: handling=lenient.
	Lenient bool `json:"lenient,omitempty"`
	// SeparateStatus is true when the client sent Prefer:
	// separate-export-status: status requests then answer 200 and give
	// the job's own status code in X-Export-Status.
	SeparateStatus bool `json:"separateStatus,omitempty"`
	// Ignored lists what a lenient kick-off ignored; each becomes one
	// OperationOutcome line in the manifest's error file.
	Ignored []string `json:"ignored,omitempty"`
	// ScopeExcluded lists the types an export without _type would have
	// covered that the access token's scopes do not permit; the manifest
	// names them in a note.
	ScopeExcluded []string `json:"scopeExcluded,omitempty"`
	// ClientID is the identity of the client that started the job ("" while
	// inbound authorization is off).
	ClientID string `json:"clientId,omitempty"`
}

// FileKind says which manifest array a file belongs to.
type FileKind string

// File kinds.
const (
	KindOutput  FileKind = "output"
	KindError   FileKind = "error"
	KindDeleted FileKind = "deleted"
)

// File is one sealed NDJSON file of a job.
type File struct {
	// ID is the unguessable public id used in /bulk-export/files/{ID}.
	ID    string   `json:"id"`
	JobID string   `json:"jobId"`
	Kind  FileKind `json:"kind"`
	// Type is the resource type of every line (OperationOutcome for errors).
	Type string `json:"type"`
	// Key is the Blobs key of the content.
	Key   string `json:"key"`
	Count int64  `json:"count"`
	Size  int64  `json:"size"`
}

// Progress is what a running job reports to status polls.
type Progress struct {
	UnitsTotal int   `json:"unitsTotal"`
	UnitsDone  int   `json:"unitsDone"`
	Resources  int64 `json:"resources"`
	// Phase is a short human-readable description of the current step.
	Phase string `json:"phase,omitempty"`
}

// Percent returns the completed share in [0, 100).
func (p Progress) Percent() int {
	if p.UnitsTotal <= 0 {
		return 0
	}
	pc := p.UnitsDone * 100 / p.UnitsTotal
	if pc > 99 {
		pc = 99
	}
	return pc
}

// Job is an export job as persisted in the Store.
type Job struct {
	ID      string  `json:"id"`
	State   State   `json:"state"`
	Request Request `json:"request"`
	// TransactionTime is fixed when the job is created; every upstream search
	// is bounded by _lastUpdated=le{TransactionTime}.
	TransactionTime time.Time `json:"transactionTime"`
	CreatedAt       time.Time `json:"createdAt"`
	UpdatedAt       time.Time `json:"updatedAt"`
	StartedAt       time.Time `json:"startedAt,omitempty"`
	FinishedAt      time.Time `json:"finishedAt,omitempty"`
	// ExpiresAt is when a finished job and its files are removed.
	ExpiresAt time.Time `json:"expiresAt,omitempty"`
	// Attempts counts how often the job was started.
	Attempts int `json:"attempts"`
	// WorkerID is the replica that drives the running job: it plans it,
	// runs its phase steps (sealing, planning reference rounds) and
	// completes it, while every replica runs its units. DriverToken grows
	// with every new driver: the driver's writes carry it, so a replica
	// that lost the job (its heartbeat went stale and another took over)
	// writes nothing more. LeaseUntil is unused since issue 13 (replica
	// heartbeats tell which drivers live) and kept for old records.
	WorkerID    string    `json:"workerId,omitempty"`
	DriverToken int64     `json:"driverToken,omitempty"`
	LeaseUntil  time.Time `json:"leaseUntil,omitempty"`
	// Reason records why the job last changed state.
	Reason string `json:"reason,omitempty"`
	// Message is the client-facing failure message of a failed job.
	Message string `json:"message,omitempty"`
	// Deleted is set when the client deleted the job: status and file
	// requests answer 404 and the job's files are removed.
	Deleted  bool     `json:"deleted,omitempty"`
	Progress Progress `json:"progress"`
	// Stage records the checkpointed step of a running job:
	// "" while compartment searches run, StageSealed once their types'
	// files are sealed (listed in Files) and the first reference round is
	// planned.
	Stage string `json:"stage,omitempty"`
	// Notes are told to the client in the manifest's extension, such as
	// why deleted resources cannot be listed.
	Notes []string `json:"notes,omitempty"`
	// Pages are the manifest pages handed out (allowPartialManifests): the
	// file ids of each page. A page never changes once handed out; later
	// files go to later pages, linked from the one before.
	Pages [][]string `json:"pages,omitempty"`
	// Files lists the sealed files, in manifest order.
	Files []File `json:"files,omitempty"`
}

// Clone returns a deep copy of j.
func (j *Job) Clone() *Job {
	c := *j
	c.Request.Types = append([]string(nil), j.Request.Types...)
	c.Request.Ignored = append([]string(nil), j.Request.Ignored...)
	c.Request.ScopeExcluded = append([]string(nil), j.Request.ScopeExcluded...)
	c.Request.Patients = append([]string(nil), j.Request.Patients...)
	c.Request.Members = append([]string(nil), j.Request.Members...)
	c.Request.Elements = append([]string(nil), j.Request.Elements...)
	if j.Request.Until != nil {
		t := *j.Request.Until
		c.Request.Until = &t
	}
	if j.Request.TypeFilters != nil {
		c.Request.TypeFilters = make(map[string][]string, len(j.Request.TypeFilters))
		for k, v := range j.Request.TypeFilters {
			c.Request.TypeFilters[k] = append([]string(nil), v...)
		}
	}
	if j.Request.Since != nil {
		t := *j.Request.Since
		c.Request.Since = &t
	}
	if j.Request.PathVars != nil {
		c.Request.PathVars = make(map[string]string, len(j.Request.PathVars))
		for k, v := range j.Request.PathVars {
			c.Request.PathVars[k] = v
		}
	}
	c.Files = append([]File(nil), j.Files...)
	c.Notes = append([]string(nil), j.Notes...)
	c.Pages = nil
	for _, p := range j.Pages {
		c.Pages = append(c.Pages, append([]string(nil), p...))
	}
	return &c
}

// Visible reports whether the job still exists for clients at time now.
func (j *Job) Visible(now time.Time) bool {
	if j.Deleted {
		return false
	}
	return j.ExpiresAt.IsZero() || now.Before(j.ExpiresAt)
}

func (j *Job) String() string { return fmt.Sprintf("job %s (%s)", j.ID, j.State) }

// StageSealed is the Job.Stage after the compartment types are sealed.
const StageSealed = "compartment-sealed"

// UnitState is the state of a work unit.
type UnitState string

// Unit states.
const (
	UnitPending UnitState = "pending"
	UnitDone    UnitState = "done"
	UnitFailed  UnitState = "failed"
)

// Unit is one work unit of a job: one search of one resource type for a set
// of values of its selecting parameter (a batch of patients, or of resource
// ids), with its checkpoint. Units are persisted when planned and after
// every page, so that a restarted job continues where it stopped.
type Unit struct {
	// ID orders the units of a job; it is unique within the job.
	ID int `json:"id"`
	// Round is 0 for compartment searches and k >= 1 for the k-th round of
	// referenced-resource fetches.
	Round  int       `json:"round"`
	Type   string    `json:"type"`
	Param  string    `json:"param"`
	Values []string  `json:"values"`
	State  UnitState `json:"state"`
	// Next is the upstream next link to continue from; "" before the first
	// page and after the last.
	Next string `json:"next,omitempty"`
	// PartLen is the length of the unit's part file that the checkpoint
	// covers; bytes beyond it are cut off when the unit resumes.
	PartLen int64 `json:"partLen"`
	// Count is the number of resources in the part file up to PartLen.
	Count int64 `json:"count"`
	// Pages counts the pages written.
	Pages int `json:"pages"`
	// Restarts counts restarts from the first page after the upstream
	// forgot the paging cursor.
	Restarts int `json:"restarts,omitempty"`
	// Filter is a _typeFilter query (URL-encoded) added to the search.
	Filter string `json:"filter,omitempty"`
	// Window, for a slice of a large type at system level, holds the
	// _lastUpdated bounds of the slice ("gt..." and/or "le..."), sent with
	// the job's own (see systemWindows).
	Window []string `json:"window,omitempty"`
	// Error is the client-safe reason of a failed unit.
	Error string `json:"error,omitempty"`
	// Split is set when the upstream refused a comma list for the type: the
	// unit then searches its values one at a time, Sub being the index of
	// the value being searched.
	Split bool `json:"split,omitempty"`
	Sub   int  `json:"sub,omitempty"`
	// StartLen and StartCount are PartLen and Count when the current search
	// (or sub-search) began: a restart cuts the part file back to them.
	StartLen   int64 `json:"startLen,omitempty"`
	StartCount int64 `json:"startCount,omitempty"`
	// Slices, when not empty, cut the current search (of the current value)
	// into _lastUpdated windows, each a pair of bounds as in Window; the
	// last one is searched now, the others wait. They are made when the
	// upstream forgets its paging cursor sooner than the search's pages can
	// be fetched (see bisect).
	Slices [][]string `json:"slices,omitempty"`
	// NoCursor is set once the upstream forgot this unit's paging cursor
	// again after a restart: further cursor losses bisect at once.
	NoCursor bool `json:"noCursor,omitempty"`
	// Epoch is the lease token under which the unit's part file was
	// begun: the part file is named by it, so that a replica that lost the
	// unit (paused past its lease) writes only to a file nobody reads any
	// more. A replica that takes a unit over copies the checkpointed bytes
	// to a part file of its own epoch (0: a record of before issue 13).
	Epoch int64 `json:"epoch,omitempty"`
	// Fatal is set with UnitFailed when the unit failed for a reason that
	// ends the job (its part file or checkpoint could not be stored) on a
	// replica that does not drive the job: the driver then fails it.
	Fatal bool `json:"fatal,omitempty"`
}

// PartKey returns the Blobs key of the unit's part file.
func (u *Unit) PartKey(jobID string) string {
	if u.Epoch > 0 {
		return fmt.Sprintf("%s/part-%06d-e%d.ndjson", jobID, u.ID, u.Epoch)
	}
	return fmt.Sprintf("%s/part-%06d.ndjson", jobID, u.ID)
}
