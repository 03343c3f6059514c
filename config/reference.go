package config

import (
	"fmt"
	"io"
	"strings"
)

// sectionTitles names the sections of the configuration reference, by the
// first part of an option's key; options without a section are "general".
var sectionTitles = map[string]string{
	"":              "General",
	"log":           "Logging (`log`)",
	"export":        "Exports (`export`)",
	"upstream_http": "Upstream HTTP (`upstream_http`)",
	"auth":          "Inbound authorization (`auth`)",
	"upstream_auth": "Credentials towards the upstream (`upstream_auth`)",
	"tls":           "TLS (`tls`)",
	"limits":        "Limits (`limits`)",
	"admin":         "Operator surface (`admin`)",
	"cohorts":       "Bulk Cohort API (`cohorts`)",
}

// WriteReference writes the configuration reference in Markdown: every
// option, in declaration order and grouped by section, with its file key,
// environment variable, flag, default and meaning, all taken from Config's
// fields so that the page cannot drift from the code. docs/configuration.md
// is this output (a test in config checks it).
func WriteReference(w io.Writer) {
	fmt.Fprintf(w, "# Configuration reference\n\n")
	fmt.Fprintf(w, "<!-- Generated from config.Config by `go test ./config -run TestReferenceIsCurrent -update`; do not edit. -->\n\n")
	fmt.Fprintf(w, "Every option can be set in a YAML file (`--config FILE`, or `%s`), by an environment variable, or by a flag of\n", ConfigEnv)
	fmt.Fprintf(w, "`fhir-bulk-proxy serve`. Precedence, lowest first: defaults, file, environment, flags. Boolean flags alone mean true\n")
	fmt.Fprintf(w, "(`--export-fail-on-partial`); `--flag=false` turns one off. Durations are Go durations (`30s`, `720h`) or days\n")
	fmt.Fprintf(w, "(`30d`); sizes are bytes or `256MiB`, `100MB`, `1GiB`. An `%s` variable that names no option is reported at start.\n", EnvPrefix)
	fmt.Fprintf(w, "[`config.example.yaml`](../config.example.yaml) is a commented file with every default.\n")
	def := Default()
	section := "-"
	for _, o := range options() {
		sec, _, ok := strings.Cut(o.Key, ".")
		if !ok {
			sec = ""
		}
		if sec != section {
			section = sec
			title := sectionTitles[sec]
			if title == "" {
				title = "`" + sec + "`"
			}
			fmt.Fprintf(w, "\n## %s\n\n", title)
			fmt.Fprintf(w, "| option | environment | flag | default | meaning |\n|---|---|---|---|---|\n")
		}
		d := o.format(&def)
		if d != "" {
			d = "`" + d + "`"
		}
		fmt.Fprintf(w, "| `%s` | `%s` | `--%s` | %s | %s |\n", o.Key, o.Env, o.Flag, d, mdCell(o.Usage))
	}
}

// mdCell escapes text for a Markdown table cell.
func mdCell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
