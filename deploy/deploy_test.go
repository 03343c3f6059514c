package deploy_test

import (
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"go.yaml.in/yaml/v3"
)

// The tests run in deploy/; the repository root is its parent.
const (
	repoRoot       = ".."
	dockerfilePath = "../Dockerfile"
	composePath    = "compose.yaml"
	kubernetesPath = "kubernetes.yaml"

	// The package the image is built from.
	mainPackage = "./cmd/fhir-bulk-proxy"
	// HAPI FHIR serves its FHIR base at /fhir on port 8080.
	fhirServerImage = "hapiproject/hapi"
	fhirServerPort  = 8080
	fhirServerPath  = "/fhir"
)

// ---------------------------------------------------------------------------
// A small Dockerfile parser: instructions, line continuations, comments,
// leading --flags, exec (JSON) form, multi-stage FROM ... AS ..., ARG and ENV
// with $VAR / ${VAR} substitution. Only the backslash escape character is
// supported.

// dockerInstruction is one instruction, its continuation lines joined.
type dockerInstruction struct {
	Line  int               // line of its first line
	Cmd   string            // upper case: FROM, RUN, COPY ...
	Flags map[string]string // leading options: COPY --from=build --chown=65532:65532
	Rest  string            // the arguments after the options
}

type dockerStage struct {
	Index  int
	Name   string // the AS name; "" if none
	Base   string // the image, global ARGs substituted
	Instrs []dockerInstruction
}

// ref reports whether s names this stage in COPY --from.
func (st *dockerStage) ref(s string) bool {
	return s == strconv.Itoa(st.Index) || (st.Name != "" && strings.EqualFold(s, st.Name))
}

type dockerfile struct {
	Args   map[string]string // ARGs before the first FROM, with their defaults
	Stages []*dockerStage
}

var (
	escapeDirective = regexp.MustCompile(`(?i)^#\s*escape\s*=\s*(\S*)\s*$`)
	instructionName = regexp.MustCompile(`^[A-Z]+$`)
)

