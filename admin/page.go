package admin

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// maxPageJobs bounds the jobs the page lists (the API lists them all).
const maxPageJobs = 200

// pageData fills page.html.
type pageData struct {
	Refresh    int
	Now        string
	Filter     string // the state filter as given, "" for all
	Client     string
	HasClient  bool
	States     []stateLink
	Overview   []figure
	Jobs       []jobView
	Matched    int // jobs matching the filter (the page shows at most maxPageJobs)
	TokenSet   bool
	LogoutCSRF string
}

type stateLink struct {
	Label  string
	State  string // "" for all
	Count  int
	Href   string
	Active bool
}

type figure struct {
	Name, Value string
}

// jobView is a Summary with what the template shows of it.
type jobView struct {
	Summary
	Age         string
	Duration    string
	Cancellable bool
	Open        bool // per-type details unfolded
	Size        string
	// BarMax and BarValue draw the job's overall progress bar.
	BarMax, BarValue int
	Types            []typeView
}

type typeView struct {
	TypeProgress
	Max, Value int // the progress bar
	Waiting    bool
}

// errorData fills error.html.
type errorData struct {
	Status  int
	Message string
}

// headData fills the "head" template.
type headData struct {
	Title   string
	Refresh int
}

var templateFuncs = template.FuncMap{
	"num":      formatInt,
	"headData": func(title string, refresh int) headData { return headData{title, refresh} },
}

// page renders the operator page.
func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r)
	if err != nil {
		h.render(w, http.StatusBadRequest, "error.html", errorData{Status: http.StatusBadRequest, Message: exporter.ErrorMessage(err)})
		return
	}
	jobs, err := h.allJobs(r.Context())
	if err != nil {
		h.log.Error().Err(err).Msg("admin: list jobs")
		h.render(w, http.StatusInternalServerError, "error.html", errorData{Status: http.StatusInternalServerError, Message: "the jobs cannot be listed; see the log"})
		return
	}
	now := h.now()
	d := pageData{
		Refresh:   h.refresh,
		Now:       now.UTC().Format(time.RFC3339),
		Client:    f.client,
		HasClient: f.hasClient,
		TokenSet:  h.token != "" && authOf(r) == authCookie,
	}
	if d.TokenSet {
		d.LogoutCSRF = h.csrfToken("logout")
	}
	var names []string
	for _, s := range f.states {
		names = append(names, string(s))
	}
	d.Filter = strings.Join(names, ",")

	counts := map[exporter.State]int{}
	for _, j := range jobs {
		counts[j.State]++
	}
	link := func(state string) string {
		q := url.Values{}
		if state != "" {
			q.Set("state", state)
		}
		if f.hasClient {
			q.Set("client", f.client)
		}
		if len(q) == 0 {
			return Prefix + "/"
		}
		return Prefix + "/?" + q.Encode()
	}
	d.States = append(d.States, stateLink{Label: "all", Count: len(jobs), Href: link(""), Active: len(f.states) == 0})
	for _, s := range allStates {
		d.States = append(d.States, stateLink{
			Label: string(s), State: string(s), Count: counts[s], Href: link(string(s)),
			Active: len(f.states) == 1 && f.states[0] == s,
		})
	}
	if h.overview != nil {
		for k, v := range h.overview() {
			d.Overview = append(d.Overview, figure{k, v})
		}
		slices.SortFunc(d.Overview, func(a, b figure) int { return strings.Compare(a.Name, b.Name) })
	}

	for _, j := range jobs {
		if !f.match(j) {
			continue
		}
		d.Matched++
		if len(d.Jobs) >= maxPageJobs {
			continue
		}
		s, err := h.summarize(r.Context(), j, now)
		if err != nil {
			h.log.Error().Err(err).Str("job_id", j.ID).Msg("admin: summarize job")
			h.render(w, http.StatusInternalServerError, "error.html", errorData{Status: http.StatusInternalServerError, Message: "the jobs cannot be listed; see the log"})
			return
		}
		d.Jobs = append(d.Jobs, h.view(s, j, now))
	}
	h.render(w, http.StatusOK, "page.html", d)
}

func (h *Handler) view(s Summary, j *exporter.Job, now time.Time) jobView {
	v := jobView{
		Summary:     s,
		Age:         formatDuration(now.Sub(j.CreatedAt)),
		Cancellable: cancellable(j),
		Open:        j.State == exporter.StateRunning,
		Size:        formatBytes(s.Bytes),
	}
	if !j.StartedAt.IsZero() {
		end := now
		if !j.FinishedAt.IsZero() {
			end = j.FinishedAt
		}
		v.Duration = formatDuration(end.Sub(j.StartedAt))
	}
	v.BarMax, v.BarValue = s.UnitsTotal, min(s.UnitsDone, s.UnitsTotal)
	switch {
	case j.State == exporter.StateCompleted:
		v.BarMax, v.BarValue = 1, 1
	case s.UnitsTotal <= 0:
		v.BarMax, v.BarValue = 1, 0
	}
	for _, tp := range s.PerType {
		tv := typeView{TypeProgress: tp, Max: tp.UnitsTotal, Value: tp.UnitsDone + tp.UnitsFailed}
		if tp.UnitsTotal == 0 {
			// Nothing planned (yet): an empty bar, full once the job is done.
			tv.Max, tv.Value = 1, 0
			if j.State == exporter.StateCompleted {
				tv.Value = 1
			} else {
				tv.Waiting = j.State == exporter.StateQueued || j.State == exporter.StateRunning
			}
		}
		v.Types = append(v.Types, tv)
	}
	return v
}

// render executes a template into a buffer first, so that a template error
// never leaves half a page.
func (h *Handler) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := h.pages.ExecuteTemplate(&buf, name, data); err != nil {
		h.log.Error().Err(err).Str("template", name).Msg("admin: render page")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// formatDuration gives a short age such as "45s", "3m07s", "2h05m", "3d04h".
func formatDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// formatBytes gives a size in B, KiB, MiB or GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGT"[i])
}

// formatInt groups the digits of n by thousands: 1234567 -> "1 234 567".
func formatInt(n any) string {
	var s string
	switch v := n.(type) {
	case int:
		s = strconv.Itoa(v)
	case int64:
		s = strconv.FormatInt(v, 10)
	default:
		return fmt.Sprint(n)
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteRune('\u202f') // narrow no-break space
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
