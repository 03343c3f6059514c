package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// openPTY opens a pseudo-terminal pair; the test is skipped where the
// system has none.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Skipf("unlockpt: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Skipf("ptsname: %v", e)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open the terminal's slave: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// readUntil reads from the terminal's master side until it has seen want.
func readUntil(t *testing.T, m *os.File, want string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		p := make([]byte, 4096)
		for !strings.Contains(b.String(), want) {
			n, err := m.Read(p)
			b.Write(p[:n])
			if err != nil {
				break
			}
		}
		got <- b.String()
	}()
	select {
	case s := <-got:
		return s
	case <-time.After(time.Minute):
		t.Fatalf("%q never reached the terminal", want)
		return ""
	}
}

// TestLoggerColoursFollowTheTerminal: console lines are coloured on a
// terminal, and not with NO_COLOR set (and, TestLoggerFormats and
// TestDemoExitVerifiesExport, not when redirected).
func TestLoggerColoursFollowTheTerminal(t *testing.T) {
	m, s := openPTY(t)
	log, err := newLogger(s, "info", "console")
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("coloured line")
	if out := readUntil(t, m, "coloured line"); !strings.Contains(out, "\x1b[") {
		t.Errorf("no colours on a terminal: %q", out)
	}
	log, err = newLogger(s, "info", "auto")
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("auto line")
	if out := readUntil(t, m, "auto line"); !strings.Contains(out, "\x1b[") || strings.Contains(out, `"message"`) {
		t.Errorf("auto on a terminal is not coloured console output: %q", out)
	}

	t.Setenv("NO_COLOR", "1")
	log, err = newLogger(s, "info", "console")
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("plain line")
	if out := readUntil(t, m, "plain line"); strings.Contains(out, "\x1b[") {
		t.Errorf("colours with NO_COLOR set: %q", out)
	}
}
