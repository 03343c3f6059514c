package fhirtest

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// dateRE matches FHIR date, dateTime and instant values of any precision
// from a year down to fractions of a second. A time needs hours and
// minutes; the zone is optional (UTC when absent).
var dateRE = regexp.MustCompile(`^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$`)

// parseDateRange parses a FHIR date/time value into the half-open range of
// instants it denotes, [lo, hi) in unix nanoseconds: a value of a given
// precision covers one unit of that precision.
func parseDateRange(s string) (lo, hi int64, err error) {
	m := dateRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, fmt.Errorf("invalid date/time value %q", s)
	}
	num := func(x string) int { n, _ := strconv.Atoi(x); return n }
	year, month, day := num(m[1]), 1, 1
	hour, minute, sec, nsec := 0, 0, 0, 0
	if year < 1700 || year > 2200 {
		return 0, 0, fmt.Errorf("date/time value %q is out of the supported range", s)
	}
	step := func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }
	if m[2] != "" {
		month = num(m[2])
		step = func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }
	}
	if m[3] != "" {
		day = num(m[3])
		step = func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }
	}
	if m[4] != "" {
		hour, minute = num(m[4]), num(m[5])
		step = func(t time.Time) time.Time { return t.Add(time.Minute) }
	}
	if m[6] != "" {
		sec = num(m[6])
		step = func(t time.Time) time.Time { return t.Add(time.Second) }
	}
	if f := m[7]; f != "" {
		nsec = num(f + strings.Repeat("0", 9-len(f)))
		unit := time.Duration(math.Pow10(9 - len(f)))
		step = func(t time.Time) time.Time { return t.Add(unit) }
	}
	loc := time.UTC
	if z := m[8]; z != "" && z != "Z" {
		off := (num(z[1:3])*60 + num(z[4:6])) * 60
		if off > 14*3600 || num(z[4:6]) > 59 {
			return 0, 0, fmt.Errorf("invalid time zone in %q", s)
		}
		if z[0] == '-' {
			off = -off
		}
		loc = time.FixedZone(z, off)
	}
	if month < 1 || month > 12 || hour > 23 || minute > 59 || sec > 59 {
		return 0, 0, fmt.Errorf("invalid date/time value %q", s)
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, loc)
	if t.Day() != day {
		return 0, 0, fmt.Errorf("invalid day in %q", s)
	}
	return t.UnixNano(), step(t).UnixNano(), nil
}

// dateCond is one date search value: a prefix and the range of the value.
type dateCond struct {
	prefix string
	lo, hi int64
}

var datePrefixes = map[string]bool{"eq": true, "ne": true, "gt": true, "lt": true, "ge": true, "le": true, "sa": true, "eb": true, "ap": true}

// parseDateCond parses "[prefix]value". A space in the value is read as
// '+', since an unencoded '+' of a time zone arrives as a space.
func parseDateCond(v string) (dateCond, error) {
	c := dateCond{prefix: "eq"}
	if len(v) >= 2 && datePrefixes[v[:2]] {
		c.prefix, v = v[:2], v[2:]
	}
	lo, hi, err := parseDateRange(strings.ReplaceAll(v, " ", "+"))
	if err != nil {
		return c, err
	}
	c.lo, c.hi = lo, hi
	return c, nil
}

// match reports whether a target range [a, b) satisfies the condition,
// with the FHIR range semantics. A point in time v is the range [v, v+1).
// For points this gives: gt -> v >= hi, ge -> v >= lo, lt -> v < lo,
// le -> v < hi, eq -> lo <= v < hi.
func (c dateCond) match(a, b int64) bool {
	switch c.prefix {
	case "gt":
		return b > c.hi
	case "ge":
		return b > c.lo
	case "lt":
		return a < c.lo
	case "le":
		return a < c.hi
	case "sa":
		return a >= c.hi
	case "eb":
		return b <= c.lo
	case "ne":
		return !(a >= c.lo && b <= c.hi)
	default: // eq, ap
		return a >= c.lo && b <= c.hi
	}
}

// leafRange turns a date-like element (a date/dateTime/instant string or a
// Period) into its range; ok is false for anything else.
func leafRange(leaf any) (lo, hi int64, ok bool) {
	switch v := leaf.(type) {
	case string:
		lo, hi, err := parseDateRange(v)
		return lo, hi, err == nil
	case map[string]any:
		start, hasStart := v["start"].(string)
		end, hasEnd := v["end"].(string)
		if !hasStart && !hasEnd {
			return 0, 0, false
		}
		lo, hi = math.MinInt64, math.MaxInt64
		if hasStart {
			l, _, err := parseDateRange(start)
			if err != nil {
				return 0, 0, false
			}
			lo = l
		}
		if hasEnd {
			_, h, err := parseDateRange(end)
			if err != nil {
				return 0, 0, false
			}
			hi = h
		}
		return lo, hi, true
	}
	return 0, 0, false
}
