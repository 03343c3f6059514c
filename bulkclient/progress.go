package bulkclient

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Progress is told what an Exporter does. Bytes, FileDone and Retrying are
// called from several goroutines at once.
type Progress interface {
	// KickedOff: the export was accepted; statusURL is its status URL.
	KickedOff(statusURL string)
	// Polled: a status poll answered without the manifest.
	Polled(s PollStatus)
	// ManifestReady: the export is complete.
	ManifestReady(m *Manifest)
	// DownloadStarted: files files are about to be downloaded.
	DownloadStarted(files int)
	// Bytes: n more bytes were written to disk.
	Bytes(n int64)
	// FileDone: a file was downloaded and checked (or failed, fr.Err).
	FileDone(fr *FileResult)
	// Retrying: what failed with err and is tried again after wait.
	Retrying(what string, err error, wait time.Duration)
}

type nopProgress struct{}

func (nopProgress) KickedOff(string)                      {}
func (nopProgress) Polled(PollStatus)                     {}
func (nopProgress) ManifestReady(*Manifest)               {}
func (nopProgress) DownloadStarted(int)                   {}
func (nopProgress) Bytes(int64)                           {}
func (nopProgress) FileDone(*FileResult)                  {}
func (nopProgress) Retrying(string, error, time.Duration) {}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Reporter is a Progress that writes to a writer: on a terminal, a
// progress bar per phase (waiting for the export, with X-Progress and its
// percentage; downloading, with bytes and files); otherwise plain lines,
// one per change of the poll state and one per file.
type Reporter struct {
	w    *lockedWriter
	bars bool

	mu        sync.Mutex
	lastState string
	waitBar   *progressbar.ProgressBar
	waitPct   bool
	dlBar     *progressbar.ProgressBar
	files     int
	filesDone int
}

// NewReporter returns a Reporter writing to w, with progress bars when
// bars is true (see IsTerminal).
func NewReporter(w io.Writer, bars bool) *Reporter {
	return &Reporter{w: &lockedWriter{w: w}, bars: bars}
}

// lockedWriter serializes the writes of the bars and the log lines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Logf writes a line (above the bar, if one is shown).
func (r *Reporter) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logf(format, args...)
}

func (r *Reporter) logf(format string, args ...any) {
	line := fmt.Sprintf(format+"\n", args...)
	if r.waitBar != nil || r.dlBar != nil {
		// Erase the bar's line (ProgressBar.Clear is not synchronized);
		// the bar draws itself again below at its next update.
		line = "\r\033[K" + line
	}
	_, _ = io.WriteString(r.w, line)
}

func (r *Reporter) KickedOff(statusURL string) {
	r.Logf("export accepted; status URL: %s", statusURL)
}

func (r *Reporter) Polled(s PollStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var state string
	switch {
	case s.Err != nil:
		state = fmt.Sprintf("status poll failed (%v); polling again in %s", s.Err, roundWait(s.Wait))
	case s.Code == 429:
		state = fmt.Sprintf("status poll throttled (429); polling again in %s", roundWait(s.Wait))
	default:
		state = "in progress"
		if s.Progress != "" {
			state += ": " + s.Progress
		}
	}
	if !r.bars {
		if state != r.lastState || s.Err != nil {
			if s.Err == nil && s.Code != 429 {
				fmt.Fprintf(r.w, "export %s (next poll in %s)\n", state, roundWait(s.Wait))
			} else {
				fmt.Fprintf(r.w, "%s\n", state)
			}
		}
		r.lastState = state
		return
	}
	if s.Err != nil || s.Code == 429 {
		if state != r.lastState {
			r.logf("%s", state)
		}
		r.lastState = state
		return
	}
	r.lastState = state
	if r.waitBar != nil && !r.waitPct && s.Percent >= 0 {
		// A percentage at last: the spinner gives way to a bar.
		_ = r.waitBar.Finish()
		r.waitBar = nil
	}
	if r.waitBar == nil {
		r.waitPct = s.Percent >= 0
		max := int64(-1)
		if r.waitPct {
			max = 100
		}
		r.waitBar = newBar(r.w, max, "export "+state, false)
	}
	r.waitBar.Describe("export " + state)
	if r.waitPct && s.Percent >= 0 {
		// Never 100 while polling: that would finish the bar.
		_ = r.waitBar.Set64(min(int64(s.Percent), 99))
	}
}

