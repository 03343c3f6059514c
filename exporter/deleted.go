package exporter

import (
	"context"
	"encoding/json"
	"slices"
)

// writeDeletions appends the deletions of a history page to a history
// unit's part file as lines "id<TAB>Bundle": each Bundle is a transaction
// with one DELETE entry, as the Bulk Data IG lists deleted resources.
func (r *jobRun) writeDeletions(u *Unit, p *Page, part Part) (int, error) {
	n := 0
	for _, e := range p.Entries {
		if e.Method != "DELETE" {
			continue
		}
		t, id, ok := parseReference(e.URL, r.base)
		if !ok || t != u.Type {
			continue
		}
		line, err := deletionBundle(t, id)
		if err != nil {
			return n, err
		}
		if _, err := part.Write(append(append(append([]byte(id), '\t'), line...), '\n')); err != nil {
			return n, &fatal{err}
		}
		u.PartLen += int64(len(id) + 2 + len(line))
		n++
	}
	return n, nil
}

// deletionBundle is one line of a deleted file.
func deletionBundle(t, id string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"resourceType": "Bundle",
		"type":         "transaction",
		"entry": []map[string]any{{
			"request": map[string]string{"method": "DELETE", "url": t + "/" + id},
		}},
	})
}

// buildDeleted writes the deleted file(s): the deletions the history units
// found, except resources that the export's searches returned (they exist,
// so they are in output and never also in deleted).
func (r *jobRun) buildDeleted(ctx context.Context) ([]File, error) {
	w := newTypeWriter(ctx, r.s.opts.Metrics, r.s.opts.Blobs, r.job.ID, "Bundle", KindDeleted, r.s.opts.MaxFileSize)
	defer w.abort()
	for _, t := range r.job.Request.Types {
		deleted := map[string][]byte{}
		for i := range r.units {
			u := &r.units[i]
			if u.Type != t || u.Param != historyParam || u.State != UnitDone {
				continue
			}
			err := r.eachLine(ctx, u, func(id string, line []byte) error {
				deleted[id] = slices.Clone(line)
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		if len(deleted) == 0 {
			continue
		}
		for i := range r.units {
			u := &r.units[i]
			if u.Type != t || u.Param == historyParam || u.State != UnitDone {
				continue
			}
			err := r.eachLine(ctx, u, func(id string, _ []byte) error {
				delete(deleted, id)
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		ids := make([]string, 0, len(deleted))
		for id := range deleted {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if err := w.writeLine(deleted[id]); err != nil {
				return nil, &fatal{err}
			}
		}
	}
	files, err := w.seal()
	if err != nil {
		return nil, &fatal{err}
	}
	return files, nil
}