func parseDockerfile(src string) (*dockerfile, error) {
	var instrs []dockerInstruction
	var buf strings.Builder
	start := 0 // first line of the pending instruction; 0: none
	for i, line := range strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		if start == 0 {
			if m := escapeDirective.FindStringSubmatch(trimmed); m != nil && len(instrs) == 0 && m[1] != `\` {
				return nil, fmt.Errorf("line %d: escape character %q is not supported", i+1, m[1])
			}
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			start = i + 1
		} else if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue // empty and comment lines inside a continuation are dropped
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			buf.WriteString(body)
			buf.WriteByte(' ')
			continue
		}
		buf.WriteString(line)
		ins, err := parseInstruction(start, buf.String())
		if err != nil {
			return nil, err
		}
		instrs = append(instrs, ins)
		buf.Reset()
		start = 0
	}
	if start != 0 {
		return nil, fmt.Errorf("line %d: line continuation at the end of the file", start)
	}

	df := &dockerfile{Args: map[string]string{}}
	for _, ins := range instrs {
		switch {
		case ins.Cmd == "FROM":
			f := strings.Fields(ins.Rest)
			st := &dockerStage{Index: len(df.Stages)}
			switch {
			case len(f) == 1:
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.Name = f[2]
			default:
				return nil, fmt.Errorf("line %d: FROM %s: want IMAGE [AS NAME]", ins.Line, ins.Rest)
			}
			base, err := expand(f[0], mapLookup(df.Args))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			st.Base = base
			df.Stages = append(df.Stages, st)
		case len(df.Stages) == 0:
			if ins.Cmd != "ARG" {
				return nil, fmt.Errorf("line %d: %s before the first FROM", ins.Line, ins.Cmd)
			}
			name, val, err := parseArg(ins.Rest, mapLookup(df.Args))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			df.Args[name] = val
		default:
			st := df.Stages[len(df.Stages)-1]
			st.Instrs = append(st.Instrs, ins)
		}
	}
	if len(df.Stages) == 0 {
		return nil, errors.New("no FROM instruction")
	}
	return df, nil
}

func parseInstruction(line int, text string) (dockerInstruction, error) {
	cmd, rest := cutSpace(strings.TrimSpace(text))
	ins := dockerInstruction{Line: line, Cmd: strings.ToUpper(cmd), Flags: map[string]string{}}
	if !instructionName.MatchString(ins.Cmd) {
		return ins, fmt.Errorf("line %d: bad instruction %q", line, cmd)
	}
	switch ins.Cmd {
	case "FROM", "RUN", "COPY", "ADD", "HEALTHCHECK":
		for strings.HasPrefix(rest, "--") {
			var opt string
			opt, rest = cutSpace(rest)
			name, val, _ := strings.Cut(opt[2:], "=")
			ins.Flags[name] = val
		}
	}
	ins.Rest = rest
	return ins, nil
}

// cutSpace splits s at its first run of white space.
func cutSpace(s string) (first, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// jsonForm parses the exec form ["a", "b"]; ok is false for the shell form.
func jsonForm(rest string) (args []string, ok bool) {
	if !strings.HasPrefix(rest, "[") {
		return nil, false
	}
	if err := json.Unmarshal([]byte(rest), &args); err != nil {
		return nil, false
	}
	return args, true
}

// lookupFunc resolves a variable; nil leaves $VAR in place.
type lookupFunc func(name string) (string, bool)

func mapLookup(m map[string]string) lookupFunc {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// expandAt expands the $NAME or ${NAME} at the start of s. It returns the
// value and how many bytes it took.
func expandAt(s string, lookup lookupFunc) (string, int, error) {
	var name string
	var n int
	if strings.HasPrefix(s, "${") {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return "", 0, fmt.Errorf("unterminated %q", s)
		}
		name, n = s[2:end], end+1
		if identifier.FindString(name) != name {
			return "", 0, fmt.Errorf("unsupported substitution %q", s[:n])
		}
	} else {
		name = identifier.FindString(s[1:])
		n = 1 + len(name)
		if name == "" {
			return "$", 1, nil
		}
	}
	if lookup == nil {
		return s[:n], n, nil
	}
	v, ok := lookup(name)
	if !ok {
		return "", 0, fmt.Errorf("undefined variable %s", name)
	}
	return v, n, nil
}

// expand substitutes variables in s, with no quote handling.
func expand(s string, lookup lookupFunc) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' {
			b.WriteByte(s[i])
			i++
			continue
		}
		v, n, err := expandAt(s[i:], lookup)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
		i += n
	}
	return b.String(), nil
}

// shellWords splits s into words like a POSIX shell: white space separates
// words, single quotes are literal, double quotes allow \" \\ \$ and
// variables, a backslash outside quotes escapes the next character. Variables
// are expanded outside single quotes.
func shellWords(s string, lookup lookupFunc) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case '"':
			inWord = true
			for i++; ; i++ {
				if i >= len(s) {
					return nil, fmt.Errorf("unterminated \" in %q", s)
				}
				if s[i] == '"' {
					break
				}
				switch {
				case s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0:
					cur.WriteByte(s[i+1])
					i++
				case s[i] == '$':
					v, n, err := expandAt(s[i:], lookup)
					if err != nil {
						return nil, err
					}
					cur.WriteString(v)
					i += n - 1
				default:
					cur.WriteByte(s[i])
				}
			}
		case '\\':
			if i+1 < len(s) {
				cur.WriteByte(s[i+1])
				i++
			}
			inWord = true
		case '$':
			v, n, err := expandAt(s[i:], lookup)
			if err != nil {
				return nil, err
			}
			cur.WriteString(v)
			i += n - 1
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// parseArg parses the arguments of ARG: NAME or NAME=default.
func parseArg(rest string, lookup lookupFunc) (name, val string, err error) {
	w, err := shellWords(rest, lookup)
	if err != nil {
		return "", "", err
	}
	if len(w) != 1 {
		return "", "", fmt.Errorf("ARG %s: want one NAME[=default]", rest)
	}
	name, val, _ = strings.Cut(w[0], "=")
	return name, val, nil
}

// parseEnv parses the arguments of ENV: KEY=VALUE ... or the old KEY VALUE.
func parseEnv(rest string, lookup lookupFunc) (map[string]string, error) {
	w, err := shellWords(rest, lookup)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if len(w) > 0 && !strings.Contains(w[0], "=") {
		out[w[0]] = strings.Join(w[1:], " ")
		return out, nil
	}
	for _, kv := range w {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("ENV %s: %q is not KEY=VALUE", rest, kv)
		}
		out[k] = v
	}
	return out, nil
}

// stageState is what is in force at one instruction of a stage.
type stageState struct {
	Vars    map[string]string // ARG and ENV values, for substitution
	Env     map[string]string // ENV only
	Workdir string
	User    string // the last USER; "" if none
}

// state returns the state of st before its instruction upTo (len(st.Instrs):
// at its end). buildArgs are --build-arg values; ARGs without one get their
// defaults.
func (st *dockerStage) state(upTo int, buildArgs map[string]string) (stageState, error) {
	s := stageState{Vars: map[string]string{}, Env: map[string]string{}, Workdir: "/"}
	for _, ins := range st.Instrs[:upTo] {
		switch ins.Cmd {
		case "ARG":
			name, val, err := parseArg(ins.Rest, mapLookup(s.Vars))
			if err != nil {
				return s, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			if v, ok := buildArgs[name]; ok {
				val = v
			}
			s.Vars[name] = val
		case "ENV":
			env, err := parseEnv(ins.Rest, mapLookup(s.Vars))
			if err != nil {
				return s, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			for k, v := range env {
				s.Vars[k], s.Env[k] = v, v
			}
		case "WORKDIR":
			dir, err := expand(ins.Rest, mapLookup(s.Vars))
			if err != nil {
				return s, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			s.Workdir = resolve(s.Workdir, dir)
		case "USER":
			s.User = strings.TrimSpace(ins.Rest)
		}
	}
	return s, nil
}

func resolve(dir, p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(dir, p)
}

// copySpec is a COPY instruction with its sources and destination.
type copySpec struct {
	From, Chown string
	Srcs        []string
	Dest        string // resolved against WORKDIR
}

func (st *dockerStage) copies() ([]copySpec, error) {
	var out []copySpec
	for i, ins := range st.Instrs {
		if ins.Cmd != "COPY" {
			continue
		}
		s, err := st.state(i, nil)
		if err != nil {
			return nil, err
		}
		args, ok := jsonForm(ins.Rest)
		if !ok {
			if args, err = shellWords(ins.Rest, mapLookup(s.Vars)); err != nil {
				return nil, fmt.Errorf("line %d: %w", ins.Line, err)
			}
		}
		if len(args) < 2 {
			return nil, fmt.Errorf("line %d: COPY %s: want SRC... DEST", ins.Line, ins.Rest)
		}
		dest := args[len(args)-1]
		r := resolve(s.Workdir, dest)
		if strings.HasSuffix(dest, "/") && r != "/" {
			r += "/"
		}
		out = append(out, copySpec{From: ins.Flags["from"], Chown: ins.Flags["chown"], Srcs: args[:len(args)-1], Dest: r})
	}
	return out, nil
}

// goBuild is the go build command of a RUN instruction.
type goBuild struct {
	Stage    *dockerStage
	Line     int
	State    stageState        // ARG, ENV and WORKDIR in force at the RUN
	Env      map[string]string // assignments in front of go build
	Args     []string          // the words after "go build"
	Flags    map[string]string // -name: value ("true" for a flag without one)
	Output   string            // -o, resolved against WORKDIR
	Packages []string
}

// go build flags that take a value in the next word.
var goBuildValueFlags = map[string]bool{
	"o": true, "ldflags": true, "gcflags": true, "asmflags": true, "tags": true, "mod": true,
	"modfile": true, "p": true, "pkgdir": true, "installsuffix": true, "buildmode": true,
	"compiler": true, "overlay": true, "pgo": true, "toolexec": true, "gccgoflags": true, "C": true,
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// findGoBuild returns the one go build of the Dockerfile's RUN instructions.
func findGoBuild(df *dockerfile, buildArgs map[string]string) (*goBuild, error) {
	var found []*goBuild
	for _, st := range df.Stages {
		for i, ins := range st.Instrs {
			if ins.Cmd != "RUN" || !strings.Contains(ins.Rest, "go build") {
				continue
			}
			if _, ok := jsonForm(ins.Rest); ok {
				return nil, fmt.Errorf("line %d: go build in the exec form is not supported", ins.Line)
			}
			s, err := st.state(i, buildArgs)
			if err != nil {
				return nil, err
			}
			words, err := shellWords(ins.Rest, mapLookup(s.Vars))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", ins.Line, err)
			}
			// Commands are separated by stand-alone &&, ||, ; and |.
			var cmds [][]string
			cur := []string{}
			for _, w := range words {
				if w == "&&" || w == "||" || w == ";" || w == "|" {
					cmds, cur = append(cmds, cur), []string{}
					continue
				}
				cur = append(cur, w)
			}
			cmds = append(cmds, cur)
			for _, c := range cmds {
				env := map[string]string{}
				for len(c) > 0 && assignment.MatchString(c[0]) {
					k, v, _ := strings.Cut(c[0], "=")
					env[k] = v
					c = c[1:]
				}
				if len(c) < 2 || c[0] != "go" || c[1] != "build" {
					continue
				}
				gb := &goBuild{Stage: st, Line: ins.Line, State: s, Env: env, Args: c[2:], Flags: map[string]string{}}
				if err := gb.parseArgs(); err != nil {
					return nil, fmt.Errorf("line %d: %w", ins.Line, err)
				}
				found = append(found, gb)
			}
		}
	}
	switch len(found) {
	case 0:
		return nil, errors.New("no RUN ... go build")
	case 1:
		return found[0], nil
	default:
		return nil, fmt.Errorf("%d go build commands; want one", len(found))
	}
}

func (gb *goBuild) parseArgs() error {
	args := gb.Args
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		args = args[1:]
		switch {
		case hasVal:
		case goBuildValueFlags[name]:
			if len(args) == 0 {
				return fmt.Errorf("go build -%s without a value", name)
			}
			val, args = args[0], args[1:]
		default:
			val = "true"
		}
		gb.Flags["-"+name] = val
	}
	gb.Packages = args
	if o, ok := gb.Flags["-o"]; ok {
		gb.Output = resolve(gb.State.Workdir, o)
	}
	return nil
}

// argsWithOutput returns Args with the value of -o replaced.
func (gb *goBuild) argsWithOutput(out string) []string {
	args := slices.Clone(gb.Args)
	for i, a := range args {
		switch {
		case a == "-o" || a == "--o":
			args[i+1] = out
			return args
		case strings.HasPrefix(a, "-o=") || strings.HasPrefix(a, "--o="):
			args[i] = "-o=" + out
			return args
		}
	}
	return args
}

func TestParseDockerfile(t *testing.T) {
	const src = `# syntax=docker/dockerfile:1
ARG GO=1.2.3
FROM golang:${GO}-bookworm AS builder
ENV A=1
ENV B="two words" \
    # a comment inside a continuation
    C=$A-x
RUN CGO_ENABLED=0 go build \

    -ldflags "-X main.version=${V:-x}" ./x
from scratch
COPY --from=builder --chown=1:2 ["/out/a b", "/a"]
ENTRYPOINT ["/a", "serve"]
`
	df, err := parseDockerfile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(df.Stages) != 2 || df.Stages[0].Name != "builder" || df.Stages[0].Base != "golang:1.2.3-bookworm" ||
		df.Stages[1].Base != "scratch" || df.Stages[1].Name != "" {
		t.Fatalf("stages: %+v %+v", df.Stages[0], df.Stages[len(df.Stages)-1])
	}
	s, err := df.Stages[0].state(len(df.Stages[0].Instrs), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"A": "1", "B": "two words", "C": "1-x"}; !maps.Equal(s.Env, want) {
		t.Errorf("ENV = %v, want %v", s.Env, want)
	}
	run := df.Stages[0].Instrs[2]
	if run.Cmd != "RUN" || run.Line != 8 || !strings.Contains(run.Rest, `-ldflags "-X main.version=${V:-x}" ./x`) {
		t.Errorf("RUN = %+v", run)
	}
	if _, err := findGoBuild(df, nil); err == nil || !strings.Contains(err.Error(), "unsupported substitution") {
		t.Errorf("findGoBuild with ${V:-x}: err = %v", err)
	}
	cp, err := df.Stages[1].copies()
	if err != nil {
		t.Fatal(err)
	}
	if len(cp) != 1 || !df.Stages[0].ref(cp[0].From) || cp[0].Chown != "1:2" || cp[0].Srcs[0] != "/out/a b" || cp[0].Dest != "/a" {
		t.Errorf("COPY = %+v", cp)
	}
	if args, ok := jsonForm(df.Stages[1].Instrs[1].Rest); !ok || !slices.Equal(args, []string{"/a", "serve"}) {
		t.Errorf("ENTRYPOINT = %q %v", args, ok)
	}

	w, err := shellWords(`A=1 go build -o '/o $X' "-X a=$V" \"q ./p`, mapLookup(map[string]string{"V": "v1"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"A=1", "go", "build", "-o", "/o $X", "-X a=v1", `"q`, "./p"}; !slices.Equal(w, want) {
		t.Errorf("shellWords = %q, want %q", w, want)
	}
	for _, bad := range []string{"FROM a\nRUN x \\", "RUN x", "FROM a b", "# escape=`\nFROM a"} {
		if _, err := parseDockerfile(bad); err == nil {
			t.Errorf("parseDockerfile(%q) accepted it", bad)
		}
	}
}

