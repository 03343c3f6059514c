package config

import (
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestBoolFlagsTakeNoValue: a boolean flag alone means true, like the flag
// package's own, and the flag after it is still read.
func TestBoolFlagsTakeNoValue(t *testing.T) {
	env := []string{"FBP_UPSTREAM=http://up/fhir"}
	cases := []struct {
		args                 []string
		failOnPartial, throt bool
		level                string
	}{
		{[]string{"--export-fail-on-partial", "--log-level", "warn"}, true, true, "warn"},
		{[]string{"--log-level", "warn", "--export-fail-on-partial"}, true, true, "warn"},
		{[]string{"-export-fail-on-partial", "--export-poll-throttle=false"}, true, false, "info"},
		{[]string{"--export-fail-on-partial=true", "--export-poll-throttle=FALSE", "--log-level=debug"}, true, false, "debug"},
		{[]string{"--export-fail-on-partial", "false", "--log-level", "warn"}, false, true, "warn"},
		{[]string{"--export-poll-throttle", "false", "--export-fail-on-partial"}, true, false, "info"},
	}
	for _, c := range cases {
		cfg, err := Load("", env, c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if cfg.Export.FailOnPartial != c.failOnPartial || cfg.Export.PollThrottle != c.throt || cfg.Log.Level != c.level {
			t.Errorf("%q: fail_on_partial %v poll_throttle %v level %q; want %v %v %q", c.args,
				cfg.Export.FailOnPartial, cfg.Export.PollThrottle, cfg.Log.Level, c.failOnPartial, c.throt, c.level)
		}
	}
	for _, args := range [][]string{
		{"--export-fail-on-partial", "maybe"},
		{"--export-fail-on-partial=maybe"},
		{"--log-level"},
	} {
		if _, err := Load("", env, args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if u := Usage(); !strings.Contains(u, "--export-fail-on-partial[=BOOL]") || strings.Contains(u, "--export-fail-on-partial BOOL") {
		t.Errorf("usage does not show that boolean flags take no value:\n%s", u)
	}
}

func TestUnknownEnv(t *testing.T) {
	env := []string{
		"FBP_UPSTREAM=http://up/fhir",
		"FBP_DATADIR=/data",              // the underscore forgotten
		"FBP_EXPORT_BATCHSIZE=5",         // same
		"FBP_LOG_LEVL=debug",             // a typo
		"FBP_UPSTREAM_URL=http://x/fhir", // a known name with a suffix
		"FBP_TOTALLY_DIFFERENT=1",        // nothing near
		"FBP_CONFIG=/etc/fbp.yaml",       // known, not an option
		"FBP_REQUIRE_BROWSER=1",          // a CI switch
		"FBP_UPDATE_SCREENSHOT=1",        // a test switch
		"PATH=/usr/bin",
		"fbp_lower=1",
	}
	got := UnknownEnv(env)
	want := []UnknownVariable{
		{"FBP_DATADIR", "FBP_DATA_DIR"},
		{"FBP_EXPORT_BATCHSIZE", "FBP_EXPORT_BATCH_SIZE"},
		{"FBP_LOG_LEVL", "FBP_LOG_LEVEL"},
		{"FBP_TOTALLY_DIFFERENT", ""},
		{"FBP_UPSTREAM_URL", "FBP_UPSTREAM"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("UnknownEnv = %+v\nwant %+v", got, want)
	}
	// Every option's own variable is known.
	var all []string
	for _, o := range Options() {
		all = append(all, o.Env+"=x")
	}
	if got := UnknownEnv(all); len(got) != 0 {
		t.Errorf("options' own variables reported: %+v", got)
	}
}

// TestNonConfigEnvIsComplete: every FBP_ variable the project reads
// (os.Getenv or LookupEnv in Go, or set by the CI script) is an option's
// variable, FBP_CONFIG, or one of NonConfigEnv.
func TestNonConfigEnvIsComplete(t *testing.T) {
	var names []string
	for _, g := range [][]string{
		{"-E", `(Getenv|LookupEnv)\("FBP_[A-Z0-9_]+"`, "--", ":(top)*.go"},
		{"-E", `FBP_[A-Z0-9_]*[A-Z0-9]`, "--", ":(top).ci"},
	} {
		out, err := exec.Command("git", append([]string{"grep", "-h", "-o"}, g...)...).Output()
		if err != nil {
			t.Skipf("git grep: %v", err)
		}
		names = append(names, regexp.MustCompile(`FBP_[A-Z0-9_]*[A-Z0-9]`).FindAllString(string(out), -1)...)
	}
	if len(names) == 0 {
		t.Fatal("found no FBP_ variable the project reads")
	}
	var env []string
	for _, n := range names {
		env = append(env, n+"=x")
	}
	for _, u := range UnknownEnv(env) {
		t.Errorf("the project reads %s, which is neither an option's variable nor in NonConfigEnv", u.Name)
	}
}
