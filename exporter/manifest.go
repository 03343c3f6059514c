package exporter

import "fmt"

// Manifest is the body of a completed status request (Bulk Data IG).
type Manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	OutputOrganizedBy   string         `json:"outputOrganizedBy,omitempty"`
	Output              []ManifestFile `json:"output"`
	Deleted             []ManifestFile `json:"deleted,omitempty"`
	Error               []ManifestFile `json:"error"`
	Extension           map[string]any `json:"extension,omitempty"`
	Link                []ManifestLink `json:"link,omitempty"`
}

// ManifestLink links a manifest page to the next one.
type ManifestLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// PageURL returns the absolute URL of a job's manifest page n (n >= 1; page
// 0 is the status URL).
func PageURL(j *Job, n int) string {
	return fmt.Sprintf("%s/manifest/%d", StatusURL(j), n)
}

// unpaged returns the ids of the job's files on no page yet.
func unpaged(j *Job) []string {
	paged := map[string]bool{}
	for _, p := range j.Pages {
		for _, id := range p {
			paged[id] = true
		}
	}
	var ids []string
	for _, f := range j.Files {
		if !paged[f.ID] {
			ids = append(ids, f.ID)
		}
	}
	return ids
}

// PublishPage adds a manifest page with the sealed files of a job that no
// page lists yet, if there are any; for Store.Update and Transition.
func PublishPage(j *Job) error {
	if ids := unpaged(j); len(ids) > 0 {
		j.Pages = append(j.Pages, ids)
	}
	return nil
}

// BuildManifestPage returns page n of a paged manifest, and false when the
// job has no such page.
func BuildManifestPage(j *Job, n int, requiresAccessToken bool) (Manifest, bool) {
	if n < 0 || n >= len(j.Pages) {
		return Manifest{}, false
	}
	in := map[string]bool{}
	for _, id := range j.Pages[n] {
		in[id] = true
	}
	page := *j
	page.Files = nil
	for _, f := range j.Files {
		if in[f.ID] {
			page.Files = append(page.Files, f)
		}
	}
	m := BuildManifest(&page, requiresAccessToken)
	if n+1 < len(j.Pages) {
		m.Link = []ManifestLink{{Relation: "next", URL: PageURL(j, n+1)}}
	}
	return m, true
}

// NotesExtension is the manifest extension key under which the proxy
// explains limits of an export (for instance, deletions it cannot list).
const NotesExtension = "https://github.com/fhir-bulk-proxy/fhir-bulk-proxy/notes"

// ManifestFile is one entry of a manifest array.
type ManifestFile struct {
	// Type is the resource type of every line; absent when the output is
	// organized by patient (files then mix types).
	Type  string `json:"type,omitempty"`
	URL   string `json:"url"`
	Count int64  `json:"count,omitempty"`
}

// FileURL returns the absolute URL of a file of a job.
func FileURL(j *Job, f File) string {
	return j.Request.BaseURL + "/bulk-export/files/" + f.ID
}

// StatusURL returns the absolute status URL of a job.
func StatusURL(j *Job) string {
	return j.Request.BaseURL + "/bulk-export/jobs/" + j.ID
}

// BuildManifest returns the manifest of a completed job. Output files with
// no resources are never listed (they are never created).
func BuildManifest(j *Job, requiresAccessToken bool) Manifest {
	m := Manifest{
		TransactionTime:     j.TransactionTime.UTC().Format(instantFormat),
		Request:             j.Request.RequestURL,
		RequiresAccessToken: requiresAccessToken,
		OutputOrganizedBy:   j.Request.OrganizeBy,
		Output:              []ManifestFile{},
		Error:               []ManifestFile{},
	}
	for _, f := range j.Files {
		mf := ManifestFile{Type: f.Type, URL: FileURL(j, f), Count: f.Count}
		switch f.Kind {
		case KindOutput:
			if f.Count > 0 {
				m.Output = append(m.Output, mf)
			}
		case KindDeleted:
			m.Deleted = append(m.Deleted, mf)
		case KindError:
			m.Error = append(m.Error, mf)
		}
	}
	if len(j.Notes) > 0 {
		m.Extension = map[string]any{NotesExtension: j.Notes}
	}
	if j.Request.Cohort {
		if m.Extension == nil {
			m.Extension = map[string]any{}
		}
		m.Extension[CohortMembersExtension] = len(j.Request.Members)
	}
	return m
}