// ---------------------------------------------------------------------------
// Dockerfile checks.

// image is what the final stage gives a container.
type image struct {
	Stage      *dockerStage
	Env        map[string]string // ENV of the final stage
	User       string            // USER; "" if none
	Volumes    []string
	Expose     []string
	Entrypoint []string // exec form
	Cmd        []string // exec form
	DataDir    string   // FBP_DATA_DIR
}

func imageOf(df *dockerfile) (*image, error) {
	st := df.Stages[len(df.Stages)-1]
	s, err := st.state(len(st.Instrs), nil)
	if err != nil {
		return nil, err
	}
	img := &image{Stage: st, Env: s.Env, User: s.User, DataDir: s.Env["FBP_DATA_DIR"]}
	for _, ins := range st.Instrs {
		switch ins.Cmd {
		case "VOLUME":
			v, ok := jsonForm(ins.Rest)
			if !ok {
				v = strings.Fields(ins.Rest)
			}
			img.Volumes = append(img.Volumes, v...)
		case "EXPOSE":
			img.Expose = append(img.Expose, strings.Fields(ins.Rest)...)
		case "ENTRYPOINT", "CMD":
			v, ok := jsonForm(ins.Rest)
			if !ok {
				return nil, fmt.Errorf("line %d: %s must use the exec form [...] (no shell in the image)", ins.Line, ins.Cmd)
			}
			if ins.Cmd == "ENTRYPOINT" {
				img.Entrypoint = v
			} else {
				img.Cmd = v
			}
		}
	}
	return img, nil
}

// goModVersion returns the go directive of go.mod.
func goModVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// versionAtLeast reports whether the image tag version v (1.26, 1.26.8) is at
// least min; a tag without a patch level floats to the newest one.
func versionAtLeast(v, min string) bool {
	a, b := strings.Split(v, "."), strings.Split(min, ".")
	for i := range a {
		if i >= len(b) {
			return true
		}
		x, err1 := strconv.Atoi(a[i])
		y, err2 := strconv.Atoi(b[i])
		if err1 != nil || err2 != nil {
			return false
		}
		if x != y {
			return x > y
		}
	}
	return true
}

// knownEnv lists the environment variables the proxy reads.
func knownEnv() map[string]bool {
	m := map[string]bool{config.ConfigEnv: true}
	for _, o := range config.Options() {
		m[o.Env] = true
	}
	return m
}

// loadConfig loads the serve configuration from the environment env alone.
func loadConfig(env map[string]string) (config.Config, error) {
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	return config.Load("", list, nil)
}

func isRoot(user string) bool {
	u, _, _ := strings.Cut(user, ":")
	return u == "" || u == "root" || u == "0"
}

func listenPort(listen string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, err
	}
	port, err = strconv.Atoi(p)
	return h, port, err
}

