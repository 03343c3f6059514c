package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseDuration parses a Go duration ("30s", "1h30m", "720h") or a number of
// days, optionally followed by a Go duration ("30d", "1.5d", "1d12h").
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	days, rest, ok := strings.Cut(t, "d")
	if !ok {
		d, err := time.ParseDuration(t)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 30s, 720h or 30d)", s)
		}
		return d, nil
	}
	n, err := strconv.ParseFloat(days, 64)
	if err != nil || days == "" || strings.ContainsAny(days, "eEinIN_xXpP") {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 30s, 720h or 30d)", s)
	}
	var extra time.Duration
	if rest != "" {
		if rest[0] == '-' || rest[0] == '+' {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 30s, 720h or 30d)", s)
		}
		if extra, err = time.ParseDuration(rest); err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 30s, 720h or 30d)", s)
		}
		if n < 0 || strings.HasPrefix(days, "-") {
			extra = -extra
		}
	}
	total := n*float64(24*time.Hour) + float64(extra)
	if total > math.MaxInt64 || total < math.MinInt64 {
		return 0, fmt.Errorf("duration %q out of range", s)
	}
	return time.Duration(total), nil
}

// FormatDuration renders d compactly in Go syntax: "720h", "1m30s", "0s".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Size units accepted by ParseByteSize, matched case-insensitively.
var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"kb":  1e3,
	"mb":  1e6,
	"gb":  1e9,
	"tb":  1e12,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
	"tib": 1 << 40,
}

// ParseByteSize parses a size in bytes: a plain number ("268435456") or a
// number with a decimal (KB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB) unit,
// e.g. "256MiB", "100MB", "1.5GiB".
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != '-' && r != '+' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("invalid size %q (want bytes or e.g. 256MiB, 100MB, 1GiB)", s)
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n > math.MaxInt64/mult || n < math.MinInt64/mult {
			return 0, fmt.Errorf("size %q out of range", s)
		}
		return n * mult, nil
	} else if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (want bytes or e.g. 256MiB, 100MB, 1GiB)", s)
	}
	total := math.Round(f * float64(mult))
	if total >= math.MaxInt64 || total <= math.MinInt64 {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return int64(total), nil
}

// FormatByteSize renders n with the largest binary unit that divides it
// exactly ("256MiB"), or as plain bytes.
func FormatByteSize(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}
