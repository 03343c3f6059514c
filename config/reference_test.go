package config

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md from Config")

// TestReferenceIsCurrent checks that docs/configuration.md is the reference
// generated from Config's fields, and lists every option.
func TestReferenceIsCurrent(t *testing.T) {
	var b bytes.Buffer
	WriteReference(&b)
	const path = "../docs/configuration.md"
	if *update {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b.Bytes()) {
		t.Fatalf("%s is out of date: run go test ./config -run TestReferenceIsCurrent -update", path)
	}
	for _, o := range Options() {
		for _, s := range []string{"`" + o.Key + "`", "`" + o.Env + "`", "`--" + o.Flag + "`"} {
			if !strings.Contains(string(got), s) {
				t.Errorf("the reference lacks %s", s)
			}
		}
	}
}