// checkDockerfile returns what is wrong with the Dockerfile src.
func checkDockerfile(src, goVersion string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	df, err := parseDockerfile(src)
	if err != nil {
		return []string{err.Error()}
	}
	if len(df.Stages) < 2 {
		bad("%d stage(s); want a build stage and a small final stage", len(df.Stages))
		return problems
	}
	final := df.Stages[len(df.Stages)-1]

	// The build stage and its go build.
	const sentinel = "sentinel-version-7f3a"
	gb, err := findGoBuild(df, map[string]string{"VERSION": sentinel})
	if err != nil {
		bad("go build: %v", err)
		return problems
	}
	if gb.Stage == final {
		bad("go build runs in the final stage")
	}
	if base, ok := strings.CutPrefix(gb.Stage.Base, "golang:"); !ok {
		bad("build stage is FROM %s; want a golang: image", gb.Stage.Base)
	} else if v, _, _ := strings.Cut(base, "-"); !versionAtLeast(v, goVersion) {
		bad("build stage is FROM %s, older than go.mod's go %s", gb.Stage.Base, goVersion)
	}
	if gb.Env["CGO_ENABLED"] != "0" {
		bad("go build: CGO_ENABLED=%q; want 0 for a static binary", gb.Env["CGO_ENABLED"])
	}
	if gb.Flags["-trimpath"] != "true" {
		bad("go build: no -trimpath")
	}
	ld := strings.Fields(gb.Flags["-ldflags"])
	if !slices.Contains(ld, "-s") || !slices.Contains(ld, "-w") {
		bad("go build: -ldflags %q does not strip (-s -w)", gb.Flags["-ldflags"])
	}
	if !strings.Contains(gb.Flags["-ldflags"], "-X main.version="+sentinel) {
		bad("go build: -ldflags %q does not set main.version from ARG VERSION", gb.Flags["-ldflags"])
	}
	if !path.IsAbs(gb.Output) {
		bad("go build: -o %q; want an absolute output path", gb.Flags["-o"])
	}
	if !slices.Equal(gb.Packages, []string{mainPackage}) {
		bad("go build of %q; want %s", gb.Packages, mainPackage)
	}
	// The build context must be copied into the go build's directory.
	bcopies, err := gb.Stage.copies()
	if err != nil {
		bad("%v", err)
	}
	if !slices.ContainsFunc(bcopies, func(c copySpec) bool {
		return c.From == "" && slices.Equal(c.Srcs, []string{"."}) && path.Clean(c.Dest) == gb.State.Workdir
	}) {
		bad("build stage: no COPY . into the WORKDIR %s of go build", gb.State.Workdir)
	}

	// The final stage.
	img, err := imageOf(df)
	if err != nil {
		bad("%v", err)
		return problems
	}
	distroless := strings.HasPrefix(final.Base, "gcr.io/distroless/")
	if !distroless && final.Base != "scratch" {
		bad("final stage is FROM %s; want gcr.io/distroless/... or scratch", final.Base)
	}
	switch {
	case img.User != "":
		if isRoot(img.User) {
			bad("final stage runs as USER %s; want a non-root user", img.User)
		}
	case distroless && strings.HasSuffix(final.Base, ":nonroot"):
	default:
		bad("final stage has no USER and %s does not default to a non-root user", final.Base)
	}
	copies, err := final.copies()
	if err != nil {
		bad("%v", err)
	}
	if final.Base == "scratch" && !slices.ContainsFunc(copies, func(c copySpec) bool {
		return strings.HasPrefix(c.Dest, "/etc/ssl/certs")
	}) {
		bad("FROM scratch without CA certificates in /etc/ssl/certs")
	}

	if len(img.Entrypoint) == 0 || !path.IsAbs(img.Entrypoint[0]) {
		bad("ENTRYPOINT %q; want the binary's absolute path in the exec form", img.Entrypoint)
	} else if !slices.ContainsFunc(copies, func(c copySpec) bool {
		dest := c.Dest
		if strings.HasSuffix(dest, "/") {
			dest += path.Base(gb.Output)
		}
		return gb.Stage.ref(c.From) && slices.Equal(c.Srcs, []string{gb.Output}) && dest == img.Entrypoint[0]
	}) {
		bad("no COPY --from=%s %s %s for the ENTRYPOINT", gb.Stage.Name, gb.Output, img.Entrypoint[0])
	}
	if args := append(slices.Clone(img.Entrypoint), img.Cmd...); len(args) < 2 || args[1] != "serve" {
		bad("ENTRYPOINT %q + CMD %q do not run serve", img.Entrypoint, img.Cmd)
	}

	known := knownEnv()
	for k := range img.Env {
		if strings.HasPrefix(k, config.EnvPrefix) && !known[k] {
			bad("ENV %s is not a variable the proxy reads", k)
		}
	}
	if !path.IsAbs(img.DataDir) {
		bad("ENV FBP_DATA_DIR=%q; want an absolute path", img.DataDir)
	} else {
		if !slices.Contains(img.Volumes, img.DataDir) {
			bad("no VOLUME %s for the data directory (VOLUMEs: %q)", img.DataDir, img.Volumes)
		}
		// distroless has no shell to mkdir and chown with: the directory comes
		// from the build stage, owned by the user.
		if !slices.ContainsFunc(copies, func(c copySpec) bool {
			u, _, _ := strings.Cut(c.Chown, ":")
			return path.Clean(c.Dest) == img.DataDir && c.From != "" && !isRoot(u) &&
				(img.User == "" || u == strings.Split(img.User, ":")[0])
		}) {
			bad("the data directory %s is not copied in with --chown to the non-root user %s", img.DataDir, img.User)
		}
	}
	host, port, err := listenPort(img.Env["FBP_LISTEN"])
	switch {
	case err != nil:
		bad("ENV FBP_LISTEN=%q: %v", img.Env["FBP_LISTEN"], err)
	case host == "localhost" || net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback():
		bad("ENV FBP_LISTEN=%q listens on loopback, unreachable from outside the container", img.Env["FBP_LISTEN"])
	case !slices.Contains(img.Expose, strconv.Itoa(port)) && !slices.Contains(img.Expose, strconv.Itoa(port)+"/tcp"):
		bad("EXPOSE %q does not include the listen port %d", img.Expose, port)
	}
	env := map[string]string{"FBP_UPSTREAM": "http://fhir.invalid:8080/fhir"}
	for k, v := range img.Env {
		env[k] = v
	}
	if cfg, err := loadConfig(env); err != nil {
		bad("the image's ENV does not make a valid configuration: %v", err)
	} else if cfg.DataDir != img.DataDir {
		bad("data_dir is %q in the container, not the VOLUME %s", cfg.DataDir, img.DataDir)
	}
	return problems
}

func readDockerfile(t *testing.T) (string, *dockerfile, *image) {
	t.Helper()
	b, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	df, err := parseDockerfile(string(b))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	img, err := imageOf(df)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return string(b), df, img
}

func TestDockerfile(t *testing.T) {
	src, _, _ := readDockerfile(t)
	for _, p := range checkDockerfile(src, goModVersion(t)) {
		t.Errorf("Dockerfile: %s", p)
	}
}

// mutate applies old -> new to src once and fails if old is not there, so a
// mutation that no longer applies is noticed rather than passing silently.
func mutate(t *testing.T, src, old, new string) string {
	t.Helper()
	if !strings.Contains(src, old) {
		t.Fatalf("mutation: %q not found", old)
	}
	return strings.Replace(src, old, new, 1)
}

