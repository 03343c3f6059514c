package config

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Usage returns the flag help of `serve --help`: one line per flag with its
// environment variable and default, e.g.
//
//	--export-batch-size N   patients per batched search (env FBP_EXPORT_BATCH_SIZE, default 200)
func Usage() string {
	var b strings.Builder
	WriteUsage(&b)
	return b.String()
}

// WriteUsage writes Usage() to w.
func WriteUsage(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  --config FILE\tYAML configuration file (env %s)\n", ConfigEnv)
	def := Default()
	for _, o := range options() {
		extra := "env " + o.Env
		if d := o.format(&def); d != "" {
			extra += ", default " + d
		}
		sep := " "
		if strings.HasPrefix(o.placeholder(), "[") {
			sep = "" // --flag[=BOOL]: a boolean flag alone means true
		}
		fmt.Fprintf(tw, "  --%s%s%s\t%s (%s)\n", o.Flag, sep, o.placeholder(), o.Usage, extra)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nPrecedence, lowest first: defaults, config file, %s* environment variables, flags.\n", EnvPrefix)
	fmt.Fprintf(w, "Boolean flags alone mean true (--export-fail-on-partial); --flag=false turns one off.\n")
	fmt.Fprintf(w, "Durations: Go syntax (30s, 720h) or days (30d). Sizes: bytes or 256MiB, 100MB, 1GiB.\n")
}
