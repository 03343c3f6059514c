package exporter

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
	return m
}