func expectProblem(t *testing.T, name string, problems []string, want string) {
	t.Helper()
	for _, p := range problems {
		if strings.Contains(p, want) {
			return
		}
	}
	t.Errorf("%s: no problem mentioning %q; got %q", name, want, problems)
}

// TestDockerfileChecksCatchMistakes breaks the real Dockerfile in typical ways
// and expects the checks to notice.
func TestDockerfileChecksCatchMistakes(t *testing.T) {
	src, df, img := readDockerfile(t)
	gomod := goModVersion(t)
	final := df.Stages[len(df.Stages)-1]
	cases := []struct{ name, old, new, want string }{
		{"debian final stage", "FROM " + final.Base, "FROM debian:bookworm-slim", "want gcr.io/distroless"},
		{"root user", "USER " + img.User, "USER root", "non-root"},
		{"no CGO_ENABLED=0", "CGO_ENABLED=0 ", "", "CGO_ENABLED"},
		{"no -trimpath", "-trimpath", "", "-trimpath"},
		{"no VOLUME", "VOLUME", "LABEL x=", "no VOLUME"},
		{"wrong env name", "FBP_DATA_DIR=", "FBP_DATADIR=", "not a variable the proxy reads"},
		{"loopback listen", "FBP_LISTEN=0.0.0.0:", "FBP_LISTEN=127.0.0.1:", "loopback"},
		{"entrypoint elsewhere", `ENTRYPOINT ["` + img.Entrypoint[0], `ENTRYPOINT ["/usr/bin/x`, "for the ENTRYPOINT"},
		{"shell-form entrypoint", `ENTRYPOINT [`, `ENTRYPOINT /x [`, "exec form"},
		{"old builder", "FROM golang:", "FROM golang:1.20-", "older than go.mod"},
		{"VERSION not declared in the build stage", "ARG VERSION", "ARG OTHER", "undefined variable VERSION"},
		{"data dir not chowned", "--chown=", "--chmod=", "--chown"},
	}
	for _, c := range cases {
		expectProblem(t, c.name, checkDockerfile(mutate(t, src, c.old, c.new), gomod), c.want)
	}
}

// ---------------------------------------------------------------------------
// The build: the Dockerfile's go build, run here on a copy of the build
// context (the repository less .dockerignore), then the binary is checked.

type ignoreRule struct {
	re      *regexp.Regexp
	exclude bool
}

// parseDockerignore turns .dockerignore patterns into rules: paths relative
// to the context root, * and ? within one segment, ** across segments, !
// re-includes; the last matching rule wins and a rule matching a directory
// covers what is under it.
func parseDockerignore(text string) ([]ignoreRule, error) {
	var rules []ignoreRule
	for _, line := range strings.Split(text, "\n") {
		p := strings.TrimSpace(line)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		r := ignoreRule{exclude: true}
		if rest, ok := strings.CutPrefix(p, "!"); ok {
			r.exclude, p = false, strings.TrimSpace(rest)
		}
		p = path.Clean(strings.TrimPrefix(p, "/"))
		var b strings.Builder
		b.WriteString("^")
		for i := 0; i < len(p); i++ {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				b.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				b.WriteString(".*")
				i++
			case p[i] == '*':
				b.WriteString("[^/]*")
			case p[i] == '?':
				b.WriteString("[^/]")
			case p[i] == '[' || p[i] == '\\':
				return nil, fmt.Errorf(".dockerignore: %q: character classes and escapes are not supported here", line)
			default:
				b.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		}
		b.WriteString("$")
		r.re = regexp.MustCompile(b.String())
		rules = append(rules, r)
	}
	return rules, nil
}

func ignored(rules []ignoreRule, rel string) bool {
	out := false
	for _, r := range rules {
		for p := rel; p != "."; p = path.Dir(p) {
			if r.re.MatchString(p) {
				out = r.exclude
				break
			}
		}
	}
	return out
}

// copyContext copies the files of root that .dockerignore keeps to dst.
func copyContext(root, dst string, rules []ignoreRule) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		if ignored(rules, filepath.ToSlash(rel)) {
			if d.IsDir() && !slices.ContainsFunc(rules, func(r ignoreRule) bool { return !r.exclude }) {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		info, err := os.Stat(p) // follows symbolic links
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
}

func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := parseDockerignore(string(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".git", ".git/config", "data", "data/jobs.db", "fhir-bulk-proxy", "deploy.test", "cover.out"} {
		if !ignored(rules, p) {
			t.Errorf(".dockerignore keeps %s in the build context", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/fhir-bulk-proxy/main.go", "config/config.go", "app/app.go"} {
		if ignored(rules, p) {
			t.Errorf(".dockerignore drops %s, which the build needs", p)
		}
	}
}

func TestDockerBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the image is a Linux image; the ELF checks need a Linux build")
	}
	_, df, img := readDockerfile(t)
	testVersion := "deploytest-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	gb, err := findGoBuild(df, map[string]string{"VERSION": testVersion})
	if err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}

	// The build context as docker would send it.
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := parseDockerignore(string(ignore))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	src, out := filepath.Join(tmp, "src"), filepath.Join(tmp, "out", path.Base(gb.Output))
	if err := copyContext(repoRoot, src, rules); err != nil {
		t.Fatal(err)
	}

	// The same command and environment. ENV values that name paths inside the
	// builder image are left out: they mean nothing here.
	env := os.Environ()
	for k, v := range gb.State.Env {
		switch k {
		case "PATH", "HOME", "GOPATH", "GOROOT", "GOCACHE", "GOMODCACHE":
		default:
			env = append(env, k+"="+v)
		}
	}
	for k, v := range gb.Env {
		env = append(env, k+"="+v)
	}
	args := append([]string{"build"}, gb.argsWithOutput(out)...)
	cmd := exec.CommandContext(t.Context(), goBin, args...)
	cmd.Dir, cmd.Env = src, env
	t.Logf("Dockerfile line %d: %s go %s", gb.Line, envString(gb.Env), quoteWords(args))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}

	// Statically linked: no interpreter, no shared libraries.
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has a PT_INTERP program header: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %q (%v)", libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("the binary has a symbol table: -ldflags -s did not apply")
	}

	// The build settings Go recorded.
	bi, err := buildinfo.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q; want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	if bi.Path != "github.com/fhir-bulk-proxy/fhir-bulk-proxy/cmd/fhir-bulk-proxy" {
		t.Errorf("built %s", bi.Path)
	}

	// It runs and reports the injected version.
	vout, err := exec.CommandContext(t.Context(), out, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", out, err, vout)
	}
	if !strings.HasPrefix(string(vout), "fhir-bulk-proxy "+testVersion+" ") {
		t.Errorf("version printed %q; want fhir-bulk-proxy %s", vout, testVersion)
	}

	// What the image runs (ENTRYPOINT + CMD) is a command of this binary.
	hout, err := exec.CommandContext(t.Context(), out, append(slices.Clone(img.Cmd), "--help")...).CombinedOutput()
	if err != nil || !strings.Contains(string(hout), "--data-dir") {
		t.Errorf("%s %s --help: %v\n%s", out, strings.Join(img.Cmd, " "), err, hout)
	}
}

