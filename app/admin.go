package app

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/admin"
)

// newAdmin builds the operator page and admin API, with the proxy-wide
// figures shown above the job list.
func (a *App) newAdmin() (*admin.Handler, error) {
	return admin.New(admin.Options{
		Service: a.service,
		Token:   string(a.cfg.Admin.Token),
		Logger:  a.log.With().Str("component", "admin").Logger(),
		Overview: func() map[string]string {
			return map[string]string{
				"upstream":                    redactedURL(a.cfg.Upstream),
				"upstream concurrency limit":  strconv.Itoa(a.UpstreamConcurrency()),
				"upstream requests in flight": strconv.Itoa(a.upstreamInFlight()),
				"export disk used":            humanBytes(a.disk.Bytes()),
			}
		},
	}), nil
}

// redactedURL hides a password in a URL's user info.
func redactedURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// humanBytes prints a byte count in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
