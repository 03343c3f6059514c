package exporter

import (
	"context"
	"io"
	"net/url"
	"time"
)

// Store persists jobs. Implementations must be safe for concurrent use and
// must pass the shared suite in exporter/storetest.
//
// Jobs handed in and out are copies: callers may keep and change them freely.
type Store interface {
	// Create persists a new job. It fails with ECONFLICT if the id exists.
	Create(ctx context.Context, job *Job) error
	// Get returns the job or ErrNotFound.
	Get(ctx context.Context, id string) (*Job, error)
	// List returns the jobs in any of the given states (all jobs when none
	// are given), oldest first.
	List(ctx context.Context, states ...State) ([]*Job, error)
	// Transition moves a job from one state to another as one atomic
	// compare-and-set: it fails with ErrConflict unless the job is in state
	// from, and refuses moves that CanTransition forbids (EINVALID). mutate,
	// when not nil, may change other fields of the job in the same
	// transaction; an error from it aborts the change. reason is recorded.
	Transition(ctx context.Context, id string, from, to State, reason string, mutate func(*Job) error) (*Job, error)
	// Update changes a job without changing its state. An error from mutate
	// aborts the change. The State field must not be changed by mutate.
	Update(ctx context.Context, id string, mutate func(*Job) error) (*Job, error)
	// Delete removes the job, its work units and its file index entries.
	// Deleting a missing job is not an error.
	Delete(ctx context.Context, id string) error
	// FileJob returns the job that owns the file with the given public id, and
	// the file; ErrNotFound when no job has it.
	FileJob(ctx context.Context, fileID string) (*Job, File, error)
	// PutUnits creates or replaces work units of a job (by Unit.ID). It
	// fails with ENOTFOUND when the job does not exist.
	PutUnits(ctx context.Context, jobID string, units []Unit) error
	// Units returns the work units of a job, by ID; none when it has none.
	Units(ctx context.Context, jobID string) ([]Unit, error)
	// Close releases the store.
	Close() error
}

// BlobWriter is a file being written. Nothing is visible under its key until
// Commit returns; Abort discards it.
type BlobWriter interface {
	io.Writer
	// Commit flushes, syncs and atomically publishes the content, and
	// returns its size.
	Commit() (size int64, err error)
	// Abort removes the partial content. It is safe after Commit (no-op).
	Abort() error
}

// Blob is sealed content opened for reading.
type Blob interface {
	io.ReadSeekCloser
	Size() int64
	ModTime() time.Time
}

// Part is an append-only working file of a running job (a unit's part
// file). It is never served. It is not safe for concurrent use.
type Part interface {
	io.Writer
	// Sync makes everything written so far durable.
	Sync() error
	// Truncate cuts the file to size bytes and continues writing there.
	Truncate(size int64) error
	Close() error
}

// Blobs stores the NDJSON content of jobs. Keys are chosen by the exporter:
// "{jobID}/{name}", both made of [A-Za-z0-9._-].
type Blobs interface {
	Create(ctx context.Context, key string) (BlobWriter, error)
	Open(ctx context.Context, key string) (Blob, error)
	// DeleteJob removes every blob whose key starts with jobID + "/".
	DeleteJob(ctx context.Context, jobID string) error
	// OpenPart opens the part file key for appending, creating it if needed;
	// writes go to its end.
	OpenPart(ctx context.Context, key string) (Part, error)
	// ReadPart opens a part file for reading; ENOTFOUND if missing.
	ReadPart(ctx context.Context, key string) (io.ReadCloser, error)
	// RemoveParts removes every part file of a job.
	RemoveParts(ctx context.Context, jobID string) error
}

// Page is one page of an upstream search.
type Page struct {
	// Entries are the resources of the page, in order.
	Entries []Entry
	// Next is the upstream's next link, "" on the last page.
	Next string
	// Total is the Bundle's total, 0 when absent.
	Total int
	// HasTotal reports whether the Bundle carried a total.
	HasTotal bool
	// Self is the Bundle's self link ("" when absent): servers list there
	// the search parameters they applied.
	Self string
}

// Entry is one Bundle entry.
type Entry struct {
	ResourceType string
	ID           string
	// Mode is search.mode ("match", "include", "outcome"; "" if absent).
	Mode string
	// Resource is the resource as compact JSON on one line (nil for a
	// deletion in a history Bundle).
	Resource []byte
	// Method and URL are the entry's request (history Bundles): a deletion
	// has Method "DELETE" and URL "Type/id".
	Method, URL string
}

// Upstream is the FHIR server behind the proxy, as the exporter sees it.
type Upstream interface {
	// BaseURL is the upstream's FHIR base (absolute, no trailing slash).
	BaseURL() string
	// Read returns one resource as JSON; ENOTFOUND when the upstream answers
	// 404 or 410.
	Read(ctx context.Context, resourceType, id string) ([]byte, error)
	// Search runs [type]?params (POST _search when the URL would be too
	// long), follows next links on the upstream's origin only, and calls fn
	// for every page. An error from fn stops the search and is returned.
	Search(ctx context.Context, resourceType string, params url.Values, fn func(*Page) error) error
	// SearchNext continues a search from a next link an earlier page gave,
	// with the same rules as Search. An expired link answers 404 or 410
	// (visible through UpstreamStatus).
	SearchNext(ctx context.Context, resourceType, next string, fn func(*Page) error) error
	// History pages through [type]/_history?params like Search; deletions
	// are entries with Method "DELETE" and URL "Type/id".
	History(ctx context.Context, resourceType string, params url.Values, fn func(*Page) error) error
	// Capabilities returns the resource types the upstream supports (nil
	// when it does not say).
	Capabilities(ctx context.Context) (*Capabilities, error)
}

// Capabilities is what the exporter needs from the upstream's
// CapabilityStatement.
type Capabilities struct {
	// Types maps each supported resource type to its search parameters.
	Types map[string][]string
	// History holds the types that declare the history-type interaction.
	History map[string]bool
	// NotSearchable holds the declared types whose interactions leave out
	// search-type.
	NotSearchable map[string]bool
}

// Declared reports whether the upstream's CapabilityStatement lists any
// resource type.
func (c *Capabilities) Declared() bool { return c != nil && len(c.Types) > 0 }

// Params returns the search parameters the upstream declares for a type
// (nil when it lists none).
func (c *Capabilities) Params(resourceType string) []string {
	if c == nil {
		return nil
	}
	return c.Types[resourceType]
}

// Supports reports whether the upstream declares the resource type; true
// when the upstream declares nothing.
func (c *Capabilities) Supports(resourceType string) bool {
	if c == nil || len(c.Types) == 0 {
		return true
	}
	_, ok := c.Types[resourceType]
	return ok
}

// SearchParam reports whether any resource type, or the server as a whole,
// declares the search parameter.
func (c *Capabilities) SearchParam(name string) bool {
	if c == nil {
		return false
	}
	for _, ps := range c.Types {
		for _, p := range ps {
			if p == name {
				return true
			}
		}
	}
	return false
}

// UpstreamFor returns the Upstream for a job, given the placeholder values of
// its mount path (nil when the mount path has none).
type UpstreamFor func(pathVars map[string]string) (Upstream, error)