// quoteWords joins words for a log line, quoting those with white space.
func quoteWords(words []string) string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = w
		if strings.ContainsAny(w, " \t") {
			out[i] = strconv.Quote(w)
		}
	}
	return strings.Join(out, " ")
}

func envString(env map[string]string) string {
	var s []string
	for k, v := range env {
		s = append(s, k+"="+v)
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// ---------------------------------------------------------------------------
// compose.yaml

type composeFile struct {
	Services map[string]*composeService `yaml:"services"`
	Volumes  map[string]any             `yaml:"volumes"`
}

type composeService struct {
	Image       string         `yaml:"image"`
	Build       *composeBuild  `yaml:"build"`
	Environment composeEnv     `yaml:"environment"`
	Ports       []composePort  `yaml:"ports"`
	Volumes     []composeMount `yaml:"volumes"`
	DependsOn   yaml.Node      `yaml:"depends_on"`
	User        string         `yaml:"user"`
	ReadOnly    bool           `yaml:"read_only"`
	CapDrop     []string       `yaml:"cap_drop"`
	Healthcheck *struct {
		Test yaml.Node `yaml:"test"`
	} `yaml:"healthcheck"`
	// Read by the checks of compose-replicated.yaml.
	Command         yaml.Node `yaml:"command"`    // a string or a list
	Entrypoint      yaml.Node `yaml:"entrypoint"` // a string or a list
	Tmpfs           yaml.Node `yaml:"tmpfs"`      // a string or a list
	SecurityOpt     []string  `yaml:"security_opt"`
	StopGracePeriod string    `yaml:"stop_grace_period"`
}

// composeBuild is build: DIR or build: {context, dockerfile, args}.
type composeBuild struct {
	Context    string     `yaml:"context"`
	Dockerfile string     `yaml:"dockerfile"`
	Args       composeEnv `yaml:"args"`
}

func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

// composeEnv is a mapping or a list of KEY=VALUE.
type composeEnv map[string]string

func (e *composeEnv) UnmarshalYAML(n *yaml.Node) error {
	m := composeEnv{}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			m[n.Content[i].Value] = n.Content[i+1].Value
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			k, v, _ := strings.Cut(c.Value, "=")
			m[k] = v
		}
	default:
		return fmt.Errorf("line %d: environment must be a mapping or a list", n.Line)
	}
	*e = m
	return nil
}

// composePort is "[IP:]PUBLISHED:TARGET[/proto]" or {target, published}.
type composePort struct{ Target, Published string }

func (p *composePort) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		var long struct {
			Target    string `yaml:"target"`
			Published string `yaml:"published"`
		}
		if err := n.Decode(&long); err != nil {
			return err
		}
		*p = composePort(long)
		return nil
	}
	s, _, _ := strings.Cut(n.Value, "/")
	parts := strings.Split(s, ":")
	p.Target = parts[len(parts)-1]
	if len(parts) > 1 {
		p.Published = parts[len(parts)-2]
	}
	return nil
}

// composeMount is "SOURCE:TARGET[:MODE]" or {type, source, target}.
type composeMount struct{ Source, Target string }

func (m *composeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		var long struct {
			Source string `yaml:"source"`
			Target string `yaml:"target"`
		}
		if err := n.Decode(&long); err != nil {
			return err
		}
		*m = composeMount(long)
		return nil
	}
	parts := strings.Split(n.Value, ":")
	if len(parts) == 1 {
		m.Target = parts[0] // an anonymous volume
		return nil
	}
	m.Source, m.Target = parts[0], parts[1]
	return nil
}

// nodeNames returns the scalars of a sequence or the keys of a mapping.
func nodeNames(n yaml.Node) []string {
	var out []string
	switch n.Kind {
	case yaml.SequenceNode:
		for _, c := range n.Content {
			out = append(out, c.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(n.Content); i += 2 {
			out = append(out, n.Content[i].Value)
		}
	}
	return out
}

// checkUpstream checks that the upstream URL raw points at the FHIR server at
// one of hosts, on its port and FHIR base path.
func checkUpstream(raw string, hosts []string, port int) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if !slices.Contains(hosts, u.Hostname()) || u.Port() != strconv.Itoa(port) || strings.TrimRight(u.Path, "/") != fhirServerPath {
		return fmt.Errorf("%q; want http://{%s}:%d%s", raw, strings.Join(hosts, ","), port, fhirServerPath)
	}
	return nil
}

func checkCompose(data []byte, img *image) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var cf composeFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		return []string{err.Error()}
	}
	var fhirName, proxyName string
	for name, s := range cf.Services {
		if strings.HasPrefix(s.Image, fhirServerImage+":") || s.Image == fhirServerImage {
			fhirName = name
		}
		if s.Build != nil {
			proxyName = name
		}
	}
	if fhirName == "" || proxyName == "" {
		bad("want a %s service and a service built from the Dockerfile; services: %v", fhirServerImage, slices.Sorted(maps.Keys(cf.Services)))
		return problems
	}
	proxy := cf.Services[proxyName]

	ctx := filepath.Join(filepath.Dir(composePath), proxy.Build.Context)
	dockerfile := orDefault(proxy.Build.Dockerfile, "Dockerfile")
	wantRoot, _ := filepath.Abs(repoRoot)
	if got, _ := filepath.Abs(ctx); got != wantRoot {
		bad("build context %q is not the repository root", proxy.Build.Context)
	} else if _, err := os.Stat(filepath.Join(ctx, dockerfile)); err != nil {
		bad("build: %v", err)
	}
	if !slices.Contains(nodeNames(proxy.DependsOn), fhirName) {
		bad("%s does not depend on %s", proxyName, fhirName)
	}
	if proxy.User != "" && isRoot(proxy.User) {
		bad("%s runs as user %s", proxyName, proxy.User)
	}
	if !proxy.ReadOnly || !slices.Contains(proxy.CapDrop, "ALL") {
		bad("%s: want read_only: true and cap_drop: [ALL]", proxyName)
	}
	if hc := proxy.Healthcheck; hc != nil {
		test := nodeNames(hc.Test)
		if hc.Test.Kind == yaml.ScalarNode {
			test = []string{"CMD-SHELL", hc.Test.Value}
		}
		if len(test) == 0 || test[0] != "NONE" && (test[0] != "CMD" || len(test) < 2 || test[1] != img.Entrypoint[0]) {
			bad("%s: healthcheck %q needs a shell or tools the distroless image does not have", proxyName, test)
		}
	}

	known := knownEnv()
	env := map[string]string{}
	for k, v := range img.Env {
		env[k] = v
	}
	for k, v := range proxy.Environment {
		if strings.HasPrefix(k, config.EnvPrefix) && !known[k] {
			bad("environment %s is not a variable the proxy reads", k)
		}
		env[k] = v
	}
	if err := checkUpstream(env["FBP_UPSTREAM"], []string{fhirName}, fhirServerPort); err != nil {
		bad("FBP_UPSTREAM: %v", err)
	}
	cfg, err := loadConfig(env)
	if err != nil {
		bad("the proxy's environment is not a valid configuration: %v", err)
		return problems
	}
	if cfg.DataDir != img.DataDir {
		bad("data_dir is %q; the image's VOLUME is %s", cfg.DataDir, img.DataDir)
	}
	if i := slices.IndexFunc(proxy.Volumes, func(m composeMount) bool { return path.Clean(m.Target) == cfg.DataDir }); i < 0 {
		bad("no volume mounted at the data directory %s", cfg.DataDir)
	} else if src := proxy.Volumes[i].Source; src == "" || strings.ContainsAny(src[:1], "./~$") {
		bad("the data directory is mounted from %q; want a named volume", src)
	} else if _, ok := cf.Volumes[src]; !ok {
		bad("volume %s is not declared under volumes:", src)
	}
	if _, port, err := listenPort(cfg.Listen); err != nil {
		bad("listen %q: %v", cfg.Listen, err)
	} else if !slices.ContainsFunc(proxy.Ports, func(p composePort) bool { return p.Target == strconv.Itoa(port) && p.Published != "" }) {
		bad("the listen port %d is not published (ports: %v)", port, proxy.Ports)
	}
	return problems
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func TestCompose(t *testing.T) {
	_, _, img := readDockerfile(t)
	data, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkCompose(data, img) {
		t.Errorf("compose.yaml: %s", p)
	}

	src := string(data)
	cases := []struct{ name, old, new, want string }{
		{"upstream on localhost", "http://hapi:8080/fhir", "http://localhost:8080/fhir", "FBP_UPSTREAM"},
		{"volume elsewhere", "proxy-data:" + img.DataDir, "proxy-data:/data", "no volume mounted"},
		{"bind mount", "- proxy-data:", "- ./data:", "named volume"},
		{"unknown variable", "FBP_UPSTREAM:", "FBP_UPSTREAM_URL:", "not a variable"},
		{"port not published", `"8080:8080"`, `"9090:9090"`, "not published"},
		{"shell healthcheck", "    read_only: true", "    healthcheck:\n      test: curl -f http://localhost:8080/healthz\n    read_only: true", "healthcheck"},
	}
	for _, c := range cases {
		expectProblem(t, c.name, checkCompose([]byte(mutate(t, src, c.old, c.new)), img), c.want)
	}
}

