package exporter

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
)

// Attachments (Bulk Data IG, "Attachments"): an Attachment.url in an
// output file SHALL be an absolute URL that a client can dereference with
// its bulk access token alone. The upstream writes its own URLs, usually
// Binary/{id}, relative or absolute, which need the upstream's
// credentials. The exporter rewrites every Attachment.url that names a
// Binary of the upstream to the proxy's attachment route of the job,
//
//	{public base}/bulk-export/attachments/{job id}/Binary/{id}[/_history/{vid}]
//
// which checks the client's token and the job's owner and fetches the
// Binary with the upstream credentials (Service.FetchAttachment). URLs of
// other origins, and upstream URLs that are not a Binary, stay as they are:
// the proxy never fetches arbitrary URLs for a client.

// AttachmentPath is the path, under the public FHIR base, of the route
// serving a job's attachments: AttachmentPath + "/{job id}/Binary/{id}".
const AttachmentPath = "/bulk-export/attachments"

// binaryPathRE is the upstream path an attachment URL may name.
var binaryPathRE = regexp.MustCompile(`^Binary/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$`)

// ValidAttachmentPath reports whether rel ("Binary/{id}", optionally with
// "/_history/{vid}") may be fetched from the upstream for a client.
func ValidAttachmentPath(rel string) bool {
	if !binaryPathRE.MatchString(rel) {
		return false
	}
	for seg := range strings.SplitSeq(rel, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// attachmentRewriter rewrites the Binary URLs of one job's resources.
type attachmentRewriter struct {
	upstream string // upstream base URL, without a trailing slash
	prefix   string // {public base}/bulk-export/attachments/{job id}/
}

func newAttachmentRewriter(upstreamBase, publicBase, jobID string) *attachmentRewriter {
	return &attachmentRewriter{
		upstream: strings.TrimRight(upstreamBase, "/"),
		prefix:   strings.TrimRight(publicBase, "/") + AttachmentPath + "/" + jobID + "/",
	}
}

var (
	binaryMarker = []byte("Binary") // "Binary/" or, escaped, "Binary\/"
	urlKey       = []byte(`"url":"`)
)

// rewrite returns line with its Binary attachment URLs rewritten; line
// itself when there is none (the common case costs one bytes.Contains).
// Like scanReferences it relies on compact JSON: a key "url" appears as
// the bytes "url":" and never inside a string, whose quotes are escaped.
func (a *attachmentRewriter) rewrite(line []byte) []byte {
	if a == nil || !bytes.Contains(line, binaryMarker) {
		return line
	}
	var out []byte
	last := 0
	for i := 0; ; {
		k := bytes.Index(line[i:], urlKey)
		if k < 0 {
			break
		}
		open := i + k + len(urlKey) - 1 // the value's opening quote
		end := stringEnd(line[open+1:])
		if end < 0 {
			break
		}
		end += open + 1 // the closing quote
		if repl := a.mapURL(line[open : end+1]); repl != nil {
			out = append(out, line[last:open]...)
			out = append(out, repl...)
			last = end + 1
		}
		i = end + 1
	}
	if out == nil {
		return line
	}
	return append(out, line[last:]...)
}

// mapURL returns the new JSON string for a quoted URL, nil to keep it.
func (a *attachmentRewriter) mapURL(quoted []byte) []byte {
	if !bytes.Contains(quoted, binaryMarker) {
		return nil
	}
	var u string
	if err := json.Unmarshal(quoted, &u); err != nil {
		return nil
	}
	var rel string
	switch {
	case strings.HasPrefix(u, "Binary/"):
		rel = u
	case strings.HasPrefix(u, a.upstream+"/Binary/"):
		rel = u[len(a.upstream)+1:]
	default:
		return nil
	}
	if !ValidAttachmentPath(rel) {
		return nil
	}
	b, err := json.Marshal(a.prefix + rel)
	if err != nil {
		return nil
	}
	return b
}

// AttachmentFetcher is implemented by upstreams that can fetch a Binary's
// content for a client (the upstream package's Client does).
type AttachmentFetcher interface {
	// FetchRaw sends GET {base}/{rel} with the upstream's credentials and
	// the given Accept header and returns the response, body unread.
	FetchRaw(ctx context.Context, rel, accept string) (*http.Response, error)
}

// FetchAttachment fetches an attachment of a job from the upstream the job
// was exported from. rel must be a ValidAttachmentPath (else ENOTFOUND).
// The caller checks that the client may see the job, and closes the body.
func (s *Service) FetchAttachment(ctx context.Context, j *Job, rel, accept string) (*http.Response, error) {
	if !ValidAttachmentPath(rel) {
		return nil, Errorf(ENOTFOUND, "no such attachment")
	}
	up, err := s.opts.UpstreamFor(j.Request.PathVars)
	if err != nil {
		return nil, err
	}
	f, ok := up.(AttachmentFetcher)
	if !ok {
		return nil, Errorf(ENOTFOUND, "the upstream client cannot fetch attachments")
	}
	return f.FetchRaw(ctx, rel, accept)
}
