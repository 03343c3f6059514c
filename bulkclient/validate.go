package bulkclient

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// maxLine is the longest NDJSON line accepted (one resource).
const maxLine = 512 << 20

// lineHead is what validation reads of every line.
type lineHead struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Parameter    []struct {
		Name string `json:"name"`
	} `json:"parameter"`
}

// isBlockHeader reports whether a line of output organized by patient is a
// block header: a Parameters resource with a "header" parameter. Headers
// are not resources of the export and are not counted.
func (h *lineHead) isBlockHeader() bool {
	if h.ResourceType != "Parameters" {
		return false
	}
	for _, p := range h.Parameter {
		if p.Name == "header" {
			return true
		}
	}
	return false
}

// validateFile checks every line of a downloaded file and fills fr:
//
//   - every line is a JSON object with a resourceType;
//   - in output files, resourceType is the entry's type (any type in
//     output organized by patient, where the entry has none) and there is
//     an id (block headers excepted);
//   - in error and deleted files, resourceType is the entry's type when it
//     has one (OperationOutcome, Bundle); the issues of error files are
//     collected;
//   - the number of resources equals the manifest's count, when it gives
//     one (block headers are not counted).
func validateFile(path string, j fileJob, fr *FileResult) {
	problem := func(format string, args ...any) {
		fr.ProblemCount++
		if len(fr.Problems) < MaxProblemsPerFile {
			fr.Problems = append(fr.Problems, j.name+": "+fmt.Sprintf(format, args...))
		}
	}
	f, err := os.Open(path)
	if err != nil {
		problem("%v", err)
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var n int64
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			problem("line %d is empty", n)
			continue
		}
		// Every non-empty line counts, valid or not, except block headers.
		fr.Lines++
		if line[0] != '{' {
			problem("line %d is not a JSON object", n)
			continue
		}
		var h lineHead
		if err := json.Unmarshal(line, &h); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				problem("line %d: %s has the wrong JSON type (%s)", n, te.Field, te.Value)
			} else {
				problem("line %d is not valid JSON: %v", n, err)
			}
			continue
		}
		if h.ResourceType == "" {
			problem("line %d has no resourceType", n)
			continue
		}
		fr.Resources[h.ResourceType]++
		switch j.kind {
		case KindOutput:
			if j.organized {
				if h.isBlockHeader() {
					fr.Lines--
					fr.Resources[h.ResourceType]--
					if fr.Resources[h.ResourceType] == 0 {
						delete(fr.Resources, h.ResourceType)
					}
					continue
				}
			} else if h.ResourceType != j.entry.Type {
				problem("line %d is a %s in a %s file", n, h.ResourceType, j.entry.Type)
			}
			if h.ID == "" {
				problem("line %d (%s) has no id", n, h.ResourceType)
			}
		case KindError, KindDeleted:
			if j.entry.Type != "" && h.ResourceType != j.entry.Type {
				problem("line %d is a %s in a %s file", n, h.ResourceType, j.entry.Type)
			}
			if j.kind == KindError {
				issues, _, _ := parseOutcome(line)
				for _, is := range issues {
					fr.IssueCount++
					if len(fr.Issues) < MaxProblemsPerFile {
						fr.Issues = append(fr.Issues, is)
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		problem("after line %d: %v", n, err)
	}
	if j.entry.Count > 0 && j.entry.Count != fr.Lines {
		problem("the manifest's count is %d, the file has %d resources", j.entry.Count, fr.Lines)
	}
}