// ---------------------------------------------------------------------------
// kubernetes.yaml

type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
	// Secrets and ConfigMaps.
	StringData map[string]string `yaml:"stringData"`
	Data       map[string]string `yaml:"data"`
}

type deploymentSpec struct {
	Replicas *int `yaml:"replicas"`
	Strategy struct {
		Type          string `yaml:"type"`
		RollingUpdate *struct {
			MaxUnavailable yaml.Node `yaml:"maxUnavailable"` // an int or a percentage
		} `yaml:"rollingUpdate"`
	} `yaml:"strategy"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"metadata"`
		Spec podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	SecurityContext securityContext `yaml:"securityContext"`
	Containers      []container     `yaml:"containers"`
	Volumes         []struct {
		Name                  string `yaml:"name"`
		PersistentVolumeClaim *struct {
			ClaimName string `yaml:"claimName"`
		} `yaml:"persistentVolumeClaim"`
		EmptyDir *struct {
			SizeLimit string `yaml:"sizeLimit"`
		} `yaml:"emptyDir"`
	} `yaml:"volumes"`
	// Read by the checks of kubernetes-replicated.yaml.
	InitContainers                []container `yaml:"initContainers"`
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
	Affinity                      struct {
		PodAntiAffinity *struct {
			Preferred []struct {
				Weight          int `yaml:"weight"`
				PodAffinityTerm struct {
					TopologyKey   string `yaml:"topologyKey"`
					LabelSelector struct {
						MatchLabels map[string]string `yaml:"matchLabels"`
					} `yaml:"labelSelector"`
				} `yaml:"podAffinityTerm"`
			} `yaml:"preferredDuringSchedulingIgnoredDuringExecution"`
		} `yaml:"podAntiAffinity"`
	} `yaml:"affinity"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile *struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []envVar `yaml:"env"`
	EnvFrom []struct {
		SecretRef    *struct{ Name string } `yaml:"secretRef"`
		ConfigMapRef *struct{ Name string } `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports          []containerPort `yaml:"ports"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	StartupProbe   *probe          `yaml:"startupProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []volumeMount   `yaml:"volumeMounts"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
		ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
	} `yaml:"valueFrom"`
}

type keyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

// portNumber resolves a port given by number or by container port name.
func (c *container) portNumber(p string) int {
	if n, err := strconv.Atoi(p); err == nil {
		return n
	}
	for _, cp := range c.Ports {
		if cp.Name == p {
			return cp.ContainerPort
		}
	}
	return 0
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"` // a number or a port name
	} `yaml:"httpGet"`
	InitialDelaySeconds int  `yaml:"initialDelaySeconds"`
	PeriodSeconds       *int `yaml:"periodSeconds"`
	FailureThreshold    *int `yaml:"failureThreshold"`
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []servicePort     `yaml:"ports"`
}

type servicePort struct {
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"` // a number or a container port name
}

type pvcSpec struct {
	AccessModes []string `yaml:"accessModes"`
}

func subset(sub, of map[string]string) bool {
	for k, v := range sub {
		if w, ok := of[k]; !ok || w != v {
			return false
		}
	}
	return len(sub) > 0
}

