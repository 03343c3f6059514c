package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ConfigEnv names the environment variable that selects the YAML file; it is
// overridden by the --config flag.
const ConfigEnv = EnvPrefix + "CONFIG"

// Default returns the configuration used when nothing else is given. Its
// Upstream is empty, so it does not validate on its own.
func Default() Config {
	return Config{
		Listen:  ":8080",
		DataDir: "./data",
		Log: LogConfig{
			Level:  "info",
			Format: "auto",
		},
		Export: ExportConfig{
			BatchSize:    1000,
			PageSize:     1000,
			MaxURLLength: 2000,
			Concurrency:  4,

			AdaptiveConcurrency: true,
			MaxConcurrency:      16,
			MaxJobs:             2,
			MaxFileSize:         256 << 20,
			Retention:           30 * 24 * time.Hour,
			RetryAfter:          4 * time.Second,

			MaxActivePerClient: 1,
			MaxActive:          10,
			PollThrottle:       true,
			SliceSystemExports: true,
			DefaultTypes:       "all",
		},
		UpstreamHTTP: UpstreamHTTPConfig{
			ResponseHeaderTimeout: 60 * time.Second,
			DialTimeout:           10 * time.Second,
			Retries:               5,
			GiveUpAfter:           15 * time.Minute,
		},
		Auth:         AuthConfig{Mode: AuthNone, TokenTTL: MaxTokenTTL},
		UpstreamAuth: UpstreamAuthConfig{Mode: UpstreamAuthNone},
		Limits: LimitsConfig{
			MaxBodyBytes:      1 << 20,
			MaxHeaderBytes:    64 << 10,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
		},
		Admin:   AdminConfig{MetricsToken: true, ReadyTimeout: 2 * time.Second},
		Cohorts: CohortsConfig{Enabled: true},
	}
}

// Load builds the configuration of `serve` and validates it. Precedence,
// lowest first: Default(), the YAML file, FBP_* variables in env (as from
// os.Environ), flags in args (the arguments after "serve").
//
// The file is path, replaced by $FBP_CONFIG, replaced by --config; no file is
// read when all are empty. Empty environment variables count as unset.
// Unknown FBP_* variables are ignored. If args ask for help, the error wraps
// flag.ErrHelp; print Usage() then.
//
// The Config is returned even when the error comes from Validate, so callers
// may report it.
func Load(path string, env []string, args []string) (Config, error) {
	c := Default()

	fs, flags := newFlagSet()
	if err := fs.Parse(joinBoolValues(fs, args)); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	envMap := environ(env)
	if p := envMap[ConfigEnv]; p != "" {
		path = p
	}
	if flags.configSet {
		path = flags.config
	}
	if path != "" {
		if err := c.LoadFile(path); err != nil {
			return c, err
		}
	}
	if err := c.applyEnv(envMap); err != nil {
		return c, err
	}
	if err := flags.apply(fs, &c); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// LoadFile reads the YAML file at path over c: keys present in the file
// replace the values in c. Unknown keys are errors naming the key.
func (c *Config) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	if err := c.DecodeYAML(f); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// DecodeYAML reads one YAML document from r over c. Every problem (unknown
// or repeated keys, values that do not parse) is reported, joined, with its
// line and key.
//
// The document is walked by hand instead of decoded into Config with
// yaml.Decoder.KnownFields, so that durations ("30d") and sizes ("256MiB")
// parse exactly as in environment variables and flags.
func (c *Config) DecodeYAML(r io.Reader) error {
	var doc yaml.Node
	if err := yaml.NewDecoder(r).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file
		}
		return err
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	return errors.Join(c.decodeMapping(root, "")...)
}

// decodeMapping applies the mapping n, found at key prefix, to the section of
// c at the same prefix.
func (c *Config) decodeMapping(n *yaml.Node, prefix string) []error {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	where := prefix
	if where == "" {
		where = "top level"
	}
	if n.Kind != yaml.MappingNode {
		return []error{fmt.Errorf("line %d: %s must be a mapping", n.Line, where)}
	}
	var errs []error
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		if seen[key] {
			errs = append(errs, fmt.Errorf("line %d: key %q repeated", k.Line, key))
			continue
		}
		seen[key] = true
		if o, ok := optionByKey(key); ok && o.typ == clientsType {
			cs, err := decodeClients(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
				continue
			}
			o.field(c).Set(reflect.ValueOf(cs))
			continue
		}
		if o, ok := optionByKey(key); ok {
			if v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("line %d: %s must be a single value", v.Line, key))
				continue
			}
			val := v.Value
			if isNull(v) {
				val = ""
			}
			if err := o.set(c, val); err != nil {
				errs = append(errs, fmt.Errorf("line %d: %s: %w", v.Line, key, err))
			}
			continue
		}
		if isSection(key) {
			errs = append(errs, c.decodeMapping(v, key)...)
			continue
		}
		errs = append(errs, fmt.Errorf("line %d: unknown key %q", k.Line, key))
	}
	return errs
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func optionByKey(key string) (option, bool) {
	for _, o := range options() {
		if o.Key == key {
			return o, true
		}
	}
	return option{}, false
}

