package exporter

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Output organized by patient (organizeOutputBy=Patient, Bulk Data v3):
// every file holds resource blocks, each a header Parameters resource
// naming the patient, then the Patient, then the resources of the patient's
// compartment (in the order of the requested types), then the referenced
// resources that those resources reference (each once per block). A block
// is never split across files, so continuesInFile is never needed: a file
// may go over the size limit by one block.

// blockHeader is the header line of a patient's block.
func blockHeader(patient string) []byte {
	return fmt.Appendf(nil, `{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/%s"}}]}`, patient)
}

// blockTypeOrder is the order of types in a patient block: the Patient
// right after the header (the IG's resource block: the header, "followed by
// the resource referenced in this header and resources that reference" it),
// then the other types as requested.
func blockTypeOrder(types []string) []string {
	out := make([]string, 0, len(types))
	if slices.Contains(types, "Patient") {
		out = append(out, "Patient")
	}
	for _, t := range types {
		if t != "Patient" {
			out = append(out, t)
		}
	}
	return out
}

// blockFiles writes blocks into sealed files, starting a new file only
// between blocks.
type blockFiles struct {
	w *typeWriter
}

// add writes one block of n resources (lines without newlines).
func (b *blockFiles) add(lines [][]byte, n int64) error {
	size := int64(0)
	for _, l := range lines {
		size += int64(len(l)) + 1
	}
	w := b.w
	if w.cur != nil && w.maxSize > 0 && w.curSz > 0 && w.curSz+size > w.maxSize {
		if err := w.sealCurrent(); err != nil {
			return err
		}
	}
	// A block always goes into one file: the writer's own size split is
	// off while it is written.
	max := w.maxSize
	w.maxSize = 0
	defer func() { w.maxSize = max }()
	for _, l := range lines {
		if err := w.writeLine(l); err != nil {
			return err
		}
	}
	// Headers are not resources of the export: count only the resources.
	w.curN -= int64(len(lines)) - n
	return nil
}

// buildPatientBlocks writes the patient-organized output files.
func (r *jobRun) buildPatientBlocks(ctx context.Context) ([]File, error) {
	r.setPhase("writing patient blocks")
	referenced, err := r.referencedLines(ctx)
	if err != nil {
		return nil, err
	}
	// Files mix types: they are named output-N and listed without a type.
	out := &blockFiles{w: newTypeWriter(ctx, r.s.opts.Metrics, r.s.opts.Blobs, r.job.ID, "", KindOutput, r.s.opts.MaxFileSize)}
	defer out.w.abort()

	// Round-0 units grouped by their batch of patients, in plan order.
	var batches [][]*Unit
	index := map[string]int{}
	for i := range r.units {
		u := &r.units[i]
		if u.Round != 0 || u.State != UnitDone || u.Param == historyParam {
			continue
		}
		key := strings.Join(u.Values, ",")
		at, ok := index[key]
		if !ok {
			at = len(batches)
			index[key] = at
			batches = append(batches, nil)
		}
		batches[at] = append(batches[at], u)
	}
	unplaced := 0
	for _, batch := range batches {
		n, err := r.writeBatchBlocks(ctx, batch, referenced, out)
		if err != nil {
			return nil, err
		}
		unplaced += n
	}
	if unplaced > 0 {
		r.warnings = append(r.warnings, fmt.Sprintf(
			"%d resources matched a patient search but reference none of the patients searched; they are not in any patient block", unplaced))
	}
	files, err := out.w.seal()
	if err != nil {
		return nil, &fatal{err}
	}
	return files, nil
}

// referencedLines loads the fetched referenced resources ("Type/id" ->
// line), which patient blocks repeat where they are referenced.
func (r *jobRun) referencedLines(ctx context.Context) (map[string][]byte, error) {
	lines := map[string][]byte{}
	for i := range r.units {
		u := &r.units[i]
		if u.Round < 1 || u.State != UnitDone {
			continue
		}
		err := r.eachLine(ctx, u, func(id string, res []byte) error {
			lines[u.Type+"/"+id] = slices.Clone(res)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return lines, nil
}

// writeBatchBlocks writes the blocks of one batch of patients and returns
// how many resources it could not place.
func (r *jobRun) writeBatchBlocks(ctx context.Context, batch []*Unit, referenced map[string][]byte, out *blockFiles) (int, error) {
	patients := batch[0].Values
	inBatch := make(map[string]bool, len(patients))
	for _, p := range patients {
		inBatch[p] = true
	}
	// patient -> type -> lines; seen dedups (type/id) per patient.
	blocks := map[string]map[string][][]byte{}
	seen := map[string]map[string]bool{}
	place := func(p, t, id string, line []byte) {
		key := t + "/" + id
		if seen[p] == nil {
			seen[p] = map[string]bool{}
			blocks[p] = map[string][][]byte{}
		}
		if !seen[p][key] {
			seen[p][key] = true
			blocks[p][t] = append(blocks[p][t], line)
		}
	}
	unplaced := 0
	for _, u := range batch {
		err := r.eachLine(ctx, u, func(id string, res []byte) error {
			line := slices.Clone(res)
			if u.Type == "Patient" {
				place(id, "Patient", id, line)
				return nil
			}
			placed := false
			scanReferences(line, r.base, func(t, pid string) {
				if t == "Patient" && inBatch[pid] {
					place(pid, u.Type, id, line)
					placed = true
				}
			})
			if !placed {
				unplaced++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	for _, p := range patients {
		byType := blocks[p]
		if byType == nil {
			continue
		}
		lines := [][]byte{blockHeader(p)}
		var n int64
		var queue [][]byte
		for _, t := range blockTypeOrder(r.job.Request.Types) {
			for _, l := range byType[t] {
				lines = append(lines, l)
				queue = append(queue, l)
				n++
			}
		}
		// The referenced resources, transitively, once per block.
		inBlock := map[string]bool{}
		for len(queue) > 0 {
			l := queue[0]
			queue = queue[1:]
			scanReferences(l, r.base, func(t, rid string) {
				key := t + "/" + rid
				if !r.wanted[t] || inBlock[key] {
					return
				}
				if ref, ok := referenced[key]; ok {
					inBlock[key] = true
					lines = append(lines, ref)
					queue = append(queue, ref)
					n++
				}
			})
		}
		if err := out.add(lines, n); err != nil {
			return 0, &fatal{err}
		}
	}
	return unplaced, nil
}