func checkKubernetes(data []byte, img *image) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var deployments []deploymentSpec
	var services []serviceSpec
	pvcs := map[string]pvcSpec{}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	for {
		var obj k8sObject
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return []string{err.Error()}
		}
		switch obj.Kind {
		case "Deployment":
			var d deploymentSpec
			if err := obj.Spec.Decode(&d); err != nil {
				return []string{err.Error()}
			}
			deployments = append(deployments, d)
		case "Service":
			var s serviceSpec
			if err := obj.Spec.Decode(&s); err != nil {
				return []string{err.Error()}
			}
			services = append(services, s)
		case "PersistentVolumeClaim":
			var p pvcSpec
			if err := obj.Spec.Decode(&p); err != nil {
				return []string{err.Error()}
			}
			pvcs[obj.Metadata.Name] = p
		case "":
			// an empty document
		}
	}
	if len(deployments) != 1 || len(services) != 1 {
		bad("%d Deployments and %d Services; want one of each", len(deployments), len(services))
		return problems
	}
	d := deployments[0]
	if d.Replicas == nil || *d.Replicas != 1 {
		bad("replicas must be set to 1: the bbolt job store is single-writer")
	}
	if d.Strategy.Type != "Recreate" {
		bad("strategy %q; want Recreate, so two Pods never share the volume and the bbolt lock", d.Strategy.Type)
	}
	pod := d.Template.Spec
	if !subset(d.Selector.MatchLabels, d.Template.Metadata.Labels) {
		bad("selector %v does not match the Pod labels %v", d.Selector.MatchLabels, d.Template.Metadata.Labels)
	}
	if len(pod.Containers) != 2 {
		bad("%d containers; want the FHIR server and the proxy", len(pod.Containers))
		return problems
	}
	var proxy, fhir *container
	for i := range pod.Containers {
		c := &pod.Containers[i]
		switch {
		case c.Name == "fhir-bulk-proxy":
			proxy = c
		case strings.HasPrefix(c.Image, fhirServerImage+":"):
			fhir = c
		}
	}
	if proxy == nil || fhir == nil {
		bad("want a container named fhir-bulk-proxy and a %s container", fhirServerImage)
		return problems
	}

	for _, c := range pod.Containers {
		nonRoot := pod.SecurityContext.RunAsNonRoot
		if c.SecurityContext.RunAsNonRoot != nil {
			nonRoot = c.SecurityContext.RunAsNonRoot
		}
		user := pod.SecurityContext.RunAsUser
		if c.SecurityContext.RunAsUser != nil {
			user = c.SecurityContext.RunAsUser
		}
		if nonRoot == nil || !*nonRoot || user != nil && *user == 0 {
			bad("container %s: want runAsNonRoot: true (and no runAsUser 0)", c.Name)
		}
		if sc := c.SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("container %s: want allowPrivilegeEscalation: false and capabilities.drop: [ALL]", c.Name)
		}
	}
	if ro := proxy.SecurityContext.ReadOnlyRootFilesystem; ro == nil || !*ro {
		bad("the proxy: want readOnlyRootFilesystem: true")
	}
	if len(proxy.Command) > 0 {
		bad("the proxy sets command %q, replacing the image's ENTRYPOINT", proxy.Command)
	}
	if len(proxy.Args) > 0 && proxy.Args[0] != "serve" {
		bad("the proxy runs %q, not serve", proxy.Args)
	}
	for _, kind := range []string{"cpu", "memory"} {
		if proxy.Resources.Requests[kind] == "" {
			bad("the proxy has no %s request", kind)
		}
	}
	if proxy.Resources.Limits["memory"] == "" {
		bad("the proxy has no memory limit")
	}

	known := knownEnv()
	env := map[string]string{}
	for k, v := range img.Env {
		env[k] = v
	}
	for _, e := range proxy.Env {
		if strings.HasPrefix(e.Name, config.EnvPrefix) && !known[e.Name] {
			bad("env %s is not a variable the proxy reads", e.Name)
		}
		env[e.Name] = e.Value
	}
	fhirPort := 0
	if len(fhir.Ports) > 0 {
		fhirPort = fhir.Ports[0].ContainerPort
	}
	if fhirPort != fhirServerPort {
		bad("the FHIR server's containerPort is %d; HAPI listens on %d", fhirPort, fhirServerPort)
	}
	if err := checkUpstream(env["FBP_UPSTREAM"], []string{"127.0.0.1", "localhost"}, fhirPort); err != nil {
		bad("FBP_UPSTREAM: %v", err)
	}
	cfg, err := loadConfig(env)
	if err != nil {
		bad("the proxy's environment is not a valid configuration: %v", err)
		return problems
	}
	_, port, err := listenPort(cfg.Listen)
	if err != nil {
		bad("listen %q: %v", cfg.Listen, err)
	}
	if port == fhirPort {
		bad("the proxy listens on %d like the FHIR server: they share the Pod's network", port)
	}
	if !slices.ContainsFunc(proxy.Ports, func(p containerPort) bool { return p.ContainerPort == port }) {
		bad("the proxy listens on %d, which is not one of its containerPorts", port)
	}

	for _, pr := range []struct {
		name  string
		probe *probe
		path  string
	}{{"livenessProbe", proxy.LivenessProbe, "/healthz"}, {"readinessProbe", proxy.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil || pr.probe.HTTPGet.Path != pr.path || proxy.portNumber(pr.probe.HTTPGet.Port) != port {
			bad("the proxy's %s: want httpGet %s on port %d", pr.name, pr.path, port)
		}
	}

	if cfg.DataDir != img.DataDir {
		bad("data_dir is %q; the image's VOLUME is %s", cfg.DataDir, img.DataDir)
	}
	mount := slices.IndexFunc(proxy.VolumeMounts, func(m volumeMount) bool {
		return path.Clean(m.MountPath) == cfg.DataDir && !m.ReadOnly
	})
	if mount < 0 {
		bad("no writable volume mounted at the data directory %s", cfg.DataDir)
	} else {
		claim := ""
		for _, v := range pod.Volumes {
			if v.Name == proxy.VolumeMounts[mount].Name && v.PersistentVolumeClaim != nil {
				claim = v.PersistentVolumeClaim.ClaimName
			}
		}
		if pvc, ok := pvcs[claim]; !ok {
			bad("the data directory's volume %q is not a PersistentVolumeClaim of this file", proxy.VolumeMounts[mount].Name)
		} else if !slices.Contains(pvc.AccessModes, "ReadWriteOnce") {
			bad("PersistentVolumeClaim %s: access modes %v; want ReadWriteOnce", claim, pvc.AccessModes)
		}
	}

	ann := d.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/port"] != strconv.Itoa(port) {
		bad("Pod annotations %v: want prometheus.io/scrape \"true\", path /metrics, port %d", ann, port)
	}

	svc := services[0]
	if !subset(svc.Selector, d.Template.Metadata.Labels) {
		bad("the Service selector %v does not match the Pod labels", svc.Selector)
	}
	if !slices.ContainsFunc(svc.Ports, func(p servicePort) bool {
		return proxy.portNumber(orDefault(p.TargetPort, strconv.Itoa(p.Port))) == port
	}) {
		bad("the Service does not expose the proxy's port %d", port)
	}
	return problems
}

func TestKubernetes(t *testing.T) {
	_, _, img := readDockerfile(t)
	data, err := os.ReadFile(kubernetesPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkKubernetes(data, img) {
		t.Errorf("kubernetes.yaml: %s", p)
	}

	src := string(data)
	cases := []struct{ name, old, new, want string }{
		{"two replicas", "replicas: 1", "replicas: 2", "replicas"},
		{"readiness path", "path: /readyz", "path: /ready", "readinessProbe"},
		{"liveness path", "path: /healthz", "path: /metrics", "livenessProbe"},
		{"root allowed", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"},
		{"port clash", "value: 0.0.0.0:8081", "value: 0.0.0.0:8080", "share the Pod's network"},
		{"upstream elsewhere", "value: http://127.0.0.1:8080/fhir", "value: http://hapi:8080/fhir", "FBP_UPSTREAM"},
		{"data dir elsewhere", "mountPath: " + img.DataDir, "mountPath: /data", "no writable volume"},
		{"writable root", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"no PVC", "claimName: fhir-bulk-proxy-data", "claimName: other", "not a PersistentVolumeClaim"},
		{"service port", "targetPort: http", "targetPort: 8080", "does not expose"},
	}
	for _, c := range cases {
		expectProblem(t, c.name, checkKubernetes([]byte(mutate(t, src, c.old, c.new)), img), c.want)
	}
}