// isSection reports whether key names a section (such as "export") that
// holds options.
func isSection(key string) bool {
	for _, o := range options() {
		if strings.HasPrefix(o.Key, key+".") {
			return true
		}
	}
	return false
}

// environ turns KEY=VALUE pairs into a map; later pairs win, as in os.Getenv.
func environ(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (c *Config) applyEnv(env map[string]string) error {
	var errs []error
	for _, o := range options() {
		if v := env[o.Env]; v != "" {
			if err := o.set(c, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", o.Env, err))
			}
		}
	}
	return errors.Join(errs...)
}

// flagValues records the flags given on the command line until they are
// applied over the file and the environment.
type flagValues struct {
	config    string
	configSet bool
	raw       map[string]string // flag name -> value as given
}

// flagValue is the flag.Value of one option. Set only checks that the value
// parses; the value is applied later by flagValues.apply.
type flagValue struct {
	opt option
	raw map[string]string
	def string
}

func (v *flagValue) String() string {
	if v == nil {
		return ""
	}
	return v.def
}

// IsBoolFlag lets a boolean option's flag stand alone: --export-fail-on-partial
// means true (--flag=false still works), as with the flag package's own
// boolean flags.
func (v *flagValue) IsBoolFlag() bool { return v.opt.typ.Kind() == reflect.Bool }

func (v *flagValue) Set(s string) error {
	var scratch Config
	if err := v.opt.set(&scratch, s); err != nil {
		return err
	}
	v.raw[v.opt.Flag] = s
	return nil
}

type configFlag struct{ fv *flagValues }

func (f configFlag) String() string {
	if f.fv == nil {
		return ""
	}
	return f.fv.config
}

func (f configFlag) Set(s string) error {
	f.fv.config, f.fv.configSet = s, true
	return nil
}

// joinBoolValues keeps the older spelling of boolean flags with a separate
// value working: "--export-poll-throttle false" becomes
// "--export-poll-throttle=false". A boolean flag followed by anything but
// true or false takes no value (serve takes no positional arguments, so
// nothing else can be meant).
func joinBoolValues(fs *flag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		name := strings.TrimLeft(a, "-")
		if n := len(a) - len(name); n == 0 || n > 2 || strings.Contains(name, "=") || i+1 >= len(args) {
			out = append(out, a)
			continue
		}
		if !isBoolFlag(fs.Lookup(name)) {
			out = append(out, a)
			continue
		}
		switch next := strings.ToLower(args[i+1]); next {
		case "true", "false":
			out = append(out, a+"="+next)
			i++
		default:
			out = append(out, a)
		}
	}
	return out
}

func isBoolFlag(f *flag.Flag) bool {
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// newFlagSet declares --config and one flag per option. The flag set prints
// nothing; Usage() gives the help text.
func newFlagSet() (*flag.FlagSet, *flagValues) {
	fv := &flagValues{raw: map[string]string{}}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.Var(configFlag{fv}, "config", "YAML configuration `FILE` (env "+ConfigEnv+")")
	def := Default()
	for _, o := range options() {
		fs.Var(&flagValue{opt: o, raw: fv.raw, def: o.format(&def)}, o.Flag, o.Usage)
	}
	return fs, fv
}

// apply sets the options whose flags were given on the command line.
func (fv *flagValues) apply(fs *flag.FlagSet, c *Config) error {
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		v, ok := f.Value.(*flagValue)
		if !ok {
			return
		}
		if err := v.opt.set(c, fv.raw[f.Name]); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// Options describes every option of Config, for documentation.
type Option struct {
	Key     string // file key: "export.batch_size"
	Env     string // environment variable: "FBP_EXPORT_BATCH_SIZE"
	Flag    string // flag name without dashes: "export-batch-size"
	Usage   string // one-line description
	Default string // default value as accepted by Load ("" if none)
}

// Options lists every option of Config in declaration order.
func Options() []Option {
	def := Default()
	var out []Option
	for _, o := range options() {
		out = append(out, Option{Key: o.Key, Env: o.Env, Flag: o.Flag, Usage: o.Usage, Default: o.format(&def)})
	}
	return out
}

// check at init that every leaf type is one the parsers support.
func init() {
	for _, o := range options() {
		switch o.typ.Kind() {
		case reflect.String, reflect.Int, reflect.Int64, reflect.Bool:
		case reflect.Slice:
			if o.typ != clientsType {
				panic("config: unsupported type of " + o.Key + ": " + o.typ.String())
			}
		default:
			panic("config: unsupported type of " + o.Key + ": " + o.typ.String())
		}
	}
}
