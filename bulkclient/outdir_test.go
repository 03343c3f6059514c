package bulkclient

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOwned(t *testing.T) {
	for name, want := range map[string]bool{
		"Patient-1.ndjson":                    true,
		"Observation-12.ndjson.part":          true,
		"output-3.ndjson":                     true,
		"manifest.json":                       true,
		"manifest.json.part":                  true,
		StateFile:                             true,
		"errors/OperationOutcome-1.ndjson":    true,
		"deleted/Observation-2.ndjson":        true,
		"cohort.ndjson":                       false,
		"notes.txt":                           false,
		"errors/README":                       false,
		"sub/Patient-1.ndjson":                false,
		"Patient-1.ndjson.bak":                false,
		"errors/manifest.json":                false,
		"Pat ient-1.ndjson":                   false,
		strings.Repeat("A", 65) + "-1.ndjson": false,
	} {
		if got := Owned(name); got != want {
			t.Errorf("Owned(%q) = %v", name, got)
		}
	}
}

func writeFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel != "." {
			if d.IsDir() {
				rel += "/"
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestCheckAndClearOutDir(t *testing.T) {
	root := t.TempDir()
	missing := filepath.Join(root, "new")
	if err := CheckOutDir(missing, ""); err != nil {
		t.Errorf("a new folder: %v", err)
	}
	if n, err := ClearOutDir(missing); n != 0 || err != nil {
		t.Errorf("clearing a missing folder: %d %v", n, err)
	}
	if err := CheckOutDir(t.TempDir(), ""); err != nil {
		t.Errorf("an empty folder: %v", err)
	}
	// An export that failed before its download left only its state.
	failed := t.TempDir()
	if err := WriteDirState(failed, &DirState{StatusURL: "http://s/jobs/0"}); err != nil {
		t.Fatal(err)
	}
	if err := CheckOutDir(failed, ""); err != nil {
		t.Errorf("a folder with only a state file: %v", err)
	}

	dir := filepath.Join(root, "old")
	writeFiles(t, dir, "Patient-1.ndjson", "Observation-1.ndjson", "Observation-2.ndjson.part", "manifest.json",
		"errors/OperationOutcome-1.ndjson", "deleted/Condition-1.ndjson", "notes.txt", "errors/README", "keep/Patient-1.ndjson")
	if err := WriteDirState(dir, &DirState{StatusURL: "http://s/jobs/1", NextPoll: time.Now()}); err != nil {
		t.Fatal(err)
	}
	err := CheckOutDir(dir, "")
	var ne *DirNotEmptyError
	if !errors.As(err, &ne) || !strings.Contains(err.Error(), "--force") || ne.More == 0 {
		t.Fatalf("a folder of an earlier export: %v", err)
	}
	if err := CheckOutDir(dir, "http://s/jobs/2"); err == nil {
		t.Error("re-attaching to another export was let in")
	}
	if err := CheckOutDir(dir, "http://s/jobs/1"); err != nil {
		t.Errorf("re-attaching to the folder's own export: %v", err)
	}

	n, err := ClearOutDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"errors/", "errors/README", "keep/", "keep/Patient-1.ndjson", "notes.txt"}
	if got := listFiles(t, dir); !slices.Equal(got, want) {
		t.Errorf("after clearing: %v, want %v", got, want)
	}
	if n != 7 {
		t.Errorf("removed %d files, want 7", n)
	}
	if st, err := ReadDirState(dir); st != nil || err != nil {
		t.Errorf("state after clearing: %+v %v", st, err)
	}
}
