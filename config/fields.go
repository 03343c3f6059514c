package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EnvPrefix starts the name of every environment variable read by Load.
const EnvPrefix = "FBP_"

// option is one leaf of Config, derived by reflection from its struct tags.
type option struct {
	Key   string // file key, sections joined by ".": "export.batch_size"
	Env   string // environment variable: "FBP_EXPORT_BATCH_SIZE"
	Flag  string // flag name without dashes: "export-batch-size"
	Usage string // flag help
	index []int  // reflect index path from Config
	typ   reflect.Type
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	clientsType  = reflect.TypeFor[[]AuthClient]()
)

// options lists every leaf of Config in declaration order.
var options = sync.OnceValue(func() []option {
	return collect(reflect.TypeFor[Config](), nil, nil, nil)
})

func collect(t reflect.Type, index []int, keyPath, flagPath []string) []option {
	var out []option
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		idx := append(append([]int(nil), index...), i)
		keys := append(append([]string(nil), keyPath...), name)
		flagName := name
		if fl := f.Tag.Get("flag"); fl != "" {
			flagName = fl
		}
		flags := append(append([]string(nil), flagPath...), flagName)
		if f.Type.Kind() == reflect.Struct {
			out = append(out, collect(f.Type, idx, keys, flags)...)
			continue
		}
		out = append(out, option{
			Key:   strings.Join(keys, "."),
			Env:   EnvPrefix + strings.ToUpper(strings.Join(keys, "_")),
			Flag:  strings.ReplaceAll(strings.Join(flags, "-"), "_", "-"),
			Usage: f.Tag.Get("usage"),
			index: idx,
			typ:   f.Type,
		})
	}
	return out
}

// field returns the settable field of c that o describes.
func (o option) field(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(o.index)
}

// set parses s according to the option's type and stores it in c.
func (o option) set(c *Config, s string) error {
	v := o.field(c)
	switch {
	case o.typ == durationType:
		d, err := ParseDuration(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(d))
	case o.typ.Kind() == reflect.Int64:
		n, err := ParseByteSize(s)
		if err != nil {
			return err
		}
		v.SetInt(n)
	case o.typ.Kind() == reflect.Int:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, strconv.IntSize)
		if err != nil {
			return fmt.Errorf("invalid integer %q", s)
		}
		v.SetInt(n)
	case o.typ == clientsType:
		cs, err := parseClients(s)
		if err != nil {
			return err
		}
		v.Set(reflect.ValueOf(cs))
	case o.typ.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("invalid boolean %q (use true or false)", s)
		}
		v.SetBool(b)
	case o.typ.Kind() == reflect.String:
		v.SetString(s)
	default:
		panic("config: unsupported field type " + o.typ.String())
	}
	return nil
}

// format renders the option's value in c the way set would accept it.
func (o option) format(c *Config) string {
	v := o.field(c)
	switch {
	case o.typ == durationType:
		return FormatDuration(time.Duration(v.Int()))
	case o.typ.Kind() == reflect.Int64:
		return FormatByteSize(v.Int())
	case o.typ.Kind() == reflect.Int:
		return strconv.FormatInt(v.Int(), 10)
	case o.typ == clientsType:
		return formatClients(v.Interface().([]AuthClient))
	case o.typ.Kind() == reflect.Bool:
		return strconv.FormatBool(v.Bool())
	default:
		return v.String()
	}
}

// placeholder returns the metavariable shown in the flag usage.
func (o option) placeholder() string {
	switch {
	case o.typ == durationType:
		return "DURATION"
	case o.typ.Kind() == reflect.Int64:
		return "SIZE"
	case o.typ.Kind() == reflect.Int:
		return "N"
	case o.typ == clientsType:
		return "LIST"
	case o.typ.Kind() == reflect.Bool:
		return "[=BOOL]"
	case strings.HasSuffix(o.Key, "_file"):
		return "FILE"
	case strings.Contains(o.Key, "url") || o.Key == "upstream":
		return "URL"
	case strings.HasSuffix(o.Key, "dir") || strings.HasSuffix(o.Key, "path"):
		return "PATH"
	case strings.HasPrefix(o.Key, "log."):
		return strings.ToUpper(strings.TrimPrefix(o.Key, "log."))
	case o.Key == "listen":
		return "ADDR"
	default:
		return "STRING"
	}
}
