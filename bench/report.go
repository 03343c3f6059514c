package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as a plain-text table, with the machine,
// the options and the notes.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "fhir-bulk-proxy bench, %s (%s)\n", r.Started.Format(time.RFC3339), r.Duration.Round(time.Second))
	fmt.Fprintf(w, "machine: %d CPUs (GOMAXPROCS %d), %s, %d MiB, %s, %s\n",
		m.CPUs, m.GOMAXPROCS, orUnknown(m.CPUModel), m.MemTotalMB, m.GoVersion, m.OS)
	o := r.Options
	fmt.Fprintf(w, "options: quick=%t patients=%d latency=%s upstream-concurrency=%d pass-through=%dx%d conns memory=%d,%d patients load=%d exports of %d patients\n\n",
		o.Quick, o.Patients, o.Latency, o.UpstreamConcurrency, o.PassRequests, o.PassConns, o.MemoryPatients[0], o.MemoryPatients[1],
		o.LoadExports, o.LoadPatients)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tFIGURE\tVALUE\tGOAL\tMET\tDETAIL")
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Workload, f.Name, f.value(), dash(f.Goal), f.met(), f.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

func (f Figure) value() string {
	if f.Value == 0 && f.Met == nil && strings.HasPrefix(f.Detail, "not measured") {
		return "-"
	}
	switch f.Unit {
	case "x":
		return fmt.Sprintf("%.3fx", f.Value)
	case "":
		return fmt.Sprintf("%.3f", f.Value)
	}
	return fmt.Sprintf("%.3f %s", f.Value, f.Unit)
}

func (f Figure) met() string {
	switch {
	case f.Met == nil:
		return "-"
	case *f.Met:
		return "yes"
	}
	return "NO"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown CPU"
	}
	return s
}