func (r *Reporter) ManifestReady(m *Manifest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waitBar != nil {
		_ = r.waitBar.Finish()
		r.waitBar = nil
	}
	var listed int64
	for _, f := range m.Output {
		listed += f.Count
	}
	r.logf("export complete: %d output files (%d resources listed), %d error files, %d deleted files; transactionTime %s",
		len(m.Output), listed, len(m.Error), len(m.Deleted), m.TransactionTime)
}

func (r *Reporter) DownloadStarted(files int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files, r.filesDone = files, 0
	if r.bars && files > 0 {
		r.dlBar = newBar(r.w, -1, r.dlDescription(), true)
	} else {
		fmt.Fprintf(r.w, "downloading %d files\n", files)
	}
}

func (r *Reporter) dlDescription() string {
	return fmt.Sprintf("downloading: %d/%d files", r.filesDone, r.files)
}

func (r *Reporter) Bytes(n int64) {
	r.mu.Lock()
	b := r.dlBar
	r.mu.Unlock()
	if b != nil {
		_ = b.Add64(n)
	}
}

func (r *Reporter) FileDone(fr *FileResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.filesDone++
	var line string
	if fr.Err != nil {
		line = fmt.Sprintf("FAILED %s: %v", fr.Name, fr.Err)
	} else {
		line = fmt.Sprintf("downloaded %s: %d resources, %s", fr.Name, fr.Lines, HumanBytes(fr.Bytes))
		if fr.Resumed > 0 || fr.Restarted > 0 {
			line += fmt.Sprintf(" (resumed %d, restarted %d)", fr.Resumed, fr.Restarted)
		}
		if fr.ProblemCount > 0 {
			line += fmt.Sprintf("; %d problems", fr.ProblemCount)
		}
		if fr.IssueCount > 0 {
			line += fmt.Sprintf("; %d issues", fr.IssueCount)
		}
	}
	if r.dlBar == nil {
		fmt.Fprintln(r.w, line)
		return
	}
	if fr.Err != nil || fr.ProblemCount > 0 {
		r.logf("%s", line)
	}
	r.dlBar.Describe(r.dlDescription())
	if r.filesDone == r.files {
		_ = r.dlBar.Finish()
		r.dlBar = nil
	}
}

func (r *Reporter) Retrying(what string, err error, wait time.Duration) {
	r.Logf("retrying %s in %s: %v", what, roundWait(wait), err)
}

// Finish takes any bar off the screen (after an error or an interrupt).
func (r *Reporter) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range []**progressbar.ProgressBar{&r.waitBar, &r.dlBar} {
		if *b != nil {
			_ = (*b).Finish()
			*b = nil
		}
	}
}

// newBar makes a bar (max 100, a percentage) or a spinner (max -1) that
// clears itself when finished.
func newBar(w io.Writer, max int64, desc string, bytes bool) *progressbar.ProgressBar {
	return progressbar.NewOptions64(max, barOptions(w, desc, bytes)...)
}

// barOptions are the options of newBar's bars. Sizes are binary (KiB,
// MiB), as HumanBytes writes them everywhere else.
func barOptions(w io.Writer, desc string, bytes bool) []progressbar.Option {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetPredictTime(false),
		// Renders once now, before the spinner's goroutine starts.
		progressbar.OptionSetRenderBlankState(true),
	}
	if bytes {
		// Byte counts come often; polls (the other bar) do not.
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionUseIECUnits(true),
			progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
	}
	return opts
}

func roundWait(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// HumanBytes formats a byte count with binary units (KiB, MiB, ...), the
// one unit system of every size the client prints.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
