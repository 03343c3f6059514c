package bulkclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The output directory. One directory holds one export: an earlier
// export's files beside a new manifest would mix two exports. The client
// owns what it writes there: the data files (<Type>-<n>.ndjson and
// output-<n>.ndjson, with errors/ and deleted/ holding the same names),
// their .part files, manifest.json and StateFile. Nothing else in the
// directory is the client's.

// StateFile is the file in the output directory where the client records
// the export it writes there: its status URL and when the server allows
// the next status poll, so that a client re-attaching with --status waits
// the server's Retry-After before its first poll.
const StateFile = ".fhir-bulk-export.json"

// ManifestFile is the name of the manifest in the output directory.
const ManifestFile = "manifest.json"

// DirState is the content of StateFile.
type DirState struct {
	// StatusURL is the export's status URL.
	StatusURL string `json:"statusUrl"`
	// NextPoll is when the server allows the next status poll (its last
	// Retry-After); zero when unknown.
	NextPoll time.Time `json:"nextPoll,omitzero"`
}

// ReadDirState reads dir's StateFile; nil (and no error) when there is
// none.
func ReadDirState(dir string) (*DirState, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st DirState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &st, nil
}

// WriteDirState writes st as dir's StateFile (through a temporary file),
// creating dir when needed.
func WriteDirState(dir string, st *DirState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, StateFile+".part")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, StateFile))
}

// dataFileRE matches the names planFiles gives, with the .part of a
// download in progress.
var dataFileRE = regexp.MustCompile(`^[A-Za-z0-9]{1,64}-[0-9]+\.ndjson(\.part)?$`)

// Owned reports whether name, a path relative to an output directory
// (with '/' or the OS separator), is a file the client writes there.
func Owned(name string) bool {
	name = filepath.ToSlash(name)
	dir, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i], name[i+1:]
	}
	switch dir {
	case "":
		switch base {
		case ManifestFile, ManifestFile + ".part", StateFile, StateFile + ".part":
			return true
		}
		return dataFileRE.MatchString(base)
	case ErrorsDir, DeletedDir:
		return dataFileRE.MatchString(base)
	}
	return false
}

// DirNotEmptyError is returned by CheckOutDir for a directory that holds
// files of another export, or foreign ones.
type DirNotEmptyError struct {
	Dir string
	// Entries are some of its entries (at most 5), sorted.
	Entries []string
	// More counts the entries not listed.
	More int
}

func (e *DirNotEmptyError) Error() string {
	list := strings.Join(e.Entries, ", ")
	if e.More > 0 {
		list += fmt.Sprintf(" and %d more", e.More)
	}
	return fmt.Sprintf("--out %s is not empty (it holds %s); choose an empty or new folder, or give --force to remove "+
		"the files an earlier export wrote there (*.ndjson, errors/, deleted/, %s; other files are left alone)",
		e.Dir, list, ManifestFile)
}

// CheckOutDir checks that dir may receive an export: it does not exist,
// it is empty (but for a StateFile), or (when statusURL is not "") its
// StateFile records that
// export, so that a re-attached client finishes what an interrupted one
// began. Otherwise the error is a *DirNotEmptyError. dir must not be a
// file.
func CheckOutDir(dir, statusURL string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--out %s: %w", dir, err)
	}
	// The state file alone holds no export data (an export that failed
	// before its download leaves it): it does not make dir non-empty.
	entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool {
		return !e.IsDir() && (e.Name() == StateFile || e.Name() == StateFile+".part")
	})
	if len(entries) == 0 {
		return nil
	}
	if statusURL != "" {
		if st, err := ReadDirState(dir); err == nil && st != nil && st.StatusURL == statusURL {
			return nil
		}
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() {
			n += "/"
		}
		names = append(names, n)
	}
	slices.Sort(names)
	e := &DirNotEmptyError{Dir: dir, Entries: names}
	if len(names) > 5 {
		e.Entries, e.More = names[:5], len(names)-5
	}
	return e
}

// ClearOutDir removes the files the client owns from dir (see Owned), and
// errors/ and deleted/ when they are empty afterwards; other files stay.
// It returns how many files it removed. A missing dir is no error.
func ClearOutDir(dir string) (int, error) {
	removed := 0
	for _, sub := range []string{"", ErrorsDir, DeletedDir} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, err
		}
		for _, e := range entries {
			rel := e.Name()
			if sub != "" {
				rel = sub + "/" + rel
			}
			if !e.Type().IsRegular() || !Owned(rel) {
				continue
			}
			if err := os.Remove(filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
				return removed, err
			}
			removed++
		}
		if sub != "" {
			_ = os.Remove(filepath.Join(dir, sub)) // only when empty
		}
	}
	return removed, nil
}
