package exporter

import (
	"errors"
	"fmt"
)

// Error kinds. Every error that reaches a client is mapped from one of these
// by a single function in the proxy package; everything else is internal.
const (
	EINVALID     = "invalid"     // bad input: 400
	ENOTFOUND    = "not-found"   // unknown job, file, group: 404
	ECONFLICT    = "conflict"    // a state change lost a race: 409
	EFORBIDDEN   = "forbidden"   // 403
	ETHROTTLED   = "throttled"   // 429
	EUNAVAILABLE = "unavailable" // the upstream or the service is down: 503
	EUPSTREAM    = "upstream"    // the upstream answered with an error: 502
	ETIMEOUT     = "timeout"     // the upstream did not answer in time: 504
	EINTERNAL    = "internal"    // 500
	// EUNPROCESSABLE: a well-formed request the upstream cannot serve, such
	// as a _typeFilter it rejects: 422.
	EUNPROCESSABLE = "unprocessable"
	// ETOOLARGE: the export exceeds a configured limit: 413.
	ETOOLARGE = "too-large"
	// ENOTACCEPTABLE: the client accepts no format the server can answer
	// in: 406.
	ENOTACCEPTABLE = "not-acceptable"
)

// Error is an error with a kind and a message that is safe to show clients.
type Error struct {
	Kind    string
	Message string
	// Param names the offending kick-off parameter, when there is one.
	Param string
	Err   error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Kind, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error of the given kind.
func Errorf(kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// ErrorKind returns the kind of err, EINTERNAL when it carries none.
func ErrorKind(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return EINTERNAL
}

// ErrorMessage returns the client-safe message of err.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ErrNotFound is returned by stores and blobs for a missing record.
var ErrNotFound = &Error{Kind: ENOTFOUND, Message: "not found"}

// ErrConflict is returned by Store.Transition when the job is not in the
// expected state.
var ErrConflict = &Error{Kind: ECONFLICT, Message: "job is not in the expected state"}

// StatusError is returned by Upstream implementations when the upstream
// answers a request with a non-success status.
type StatusError struct {
	Status int
	// Diagnostics is a short excerpt of the upstream's answer. It may echo
	// search values (PHI): Error leaves it out, and it is never logged.
	Diagnostics string
	// URL is the request's URL for messages and logs (redact.URL): ids in
	// its path are "{id}", its query is the names of its parameters.
	URL string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %d for %s", e.Status, e.URL)
}

// UpstreamStatus returns the HTTP status of an upstream StatusError in err's
// chain, 0 when there is none.
func UpstreamStatus(err error) int {
	var e *StatusError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}
